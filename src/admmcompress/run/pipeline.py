"""The end-to-end run: pretrain, then per step ADMM -> harden -> masked retrain; verify, report.

Every epoch ends with an atomic checkpoint holding everything the next epoch depends on
(weights, optimizer, schedule, ADMM state, masks, RNG states, history), so ``resume``
continues a killed run and finishes with bit-identical weights on the same machine.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..constraints import Constraint, quantizer_of, structured_rule
from ..core.admm import ADMM
from ..core.masking import MaskEnforcer
from ..core.selection import select_layers
from ..core.verify import verify_model
from ..data import BatchSource, Dataset, load_dataset, resolve_data_root
from ..data.image_folder import FolderOptions, load_image_folder
from ..formats.safetensors_model import load, load_model, save_model
from ..models import create_model
from ..recipe.planning import (
    StepPlan,
    check_step_selectors,
    plan_step,
    rule_constraint,
    step_constraints,
)
from ..recipe.schema import (
    FOLDER_DATASETS,
    ConfigError,
    PhaseConfig,
    RuleConfig,
    RunConfig,
    StepConfig,
    config_to_yaml,
)
from ..structure.groups import ChannelGroup, batchnorm_masks, channel_groups, coupled_layer_sets
from ..train.distributed import (
    SINGLE,
    DistContext,
    broadcast_buffers,
    broadcast_module,
    broadcast_object,
    check_identical,
    gather_objects,
    init_from_env,
    shutdown,
)
from ..train.loop import build_optimizer, build_scheduler, evaluate, train_epoch
from ..train.quantized import SnapFreeze, STEQuantizer
from .checkpoint import load_checkpoint, save_checkpoint
from .report import build_report, layer_table, pruning_rates, storage_summary, write_report

log = logging.getLogger("admmcompress")

PHASES = ("pretrain", "admm", "retrain")
CHECKPOINT = "checkpoint.pt"
CONFIG_COPY = "config.yaml"
MODEL_FILE = "model.safetensors"
TEACHER_FILE = "teacher.safetensors"  # the model before step 1, kept when a phase distills
LOG_FILE = "run.log"
STEPS_DIR = "steps"  # each finished step's model, <name>.safetensors


class RunFolderError(RuntimeError):
    """The output folder holds another run, or a resume does not match it."""


@dataclass
class RunState:
    """What survives a kill, besides tensors: where the run is and what it has measured."""

    phase: str = "pretrain"
    epoch: int = 0  # epochs completed in ``phase``
    step: int = 0  # index of the step that ``phase`` belongs to (admm, retrain)
    history: list[dict[str, Any]] = field(default_factory=list)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # of the current step
    seconds: dict[str, float] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # summaries of finished steps


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, so config differences can be named key by key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def setup_runtime(cfg: RunConfig) -> torch.device:
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    torch.set_flush_denormal(cfg.runtime.flush_denormal)
    if cfg.runtime.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device: 'cuda' was asked for but no CUDA GPU is available")
    use_cuda = cfg.runtime.device == "cuda" or (
        cfg.runtime.device == "auto" and torch.cuda.is_available()
    )
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if cfg.runtime.deterministic:
        if use_cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def _channels_last(data: Dataset) -> Dataset:
    """Images in NHWC, so that every batch reaches the convolutions in that layout."""
    return replace(data, train=data.train.as_channels_last(), test=data.test.as_channels_last())


def layer_constraints(model: nn.Module, cfg: RunConfig) -> dict[str, Constraint]:
    """The first step's explicit rules as one constraint per layer (raises on bad rules)."""
    rules = cfg.step_list()[0].rules
    return select_layers(model, {sel: rule_constraint(rule) for sel, rule in rules.items()})


def _rules_to_json(rules: dict[str, RuleConfig]) -> dict[str, Any]:
    return {n: r.model_dump(mode="json", exclude_none=True) for n, r in rules.items()}


def _rules_from_json(raw: dict[str, Any]) -> dict[str, RuleConfig]:
    return {n: RuleConfig.model_validate(r) for n, r in raw.items()}


