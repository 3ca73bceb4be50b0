"""The end-to-end run: pretrain, then per step ADMM -> harden -> masked retrain; verify, report.

The orchestrator only sequences: the run folder (``folder``), what survives a kill
(``state``), one phase's epochs (``phase``), the teachers (``teachers``), the channel
structure of filter rules (``coupling``) and what the config builds (``inputs``) each
live in their own module. Every epoch ends with an atomic checkpoint, so ``resume``
continues a killed run and finishes with bit-identical weights on the same machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._version import __version__
from ..constraints import Constraint, quantizer_of
from ..core.admm import ADMM, FAR_FROM_SET, ADMMConvergenceWarning, ADMMOverflowError
from ..core.masking import MaskEnforcer
from ..core.selection import compressible_parameters
from ..core.verify import verify_model
from ..data import Dataset
from ..formats import load_weights
from ..formats.safetensors_model import save_model
from ..recipe.planning import (
    StepPlan,
    check_step_selectors,
    plan_step,
    step_constraints,
    step_coverage,
)
from ..recipe.schema import PhaseConfig, RunConfig, StepConfig
from ..train.batchnorm import batchnorm_layers, recalibrate_batchnorm
from ..train.distributed import (
    SINGLE,
    DistContext,
    broadcast_buffers,
    broadcast_module,
    broadcast_object,
    init_from_env,
    shutdown,
)
from ..train.loop import NonFiniteLossError, evaluate
from ..train.optim import flat_within
from ..train.quantized import SnapFreeze, STEQuantizer
from . import inputs
from .checkpoint import CheckpointError, check_structure, save_checkpoint
from .coupling import ChannelStructure
from .folder import CHECKPOINT, MODEL_FILE, STEPS_DIR, RunFolder
from .phase import EpochContext, Phase, QuantRetrainer, run_epochs
from .report import build_report, step_summary, write_report
from .runtime import native_bf16, resolve_precision, setup_runtime
from .state import RunState, capture_rng, restore_rng
from .teachers import Teachers

log = logging.getLogger("admmcompress")

PHASES = ("pretrain", "admm", "retrain")


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
        self.folder = RunFolder(self.out)
        self.resume = resume
        self.allow_changes = allow_changes
        self.data_dir = data_dir
        self.device = torch.device("cpu")
        self.precision = "fp32"  # runtime.precision resolved on this device ("auto")
        self.state = RunState()
        self.model: nn.Module
        self.data: Dataset
        self.steps: list[StepConfig] = cfg.step_list()
        self.constraints: dict[str, Constraint] = {}
        self.structure: ChannelStructure
        self.teachers: Teachers
        self.dist: DistContext = SINGLE
        self.generator = torch.Generator()
        self._session_start = time.perf_counter()
        self._wall_base = 0.0  # wall time spent by earlier sessions of a resumed run

    # -- set-up -------------------------------------------------------------------------------
    def _setup(self) -> dict[str, Any] | None:
        cfg = self.cfg
        self.device = setup_runtime(cfg.runtime)
        self.dist = init_from_env(self.device.type == "cuda")
        # rank 0 decides, so machines that differ cannot compute in different precisions
        self.precision = broadcast_object(
            resolve_precision(cfg.runtime.precision, self.device), self.dist
        )
        if self.dist.is_main:  # one process owns the folder; the lock says which
            self.folder.lock()
        self.dist.barrier()  # every rank checks the folder before rank 0 writes to it
        ckpt = self.folder.claim(cfg, self.resume, self.allow_changes)
        self.dist.barrier()
        # Only now, with the folder known to be ours, does the run write into it.
        if self.dist.is_main:
            stale = self.folder.remove_stale_temporaries()
            self.folder.open_log()
            if stale:
                log.info("removed %d temporary files of an interrupted write", len(stale))
        log.info("admmcompress %s: run %r in %s", __version__, cfg.name, self.out)
        if ckpt is None:  # a resume says it after reading the precision the run started in
            self._log_precision()
        if self.folder.applied_changes:
            log.warning("resuming with a changed config: %s", self.folder.change_listing)
        if self.dist.enabled:
            log.info(
                "data parallel over %d processes (global batch %d)",
                self.dist.world_size,
                cfg.data.batch_size,
            )
        torch.manual_seed(cfg.seed)
        self.generator.manual_seed(cfg.seed + 1)
        self.model = inputs.build_model(cfg.model)
        self.teachers = Teachers(self.out, cfg.model, self.steps, self.device, self.dist)
        # Bad rules and missing teachers fail here, before any data is read.
        for step in self.steps:
            check_step_selectors(self.model, step)
            self._log_coverage(step)
        self.teachers.check_files()
        if ckpt is None and cfg.init:
            self._load_init(Path(cfg.init))
        self.model.to(self.device)
        broadcast_module(self.model, self.dist)
        if self.dist.enabled:  # own dropout masks per process, from a seed all ranks agree on
            torch.manual_seed(cfg.seed + 1000 * self.dist.rank)
        self.data = inputs.load_run_data(cfg, self.data_dir, self.device)
        if cfg.runtime.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.data = inputs.channels_last(self.data)
        self._check_fits_data()
        self.structure = ChannelStructure(self.model, self.data.input_shape, self.device)
        self.teachers.check_outputs(self.model, self.data.input_shape)
        if self.dist.is_main:
            self.folder.write_config(cfg)
        return ckpt

    def _resume_precision(self, ckpt: dict[str, Any]) -> None:
        """Keep computing in the precision the run started in: a run that switched halfway
        would be neither its fp32 nor its bf16 result."""
        started = ckpt.get("precision")
        if started is None:  # a checkpoint from before precision was recorded: its config's
            started = json.loads(ckpt["config"]).get("runtime", {}).get("precision", "fp32")
        asked = self.cfg.runtime.precision
        if started not in ("fp32", "bf16") or started == self.precision:
            self._log_precision()
        elif asked == "auto":  # resumed on other hardware
            log.warning(
                "precision: %s, as the run started (auto would pick %s on this machine), so "
                "the run does not mix precisions",
                started,
                self.precision,
            )
            self.precision = started
        else:  # the config now names another precision: the user's call, said plainly
            log.warning(
                "precision: %s from here on, as runtime.precision now says; the run started "
                "in %s, so its result is not that of an uninterrupted run in either",
                self.precision,
                started,
            )
            self.state.warnings.append(
                f"resumed in {self.precision} after starting in {started}: mixed precision"
            )

    def _log_precision(self) -> None:
        asked = self.cfg.runtime.precision
        native = native_bf16(self.device)
        if asked == "auto":
            log.info(
                "precision: %s (auto: this %s %s bfloat16 in hardware)",
                self.precision,
                self.device.type.upper(),
                "computes" if native else "does not compute",
            )
        elif asked == "bf16" and not native:
            log.warning(
                "runtime.precision is bf16, but this %s has no bfloat16 hardware (no "
                "AVX512-BF16 or AMX on a CPU): bf16 is emulated and usually slower than fp32; "
                "'precision: auto' picks fp32 here",
                self.device.type.upper(),
            )

    def _check_fits_data(self) -> None:
        """One forward pass before any training: a model that does not fit the data fails
        now, with a message, not at the first batch."""
        inputs.check_fits(
            self.model,
            tuple(self.data.input_shape),
            self.data.num_classes,
            f"model {self.cfg.model.name!r} and data set {self.cfg.data.dataset!r}",
            self.device,
            self.cfg.runtime.channels_last,
        )

    def _log_coverage(self, step: StepConfig) -> None:
        """Which parameters the step compresses and which it leaves as they are."""
        covered, left = step_coverage(self.model, step)

        def names(xs: list[str]) -> str:
            return ", ".join(xs[:8]) + (f" and {len(xs) - 8} more" if len(xs) > 8 else "")

        log.info(
            "%s compresses %d of %d parameters with two or more dimensions: %s%s",
            step.name,
            len(covered),
            len(covered) + len(left),
            names(covered),
            f"; left as they are: {names(left)}" if left else "",
        )

    def _load_init(self, path: Path) -> None:
        masks = load_weights(self.model, path)
        log.info("initialised weights from %s", path)
        if masks:  # a pruned model stays pruned: its masks are where this run starts
            self.state.masks = {n: m.to(self.device) for n, m in masks.items()}
            log.info("kept the pruning masks of %d layers from %s", len(masks), path)

    # -- checkpoints -------------------------------------------------------------------------
    def _wall_seconds(self) -> float:
        return self._wall_base + time.perf_counter() - self._session_start

    def _save(self, extra: dict[str, Any]) -> None:
        s = self.state
        s.seconds["wall"] = self._wall_seconds()
        rng = capture_rng(self.generator, self.dist)  # a collective: every rank takes part
        if not self.dist.is_main:
            return
        save_checkpoint(
            self.out / CHECKPOINT,
            {
                **s.progress(),
                "config": json.dumps(self.cfg.model_dump(mode="json"), sort_keys=True),
                "precision": self.precision,
                "model": self.model.state_dict(),
                **s.plan(),
                "rng": rng,
                **extra,
            },
        )

    def _restore(self, ckpt: dict[str, Any]) -> None:
        path = self.out / CHECKPOINT
        check_structure(ckpt, path, len(self.steps))
        with self._fitting_checkpoint("it does not fit this run's model and config"):
            self._restore_checked(ckpt)

    @contextlib.contextmanager
    def _fitting_checkpoint(self, why: str) -> Iterator[None]:
        """A checkpoint that loaded safely but does not fit what restores it: whatever the
        restoring code raises becomes one ``CheckpointError`` saying ``why``."""
        try:
            yield
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            raise CheckpointError(
                f"checkpoint {self.out / CHECKPOINT} cannot be resumed: {why} "
                f"({type(e).__name__}: {str(e).strip()[:300]}); start the run again in "
                "another --out folder"
            ) from None

    def _restore_checked(self, ckpt: dict[str, Any]) -> None:
        self.state = RunState.from_checkpoint(ckpt, self.device)
        self._resume_precision(ckpt)
        if self.folder.applied_changes:
            where = self.state.phase
            if where in ("admm", "retrain"):
                where = f"{self.steps[self.state.step].name} {where}"
            self.state.warnings.append(
                f"resumed at {where} epoch {self.state.epoch + 1} with changed settings: "
                f"{self.folder.change_listing}; the result is not bit-identical to an "
                "uninterrupted run"
            )
        self._wall_base = float(ckpt["seconds"].get("wall", 0.0))
        self.model.load_state_dict(ckpt["model"])
        self.constraints = step_constraints(self.model, self.state.rules, self.state.support)
        restore_rng(ckpt["rng"], self.generator, self.dist)
        where = self.state.phase
        if where in ("admm", "retrain"):
            where = f"{self.steps[self.state.step].name} {where}"
        log.info("resuming %s at %s epoch %d", self.out, where, self.state.epoch + 1)

    # -- phases -------------------------------------------------------------------------------
    @property
    def _autocast(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def _evaluate(self) -> tuple[float, float]:
        return evaluate(
            self.model,
            self.data.test,
            self.cfg.data.eval_batch_size,
            self.dist,
            autocast=self._autocast,
        )

    def _phase(self, name: str, pcfg: PhaseConfig, ckpt: dict[str, Any] | None) -> Phase:
        """The optimizer, schedule, ADMM state, quantized retraining and masks of a phase."""
        s = self.state
        # Gradients left by the previous phase must not reach this one: a resumed run
        # starts without them, and bit-identical resumes need both paths to agree.
        self.model.zero_grad(set_to_none=True)
        quant = self._quant_retrainer(ckpt) if name == "retrain" else None
        params = quant.optimizer_params(self.model) if quant else list(self.model.parameters())
        optimizer = inputs.optimizer(params, pcfg.optimizer)
        period = getattr(pcfg, "period", pcfg.epochs)
        restart = name == "admm" and getattr(pcfg, "restart_schedule", False)
        horizon = period if restart else pcfg.epochs

        def new_scheduler() -> torch.optim.lr_scheduler.LRScheduler:
            return inputs.scheduler(optimizer, pcfg.scheduler, horizon)

        phase = Phase(name, pcfg.epochs, period, restart, optimizer, new_scheduler(), new_scheduler)
        if name == "admm":
            acfg = self.steps[s.step].admm
            if restart and pcfg.epochs > period and ckpt is None:
                self._warn_schedule_restarts(pcfg, period)
            phase.admm = ADMM(
                self.model,
                self.constraints,
                rho=acfg.rho,
                rho_growth=acfg.rho_growth,
                rho_max=acfg.rho_max,
                rescale_dual=acfg.rescale_dual,
                couple=self.structure.coupled_sets(self.constraints),
            )
        phase.quant = quant
        if s.masks:
            params = compressible_parameters(self.model)
            weights = {n: params[n] for n in s.masks}
            if isinstance(quant, STEQuantizer):
                weights.update(quant.shadow)  # the optimizer moves the shadows
            masks = dict(s.masks)
            # BatchNorm entries of channels removed by an earlier hardening stay zero
            bn = self._batchnorm_masks()
            named = dict(self.model.named_parameters())
            weights.update({k: named[k] for k in bn})
            masks.update(bn)
            phase.enforcer = MaskEnforcer(weights, masks)
            phase.enforcer.attach(optimizer)
        if ckpt is not None and ckpt.get("optimizer") is not None:
            changed = self._changed_in_phase(name)
            fresh = any(k.startswith(("optimizer.", "scheduler.")) for k in changed)
            with self._fitting_checkpoint(f"the state of its {name} phase does not fit"):
                phase.restore(ckpt, s.epoch, keep_optimizer=not fresh)
            if fresh:  # the new settings: the optimizer and its schedule start again
                phase.fast_forward(s.epoch)
                log.info("%s: optimizer and schedule restarted with the new settings", name)
            if phase.admm is not None and {"rho", "rho_max"} & set(changed):
                phase.admm.set_rho(self.steps[s.step].admm.rho, self.steps[s.step].admm.rho_max)
                log.info("%s: rho set to the new value", name)
        phase.attach()
        return phase

    def _warn_schedule_restarts(self, pcfg: PhaseConfig, period: int) -> None:
        """Say that a schedule restarted every period but flat within one never changes: a
        recipe reading ``scheduler: cosine`` with ``period: 1`` trains ADMM at one lr."""
        sched = pcfg.scheduler.name
        if sched == "constant" or not flat_within(period, **pcfg.scheduler.model_dump()):
            return
        lr = pcfg.optimizer.lr
        advice = (
            f"{self.steps[self.state.step].name}: admm.scheduler {sched} restarts every ADMM "
            f"period (admm.period {period}, admm.restart_schedule true) and does not change "
            f"within one, so all {pcfg.epochs} ADMM epochs run at lr {lr:g}. Set "
            f"admm.restart_schedule: false for one {sched} schedule over the whole ADMM "
            "phase, or admm.scheduler: constant to say what runs"
        )
        log.warning("%s", advice)
        self.state.warnings.append(advice)

    def _changed_in_phase(self, name: str) -> list[str]:
        """The changed settings of the phase in progress (keys inside the phase)."""
        if name == "pretrain":
            prefixes = ["pretrain."]
        elif self.cfg.steps is None:
            prefixes = [f"{name}."]
        else:
            prefixes = [f"steps.{self.state.step}.{name}."]
        return [
            k.removeprefix(p)
            for k in self.folder.applied_changes
            for p in prefixes
            if k.startswith(p)
        ]

    def _run_phase(self, name: str, pcfg: PhaseConfig, ckpt: dict[str, Any] | None) -> None:
        s = self.state
        step = self.steps[s.step]
        phase = self._phase(name, pcfg, ckpt)
        ctx = EpochContext(
            model=self.model,
            train=self.data.train,
            batch_size=self.cfg.data.batch_size,
            generator=self.generator,
            augment=inputs.augmentation(self.cfg.data.augment),
            dist=self.dist,
            autocast=self._autocast,
            progress=self.cfg.runtime.progress and self.dist.is_main,
            evaluate=self._evaluate,
            save=self._save,
        )
        distill = pcfg.distill
        try:
            run_epochs(
                phase,
                s,
                ctx,
                label_prefix=f"{step.name} " if name != "pretrain" and len(self.steps) > 1 else "",
                step_number=s.step + 1 if name != "pretrain" else None,
                teacher=(lambda: self.teachers.get(distill.teacher)) if distill else None,
                distill=inputs.distillation(distill) if distill else None,
            )
        finally:
            phase.close()
        if phase.quant is not None:
            phase.quant.finish()
        self._finish_phase(name, phase.admm)

    def _quant_retrainer(self, ckpt: dict[str, Any] | None) -> QuantRetrainer | None:
        """How retraining keeps quantized layers on their grid (None when nothing is quantized)."""
        s = self.state
        quantized = {n: c for n, c in self.constraints.items() if quantizer_of(c) is not None}
        if not quantized:
            return None
        rcfg = self.steps[s.step].retrain
        if rcfg.quant_method == "ste":
            return STEQuantizer(self.model, quantized, s.masks, init=s.quant_init)
        if ckpt is None:  # a fresh phase: snapping starts from the full-precision weights
            params = compressible_parameters(self.model)
            with torch.no_grad():
                for n, w in s.quant_init.items():
                    params[n].copy_(w)
        return SnapFreeze(self.model, quantized, s.masks, tuple(rcfg.freeze_fractions))

    def _batchnorm_masks(self) -> dict[str, Tensor]:
        return self.structure.batchnorm_masks(self.state.rules, self.state.masks, self.constraints)

    def _harden(self, admm: ADMM, test_acc: float) -> None:
        """Project every constrained layer onto its set; the masks hold from now on."""
        s = self.state
        t0 = time.perf_counter()
        weights = compressible_parameters(self.model)
        s.quant_init = {
            n: weights[n].detach().clone()
            for n, c in self.constraints.items()
            if quantizer_of(c) is not None
        }
        far = admm.far_from_sets() if admm.iteration else {}
        if far:
            acfg = self.steps[s.step].admm
            worst = ", ".join(f"{n} {v:.2f}" for n, v in sorted(far.items(), key=lambda x: -x[1]))
            advice = (
                f"{self.steps[s.step].name}: ADMM ended with ||W-Z||/||W|| above "
                f"{FAR_FROM_SET:g} ({worst}): those weights did not reach their sets, so "
                f"hardening costs accuracy. Raise admm.rho (now {acfg.rho}) or "
                f"admm.rho_growth ({acfg.rho_growth}), give ADMM more epochs, or set "
                "admm.rho: auto"
            )
            log.warning("%s", advice)
            s.warnings.append(advice)
        # Layers masked earlier (an init model's pruning) but under no rule keep theirs.
        with warnings.catch_warnings():  # said above, in the run's own words
            warnings.simplefilter("ignore", ADMMConvergenceWarning)
            s.masks = {**s.masks, **admm.harden()}
        params = dict(self.model.named_parameters())
        for key, keep in self._batchnorm_masks().items():
            params[key].detach().masked_fill_(~keep, 0.0)
        for n, w in s.quant_init.items():  # pruned weights stay pruned for retraining
            w.masked_fill_(~s.masks[n], 0.0)
        # statistics that fit the weights already: a rule that keeps everything changes none
        changed = bool(s.quant_init) or not all(bool(m.all()) for m in s.masks.values())
        recalibrated = self._recalibrate_batchnorm() if changed else {}
        h_loss, h_acc = self._evaluate()
        s.phases["harden"] = {
            "test_accuracy": h_acc,
            "test_loss": h_loss,
            "epochs": 0.0,
            "seconds": time.perf_counter() - t0,
            **recalibrated,
        }
        log.info("hardened: test acc %.4f (was %.4f before projection)", h_acc, test_acc)

    def _recalibrate_batchnorm(self) -> dict[str, float]:
        """BatchNorm statistics recomputed for the hardened weights (``admm.recalibrate_bn``
        training batches, from a generator of their own, so the run's batches stay as they
        were); returns the accuracy without it, for the report."""
        batches = self.steps[self.state.step].admm.recalibrate_bn
        if not batches or not batchnorm_layers(self.model):
            return {}
        before_loss, before_acc = self._evaluate()
        generator = torch.Generator().manual_seed(self.cfg.seed + 7919 * (self.state.step + 1))
        rows = self.dist.shard if self.dist.enabled else None
        source = self.data.train.train_batches(self.cfg.data.batch_size, generator, rows, None)
        used = recalibrate_batchnorm(
            self.model, (x for x, _, _ in source), batches, autocast=self._autocast
        )
        broadcast_buffers(self.model, self.dist)  # rank 0's statistics everywhere
        log.info(
            "BatchNorm statistics recomputed on %d training batches (test acc was %.4f "
            "right after the projection)",
            used,
            before_acc,
        )
        return {
            "recalibration_batches": float(used),
            "test_accuracy_before_recalibration": before_acc,
            "test_loss_before_recalibration": before_loss,
        }

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
            if admm is None:  # a resumed run that stopped exactly at the end of the phase
                raise RuntimeError("internal: ADMM state missing at hardening")
            self._harden(admm, test_acc)
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
        verify_model(self.model, self.constraints, s.masks)
        test_loss, test_acc = self._evaluate()
        summary = step_summary(
            index=s.step + 1,
            name=step.name or f"step{s.step + 1}",
            model=self.model,
            constraints=self.constraints,
            masks=s.masks,
            test=(test_loss, test_acc),
            phases=s.phases,
            allocation=s.plan_info,
            model_file=f"{STEPS_DIR}/{step.name}.safetensors",
        )
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
        for rec in reversed(self.state.history):
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
            self.folder.close_log()
            self.folder.unlock()

    def _run(self) -> dict[str, Any]:
        self._session_start = time.perf_counter()
        ckpt = self._setup()
        if ckpt is not None:
            self._restore(ckpt)
        s = self.state
        while s.phase != "done":
            # (a checkpoint from before steps existed has no plan: make it from the config)
            if s.phase in ("admm", "retrain") and s.planned_step != s.step:
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
                self.teachers.keep_initial(self.model)
            try:
                self._run_phase(s.phase, pcfg, ckpt if mid_phase else None)
            except (NonFiniteLossError, ADMMOverflowError) as e:
                raise type(e)(f"{e}; {self._after_divergence()}") from None
            ckpt = None
        return self._finalize()

    def _after_divergence(self) -> str:
        """What a user can do after a NaN or an overflow, given what the folder holds."""
        if (self.out / CHECKPOINT).is_file():
            return (
                "the last good checkpoint is kept: lower the learning rate (or rho, or "
                "rho_growth) and continue with --resume --allow-changes --set ..."
            )
        return (
            "it happened before the first checkpoint, so nothing was kept: lower the "
            "learning rate (or rho) and start the run again"
        )

    def _scan_split(self) -> Any:
        """Training images the sensitivity scan scores on (never the test set)."""
        target = self.steps[self.state.step].target
        n = target.samples if target is not None else 5000
        train = self.data.train
        return train.subset(n, self.cfg.seed) if n < len(train) else train

    def _plan_step(self) -> None:
        """Resolve the step's rules (and target) against the model as the step starts."""
        s = self.state
        step = self.steps[s.step]
        carried = s.rules
        s.support = {n: m.clone() for n, m in s.masks.items()}
        split = None

        def score() -> tuple[float, float]:
            nonlocal split
            split = split or self._scan_split()
            return evaluate(self.model, split, self.cfg.data.eval_batch_size)

        plan: StepPlan = plan_step(self.model, step, carried, s.masks, score)
        # Every rank plans (a scan takes as long everywhere, so nobody waits on a collective
        # meanwhile); rank 0's plan is the one used, so that ranks can never disagree.
        plan = broadcast_object(plan, self.dist)
        s.rules = plan.rules
        self.constraints = step_constraints(self.model, s.rules, s.support)
        s.plan_info = plan.allocation
        if plan.scan:
            s.plan_info = {
                **plan.allocation,
                "scan": {
                    n: [{"count": p.count, "loss": p.loss, "accuracy": p.accuracy} for p in pts]
                    for n, pts in plan.scan.items()
                },
            }
        s.planned_step = s.step
        if s.phase == "admm":
            s.quant_init = {}
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
            self.state.masks,
            model_name=self.cfg.model.name,
            model_args=inputs.recorded_model_args(self.cfg.model),
            extra={
                "dataset": self.cfg.data.dataset,
                "input_shape": list(self.data.input_shape),
                **inputs.recorded_data_options(self.cfg.data),
                "rules": {name: c.describe() for name, c in self.constraints.items()},
                "quantization": {
                    name: {"bits": q.bits, "per_channel": q.per_channel}
                    for name, c in self.constraints.items()
                    if (q := quantizer_of(c)) is not None
                },
            },
        )

    def _finalize(self) -> dict[str, Any]:
        s = self.state
        verify_model(self.model, self.constraints, s.masks)
        test_loss, test_acc = self._evaluate()
        model_path = self.out / MODEL_FILE
        self._save_model(model_path)
        report = build_report(
            cfg=self.cfg,
            model=self.model,
            constraints=self.constraints,
            masks=s.masks,
            final={"test_accuracy": test_acc, "test_loss": test_loss},
            phases=s.phases,
            history=s.history,
            device=str(self.device),
            runtime={
                "precision": self.precision,
                "threads": torch.get_num_threads(),
                "channels_last": self.cfg.runtime.channels_last,
            },
            model_file=model_path,
            wall_seconds=self._wall_seconds(),
            steps=s.steps,
            warnings=s.warnings,
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