def load_run_data(
    cfg: RunConfig, data_dir: str | os.PathLike | None, device: torch.device
) -> Dataset:
    """The config's data set (and subsets), loaded once onto ``device``."""
    root = resolve_data_root(data_dir, cfg.data.root)
    d = cfg.data
    if d.dataset in FOLDER_DATASETS:
        defaults = FolderOptions()
        options = FolderOptions(
            image_size=d.image_size or defaults.image_size,
            eval_resize=d.eval_resize,
            crop_scale=d.augment.crop_scale or defaults.crop_scale,
            workers=defaults.workers if d.workers is None else d.workers,
        )
        data = load_image_folder(d.dataset, root, options)
    else:
        data = load_dataset(d.dataset, root, verify=d.verify, download=d.download)
    train, test = data.train, data.test
    if d.train_subset:
        train = train.subset(d.train_subset, cfg.seed)
    if d.test_subset:
        test = test.subset(d.test_subset, cfg.seed)
    return replace(data, train=train.to(device), test=test.to(device))


def load_weights(model: nn.Module, path: Path, model_name: str) -> dict[str, Tensor]:
    """Load a model.safetensors, a run folder's model, or a (checkpoint's) state dict.

    Returns the masks an admmcompress model file carries (empty for a plain state dict).
    """
    if path.is_dir() and (path / MODEL_FILE).exists():
        path = path / MODEL_FILE
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    masks: dict[str, Tensor] = {}
    if path.suffix == ".safetensors":
        saved = load_model(path)
        state, masks = saved.model.state_dict(), saved.masks
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt or foreign file: say which and why
            raise ConfigError(f"cannot read weights from {path}: {e}") from None
        state = obj.get("model", obj) if isinstance(obj, dict) else obj
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ConfigError(f"weights in {path} do not fit model {model_name!r}: {e}") from None
    return masks


class Pipeline:
    """One run of a config in one folder; ``run()`` does (or finishes) all of it."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        allow_changes: bool = False,
        data_dir: str | os.PathLike | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.resume = resume
        self.allow_changes = allow_changes
        self.data_dir = data_dir
        self.device = torch.device("cpu")
        self.state = RunState()
        self.model: nn.Module
        self.data: Dataset
        self.steps: list[StepConfig] = cfg.step_list()
        self.constraints: dict[str, Constraint] = {}
        self.masks: dict[str, Tensor] = {}
        # The current step's per-layer rules (targets resolved to counts) and the masks it
        # started from; both go into every checkpoint so a resume rebuilds the same sets.
        self.rules: dict[str, RuleConfig] = {}
        self.support: dict[str, Tensor] = {}
        self.plan_info: dict[str, Any] = {}
        self.planned_step: int | None = None
        # Full-precision weights of quantized layers just before hardening: where the
        # retraining of those layers starts (STE shadows, or snap-and-freeze).
        self.quant_init: dict[str, Tensor] = {}
        self.groups: list[ChannelGroup] | None = None  # channel groups, for filter pruning
        self.teachers: dict[str | None, nn.Module] = {}  # by path; None: TEACHER_FILE
        self.dist: DistContext = SINGLE
        self.generator = torch.Generator()
        self._session_start = time.perf_counter()
        self._wall_base = 0.0  # wall time spent by earlier sessions of a resumed run
        self._log_handler: logging.Handler | None = None

    # -- set-up -------------------------------------------------------------------------------
    def _check_folder(self) -> dict[str, Any] | None:
        ckpt_path = self.out / CHECKPOINT
        if not ckpt_path.exists():
            if (self.out / "report.json").exists() and not self.resume:
                raise RunFolderError(
                    f"{self.out} already holds a finished run; choose another --out folder"
                )
            if self.resume:
                log.info("no checkpoint in %s: starting the run from the beginning", self.out)
            return None
        if not self.resume:
            raise RunFolderError(
                f"{self.out} already holds a run (checkpoint.pt); pass --resume to continue "
                "it, or choose another --out folder"
            )
        ckpt = load_checkpoint(ckpt_path)
        saved = _flatten(json.loads(ckpt["config"]))
        current = _flatten(self.cfg.model_dump(mode="json"))
        changed = sorted(
            k
            for k in set(saved) | set(current)
            if not k.startswith("runtime.") and saved.get(k) != current.get(k)
        )
        if changed:
            listing = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            if not self.allow_changes:
                raise RunFolderError(
                    f"cannot resume {self.out}: the config differs from the one the run "
                    f"started with ({listing}). Resume with the original config, or pass "
                    "--allow-changes to continue with the new values (for example a lower "
                    "learning rate after a NaN loss; the result is then not bit-identical "
                    "to an uninterrupted run)"
                )
            log.warning("resuming with a changed config: %s", listing)
        return ckpt

    def _setup(self) -> dict[str, Any] | None:
        self.device = setup_runtime(self.cfg)
        self.dist = init_from_env(self.device.type == "cuda")
        self.dist.barrier()  # every rank checks the folder before rank 0 writes to it
        ckpt = self._check_folder()
        self.dist.barrier()
        # Only now, with the folder known to be ours, does the run write into it.
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._log_handler = logging.FileHandler(self.out / LOG_FILE)
            self._log_handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(message)s")
            )
            log.addHandler(self._log_handler)
        log.info("admmcompress %s: run %r in %s", __version__, self.cfg.name, self.out)
        if self.dist.enabled:
            log.info(
                "data parallel over %d processes (global batch %d)",
                self.dist.world_size,
                self.cfg.data.batch_size,
            )
        torch.manual_seed(self.cfg.seed)
        self.generator.manual_seed(self.cfg.seed + 1)
        self.model = create_model(self.cfg.model.name, **self.cfg.model.args)
        # Bad rules and missing teachers fail here, before any data is read.
        for step in self.steps:
            check_step_selectors(self.model, step)
        for given in self._named_teachers():
            if not Path(given).is_file():
                raise RunFolderError(f"distill.teacher: {given} is not a file")
        if ckpt is None and self.cfg.init:
            self._load_init(Path(self.cfg.init))
        self.model.to(self.device)
        broadcast_module(self.model, self.dist)
        if self.dist.enabled:  # own dropout masks per process, from a seed all ranks agree on
            torch.manual_seed(self.cfg.seed + 1000 * self.dist.rank)
        self.data = load_run_data(self.cfg, self.data_dir, self.device)
        if self.cfg.runtime.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.data = _channels_last(self.data)
        self._check_named_teachers()
        if self.dist.is_main:
            (self.out / CONFIG_COPY).write_text(config_to_yaml(self.cfg))
        return ckpt

    def _load_init(self, path: Path) -> None:
        masks = load_weights(self.model, path, self.cfg.model.name)
        log.info("initialised weights from %s", path)
        if masks:  # a pruned model stays pruned: its masks are where this run starts
            self.masks = {n: m.to(self.device) for n, m in masks.items()}
            log.info("kept the pruning masks of %d layers from %s", len(masks), path)

    # -- checkpoints -------------------------------------------------------------------------
    def _wall_seconds(self) -> float:
        return self._wall_base + time.perf_counter() - self._session_start

    def _save(self, extra: dict[str, Any]) -> None:
        s = self.state
        s.seconds["wall"] = self._wall_seconds()
        torch_rng = gather_objects(torch.get_rng_state(), self.dist)  # one per process
        if not self.dist.is_main:
            return
        save_checkpoint(
            self.out / CHECKPOINT,
            {
                "phase": s.phase,
                "epoch": s.epoch,
                "history": s.history,
                "phases": s.phases,
                "seconds": s.seconds,
                "config": json.dumps(self.cfg.model_dump(mode="json"), sort_keys=True),
                "model": self.model.state_dict(),
                "step": s.step,
                "steps": s.steps,
                "planned_step": self.planned_step,
                "rules": _rules_to_json(self.rules),
                "plan": self.plan_info,
                "support": self.support,
                "masks": self.masks,
                "quant_init": self.quant_init,
                "rng": {
                    "torch": torch_rng[0],
                    "torch_per_rank": torch_rng,
                    "data": self.generator.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                },
                **extra,
            },
        )

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.state = RunState(
            phase=ckpt["phase"],
            epoch=ckpt["epoch"],
            history=ckpt["history"],
            phases=ckpt["phases"],
            seconds=ckpt["seconds"],
            step=ckpt.get("step", 0),
            steps=ckpt.get("steps", []),
        )
        self._wall_base = float(ckpt["seconds"].get("wall", 0.0))
        self.model.load_state_dict(ckpt["model"])
        self.masks = {k: v.to(self.device) for k, v in ckpt["masks"].items()}
        self.quant_init = {k: v.to(self.device) for k, v in ckpt.get("quant_init", {}).items()}
        self.planned_step = ckpt.get("planned_step")
        self.rules = _rules_from_json(ckpt.get("rules", {}))
        self.plan_info = ckpt.get("plan", {})
        self.support = {k: v.to(self.device) for k, v in ckpt.get("support", {}).items()}
        self.constraints = step_constraints(self.model, self.rules, self.support)
        per_rank = ckpt["rng"].get("torch_per_rank") or [ckpt["rng"]["torch"]]
        if len(per_rank) != self.dist.world_size and self.dist.enabled:
            log.warning(
                "the checkpoint was written by %d processes, this run has %d: dropout masks "
                "will differ from an uninterrupted run",
                len(per_rank),
                self.dist.world_size,
            )
        torch.set_rng_state(per_rank[self.dist.rank % len(per_rank)])
        self.generator.set_state(ckpt["rng"]["data"])
        if ckpt["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        where = self.state.phase
        if where in ("admm", "retrain"):
            where = f"{self.steps[self.state.step].name} {where}"
        log.info("resuming %s at %s epoch %d", self.out, where, self.state.epoch + 1)

    # -- phases -------------------------------------------------------------------------------
    @property
    def _autocast(self) -> torch.dtype | None:
        return torch.bfloat16 if self.cfg.runtime.precision == "bf16" else None

    def _evaluate(self) -> tuple[float, float]:
        return evaluate(
            self.model,
            self.data.test,
            self.cfg.data.eval_batch_size,
            self.dist,
            autocast=self._autocast,
        )

    def _run_phase(self, name: str, pcfg: PhaseConfig, ckpt: dict[str, Any] | None) -> None:
        s = self.state
        admm: ADMM | None = None
        enforcer: MaskEnforcer | None = None
        # Gradients left by the previous phase must not reach this one: a resumed run
        # starts without them, and bit-identical resumes need both paths to agree.
        self.model.zero_grad(set_to_none=True)
        quant = self._quant_retrainer(name, ckpt) if name == "retrain" else None
        params = quant.optimizer_params(self.model) if quant else list(self.model.parameters())
        optimizer = build_optimizer(params, pcfg.optimizer)
        period = getattr(pcfg, "period", pcfg.epochs)
        restart = name == "admm" and getattr(pcfg, "restart_schedule", False)
        horizon = period if restart else pcfg.epochs
        scheduler = build_scheduler(optimizer, pcfg.scheduler, horizon)
        step = self.steps[s.step]
        if name == "admm":
            acfg = step.admm
            admm = ADMM(
                self.model,
                self.constraints,
                rho=acfg.rho,
                rho_growth=acfg.rho_growth,
                rho_max=acfg.rho_max,
                rescale_dual=acfg.rescale_dual,
                couple=coupled_layer_sets(self.model, self._structured_groups(), self._axes())[0],
            )
        if self.masks:
            modules = dict(self.model.named_modules())
            weights = {n: modules[n].weight for n in self.masks}
            if isinstance(quant, STEQuantizer):
                weights.update(quant.shadow)  # the optimizer moves the shadows
            masks = dict(self.masks)
            # BatchNorm entries of channels removed by an earlier hardening stay zero
            bn = self._batchnorm_masks()
            params = dict(self.model.named_parameters())
            weights.update({k: params[k] for k in bn})
            masks.update(bn)
            enforcer = MaskEnforcer(weights, masks)
            enforcer.attach(optimizer)
        if ckpt is not None and ckpt.get("optimizer") is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            if not (restart and s.epoch % period == 0):
                scheduler.load_state_dict(ckpt["scheduler"])
            if admm is not None:
                admm.load_state_dict(ckpt["admm"])
            if quant is not None:
                quant.load_state_dict(ckpt["quant"])
        if quant is not None:
            quant.attach(optimizer)
        after_backward = None
        if admm is not None:
            after_backward = admm.add_penalty_grad_
        elif quant is not None:
            after_backward = quant.after_backward
        try:
            while s.epoch < pcfg.epochs:
                if restart and s.epoch % period == 0 and s.epoch > 0:
                    scheduler = build_scheduler(optimizer, pcfg.scheduler, horizon)
                if quant is not None:
                    quant.start_epoch(s.epoch, pcfg.epochs)
                lr = optimizer.param_groups[0]["lr"]
                label = f"{name} {s.epoch + 1}/{pcfg.epochs}"
                if name != "pretrain" and len(self.steps) > 1:
                    label = f"{step.name} {label}"
                stats = train_epoch(
                    self.model,
                    self.data.train,
                    optimizer,
                    batch_size=self.cfg.data.batch_size,
                    generator=self.generator,
                    after_backward=after_backward,
                    progress=self.cfg.runtime.progress and self.dist.is_main,
                    desc=label,
                    augment=self.cfg.data.augment,
                    teacher=self._teacher(pcfg.distill.teacher) if pcfg.distill else None,
                    distill=pcfg.distill,
                    dist=self.dist,
                    autocast=self._autocast,
                )
                broadcast_buffers(self.model, self.dist)  # BatchNorm running stats of rank 0
                scheduler.step()
                record: dict[str, Any] = {"phase": name, "epoch": s.epoch + 1, "lr": lr}
                if name != "pretrain":
                    record["step"] = s.step + 1
                if admm is not None:
                    with torch.no_grad():
                        record["penalty"] = float(admm.penalty())  # before this epoch's update
                if admm is not None and (s.epoch + 1) % period == 0:
                    t0 = time.perf_counter()
                    residuals = admm.update()
                    record["admm_update_seconds"] = time.perf_counter() - t0
                    if self.dist.enabled:
                        zu = {
                            f"{n}.{k}": layer[k]
                            for n, layer in admm.state_dict()["layers"].items()
                            for k in ("z", "u")
                        }
                        check_identical(zu, self.dist, "ADMM state (Z, U)")
                    record["residuals"] = {
                        k: {
                            "primal": r.primal,
                            "dual": r.dual,
                            "rho": r.rho,
                            "relative_primal": r.relative_primal,
                        }
                        for k, r in residuals.items()
                    }
                t0 = time.perf_counter()
                test_loss, test_acc = self._evaluate()
                record.update(
                    train_loss=stats.loss,
                    train_accuracy=stats.accuracy,
                    test_loss=test_loss,
                    test_accuracy=test_acc,
                    train_seconds=stats.seconds,
                    eval_seconds=time.perf_counter() - t0,
                )
                s.history.append(record)
                s.seconds[name] = s.seconds.get(name, 0.0) + stats.seconds + record["eval_seconds"]
                s.epoch += 1
                msg = (
                    f"{label}: loss {stats.loss:.4f}  train acc {stats.accuracy:.4f}  "
                    f"test acc {test_acc:.4f}  lr {lr:.3g}  ({stats.seconds:.1f}s)"
                )
                if "residuals" in record:
                    worst = max(record["residuals"].values(), key=lambda r: r["relative_primal"])
                    msg += f"  ADMM update: max ||W-Z||/||W|| {worst['relative_primal']:.3g}"
                log.info(msg)
                self._save(
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "admm": admm.state_dict() if admm is not None else None,
                        "quant": quant.state_dict() if quant is not None else None,
                    }
                )
        finally:
            if enforcer is not None:
                enforcer.detach()
            if quant is not None:
                quant.detach()
        if quant is not None:
            quant.finish()
        self._finish_phase(name, admm)

    def _quant_retrainer(
        self, name: str, ckpt: dict[str, Any] | None
    ) -> STEQuantizer | SnapFreeze | None:
        """How retraining keeps quantized layers on their grid (None when nothing is quantized)."""
        quantized = {n: c for n, c in self.constraints.items() if quantizer_of(c) is not None}
        if not quantized:
            return None
        rcfg = self.steps[self.state.step].retrain
        if rcfg.quant_method == "ste":
            return STEQuantizer(self.model, quantized, self.masks, init=self.quant_init)
        if ckpt is None:  # a fresh phase: snapping starts from the full-precision weights
            modules = dict(self.model.named_modules())
            with torch.no_grad():
                for n, w in self.quant_init.items():
                    modules[n].weight.copy_(w)
        return SnapFreeze(self.model, quantized, self.masks, tuple(rcfg.freeze_fractions))

    def _finish_phase(self, name: str, admm: ADMM | None) -> None:
        s = self.state
        test_loss, test_acc = self._last_or_eval(name)
        s.phases[name] = {
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "epochs": float(s.epoch),
            "seconds": s.seconds.pop(name, 0.0),
        }
        extra: dict[str, Any] = {}
        if name == "admm":
            t0 = time.perf_counter()
            if admm is None:  # a resumed run that stopped exactly at the end of the phase
                raise RuntimeError("internal: ADMM state missing at hardening")
            modules = dict(self.model.named_modules())
            self.quant_init = {
                n: modules[n].weight.detach().clone()
                for n, c in self.constraints.items()
                if quantizer_of(c) is not None
            }
            # Layers masked earlier (an init model's pruning) but under no rule keep theirs.
            self.masks = {**self.masks, **admm.harden()}
            params = dict(self.model.named_parameters())
            for key, keep in self._batchnorm_masks().items():
                params[key].detach().masked_fill_(~keep, 0.0)
            for n, w in self.quant_init.items():  # pruned weights stay pruned for retraining
                w.masked_fill_(~self.masks[n], 0.0)
            h_loss, h_acc = self._evaluate()
            s.phases["harden"] = {
                "test_accuracy": h_acc,
                "test_loss": h_loss,
                "epochs": 0.0,
                "seconds": time.perf_counter() - t0,
            }
            log.info("hardened: test acc %.4f (was %.4f before projection)", h_acc, test_acc)
            extra["admm"] = admm.state_dict()
        s.epoch = 0
        if name == "pretrain":
            s.phase = "admm"
        elif name == "admm":
            s.phase = "retrain"
        else:
            self._finish_step()
            s.step += 1
            s.phase = "admm" if s.step < len(self.steps) else "done"
            if s.phase == "admm":
                # The finished step's phases live on in its summary.
                for key in ("admm", "harden", "retrain"):
                    s.phases.pop(key, None)
        self._save(extra)

    def _finish_step(self) -> None:
        """Verify the step's model, keep a copy of it and summarise the step."""
        s = self.state
        step = self.steps[s.step]
        verify_model(self.model, self.constraints, self.masks)
        test_loss, test_acc = self._evaluate()
        layers = layer_table(self.model, self.constraints, self.masks)
        summary: dict[str, Any] = {
            "index": s.step + 1,
            "name": step.name,
            **pruning_rates(layers),
            **storage_summary(layers),
            "nonzero_total": sum(r["nonzero"] for r in layers),
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "phases": {k: s.phases[k] for k in ("admm", "harden", "retrain") if k in s.phases},
            "layers": {
                r["name"]: {
                    "nonzero": r["nonzero"],
                    "bits": r["bits"],
                    "constraint": r["constraint"],
                }
                for r in layers
            },
            "allocation": self.plan_info,
            "model_file": f"{STEPS_DIR}/{step.name}.safetensors",
        }
        s.steps = [x for x in s.steps if x["index"] != summary["index"]] + [summary]
        self._save_model(self.out / summary["model_file"])
        log.info(
            "%s done: pruning rate %.1fx, storage %.1fx, test accuracy %.4f",
            step.name,
            summary["pruning_rate"],
            summary["storage_rate"],
            test_acc,
        )

    def _last_or_eval(self, name: str) -> tuple[float, float]:
        s = self.state
        for rec in reversed(s.history):
            if rec["phase"] == name:
                return rec["test_loss"], rec["test_accuracy"]
        return self._evaluate()

    # -- the whole run ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or finish) every phase, then verify, save and report; returns report.json."""
        try:
            report = self._run()
            shutdown()  # on an error, exiting lets torchrun stop the other processes
            return report
        finally:
            # flush-denormal is process-wide processor state; leave the process as found
            # (torch starts with it off and offers no getter).
            torch.set_flush_denormal(False)
            if self._log_handler is not None:
                log.removeHandler(self._log_handler)
                self._log_handler.close()
                self._log_handler = None

    def _run(self) -> dict[str, Any]:
        self._session_start = time.perf_counter()
        ckpt = self._setup()
        if ckpt is not None:
            self._restore(ckpt)
        s = self.state
        while s.phase != "done":
            # (a checkpoint from before steps existed has no plan: make it from the config)
            if s.phase in ("admm", "retrain") and self.planned_step != s.step:
                self._plan_step()
            # Only a checkpoint written inside a phase carries its optimizer (and ADMM) state;
            # one written at a phase boundary starts the next phase afresh.
            mid_phase = (
                ckpt is not None
                and ckpt["phase"] == s.phase
                and ckpt.get("step", 0) == s.step
                and ckpt.get("optimizer")
            )
            pcfg = (
                self.cfg.pretrain if s.phase == "pretrain" else getattr(self.steps[s.step], s.phase)
            )
            if s.phase == "admm" and s.step == 0 and s.epoch == 0:
                self._keep_teacher()
            self._run_phase(s.phase, pcfg, ckpt if mid_phase else None)
            ckpt = None
        return self._finalize()

    def _axes(self) -> dict[str, str]:
        """Layers under filter or channel rules in this step, and which of the two."""
        return {
            n: rule.rule.axis
            for n, c in self.constraints.items()
            if (rule := structured_rule(c)) is not None
        }

    def _channel_groups(self) -> list[ChannelGroup]:
        """The model's channel groups, traced once (none for a model fx cannot trace)."""
        if self.groups is None:
            example = torch.zeros(1, *self.data.input_shape, device=self.device)
            try:
                self.groups = channel_groups(self.model, example)
            except ValueError as e:  # not traceable: every layer is pruned on its own
                log.warning("structured pruning without coupled layers: %s", e)
                self.groups = []
            for note in coupled_layer_sets(self.model, self.groups, self._axes())[1]:
                log.warning("%s", note)
        return self.groups

    def _structured_groups(self) -> list[ChannelGroup]:
        """Channel groups touched by this step's filter or channel rules."""
        axes = self._axes()
        if not axes:
            return []
        return [g for g in self._channel_groups() if axes.keys() & {*g.producers, *g.consumers}]

    def _batchnorm_masks(self) -> dict[str, Tensor]:
        """BatchNorm entries of channels removed by filter rules, held at zero from the
        hardening on, in later steps too (their rules carry the filter pruning along)."""
        filters = {n for n, r in self.rules.items() if r.prune == "filter"}
        if not filters:
            return {}
        groups = [g for g in self._channel_groups() if filters & set(g.producers)]
        return batchnorm_masks(self.model, groups, self.masks)

    def _keep_teacher(self) -> None:
        """Save the model as step 1 starts, if any phase will distill from it."""
        uses = any(
            p.distill and p.distill.teacher is None
            for st in self.steps
            for p in (st.admm, st.retrain)
        )
        path = self.out / TEACHER_FILE
        if uses and not path.is_file() and self.dist.is_main:
            save_model(
                path, self.model, {}, model_name=self.cfg.model.name, model_args=self.cfg.model.args
            )
        self.dist.barrier()  # the other ranks read it from the (shared) run folder

    def _named_teachers(self) -> list[str]:
        """The teacher files the config names (``distill.teacher``), each once."""
        return sorted(
            {
                p.distill.teacher
                for st in self.steps
                for p in (st.admm, st.retrain)
                if p.distill is not None and p.distill.teacher is not None
            }
        )

    def _check_named_teachers(self) -> None:
        """A named teacher must give outputs of the model's shape: found now, not hours in."""
        named = self._named_teachers()
        if not named:
            return
        example = torch.zeros(1, *self.data.input_shape, device=self.device)
        training = self.model.training
        with torch.no_grad():
            want = self.model.eval()(example).shape
            for path in named:
                got = self._teacher(path)(example).shape
                if got != want:
                    raise ConfigError(
                        f"distill.teacher {path} gives outputs of shape {tuple(got)}, the "
                        f"model {tuple(want)}: the teacher must predict the same classes"
                    )
        self.model.train(training)

    def _teacher(self, given: str | None) -> nn.Module:
        """The model a phase distills from: a file the config names, or the one kept at step 1."""
        if given not in self.teachers:
            if given is not None:  # checked at start-up; any architecture, every rank reads it
                teacher = load(Path(given), self.device)
            else:
                path = self.out / TEACHER_FILE
                if self.dist.is_main and not path.is_file():
                    raise RunFolderError(
                        f"{path} is missing: distillation was turned on after the run's first "
                        "step began, so the model it learns from (the one before step 1) was "
                        "not kept. Start a new run, name a teacher file, or drop 'distill'"
                    )
                if self.dist.is_main:
                    teacher = load(path, self.device)
                else:  # sent from rank 0: the other machines need not see the run folder
                    teacher = create_model(self.cfg.model.name, **self.cfg.model.args)
                    teacher.to(self.device)
                broadcast_module(teacher, self.dist)
            self.teachers[given] = teacher.eval().requires_grad_(False)
        return self.teachers[given]

    def _scan_split(self) -> BatchSource:
        """Training images the sensitivity scan scores on (never the test set)."""
        target = self.steps[self.state.step].target
        n = target.samples if target is not None else 5000
        train = self.data.train
        return train.subset(n, self.cfg.seed) if n < len(train) else train

    def _plan_step(self) -> None:
        """Resolve the step's rules (and target) against the model as the step starts."""
        s = self.state
        step = self.steps[s.step]
        carried = self.rules
        self.support = {n: m.clone() for n, m in self.masks.items()}
        split = None

        def score() -> tuple[float, float]:
            nonlocal split
            split = split or self._scan_split()
            return evaluate(self.model, split, self.cfg.data.eval_batch_size)

        plan: StepPlan = plan_step(self.model, step, carried, self.masks, score)
        # Every rank plans (a scan takes as long everywhere, so nobody waits on a collective
        # meanwhile); rank 0's plan is the one used, so that ranks can never disagree.
        plan = broadcast_object(plan, self.dist)
        self.rules = plan.rules
        self.constraints = step_constraints(self.model, self.rules, self.support)
        self.plan_info = plan.allocation
        if plan.scan:
            self.plan_info = {
                **plan.allocation,
                "scan": {
                    n: [{"count": p.count, "loss": p.loss, "accuracy": p.accuracy} for p in pts]
                    for n, pts in plan.scan.items()
                },
            }
        self.planned_step = s.step
        if s.phase == "admm":
            self.quant_init = {}
        if plan.allocation:
            counts = ", ".join(f"{n} {c:,}" for n, c in plan.allocation["counts"].items())
            log.info(
                "%s: target %gx split by %s: %s",
                step.name,
                plan.allocation["rate"],
                plan.allocation["method"],
                counts,
            )

    def _save_model(self, path: Path) -> None:
        if not self.dist.is_main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(
            path,
            self.model,
            self.masks,
            model_name=self.cfg.model.name,
            model_args=self.cfg.model.args,
            extra={
                "dataset": self.cfg.data.dataset,
                "input_shape": list(self.data.input_shape),
                **self._folder_metadata(),
                "rules": {name: c.describe() for name, c in self.constraints.items()},
                "quantization": {
                    name: {"bits": q.bits, "per_channel": q.per_channel}
                    for name, c in self.constraints.items()
                    if (q := quantizer_of(c)) is not None
                },
            },
        )

    def _folder_metadata(self) -> dict[str, Any]:
        """How an image folder was cropped for evaluation, so `eval` can do the same."""
        if self.cfg.data.dataset not in FOLDER_DATASETS:
            return {}
        size = self.data.input_shape[-1]
        return {"eval_resize": FolderOptions(size, self.cfg.data.eval_resize).resize}

    def _finalize(self) -> dict[str, Any]:
        verify_model(self.model, self.constraints, self.masks)
        test_loss, test_acc = self._evaluate()
        model_path = self.out / MODEL_FILE
        self._save_model(model_path)
        report = build_report(
            cfg=self.cfg,
            model=self.model,
            constraints=self.constraints,
            masks=self.masks,
            final={"test_accuracy": test_acc, "test_loss": test_loss},
            phases=self.state.phases,
            history=self.state.history,
            device=str(self.device),
            model_file=model_path,
            wall_seconds=self._wall_seconds(),
            steps=self.state.steps,
        )
        if self.dist.is_main:
            write_report(report, self.out)
        self.dist.barrier()
        log.info(
            "done: pruning rate %.1fx, test accuracy %.4f; results in %s",
            report["pruning_rate"],
            test_acc,
            self.out,
        )
        return report
