"""The run folder: which files a run keeps, who may write them, and its log.

A run writes into its folder only once it knows the folder is its own, and it holds an
exclusive lock on it (``.lock``, with the holder's process id) for as long as it runs, so two
runs can never write into one folder. A folder with a finished result (``report.json``) is
never written again. A resume continues the run as it was, or, with ``--allow-changes``,
with those changes it can really apply (``resume_changes``); the others are refused.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..formats.atomic import atomic_write_text
from ..recipe.schema import ConfigError, RunConfig, config_to_yaml, validate_config
from .checkpoint import CheckpointError, load_checkpoint

log = logging.getLogger("admmcompress")

CHECKPOINT = "checkpoint.pt"
CONFIG_COPY = "config.yaml"
MODEL_FILE = "model.safetensors"
TEACHER_FILE = "teacher.safetensors"  # the model before step 1, kept when a phase distills
LOG_FILE = "run.log"
STEPS_DIR = "steps"  # each finished step's model, <name>.safetensors
REPORT_FILE = "report.json"
LOCK_FILE = ".lock"


class RunFolderError(RuntimeError):
    """The output folder holds another run, or a resume does not match it."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": [1]}} -> {"a.b.0": 1}, so config differences can be named key by key."""
    flat: dict[str, Any] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, dict | list) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _as_now(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config as this version's schema reads it, so that a resume compares settings,
    not the layout of an older dump."""
    try:
        return validate_config(saved).model_dump(mode="json")
    except ConfigError:
        return saved


#: settings of a phase a resume can change in the middle of it (the optimizer and its
#: schedule restart from the new values, rho is set to the new value)
PHASE_CHANGEABLE = (
    "epochs",
    "optimizer.",
    "scheduler.",
    "distill",
    "rho",
    "rescale_dual",
    "recalibrate_bn",
)
#: data settings a resume can change: they do not change what the run learns from
DATA_CHANGEABLE = ("data.batch_size", "data.eval_batch_size", "data.workers", "data.verify")


def _step_of(key: str, cfg: RunConfig) -> tuple[int, str] | None:
    """(step index, key inside the step) for a key that belongs to a step, else None."""
    parts = key.split(".")
    if cfg.steps is not None:
        if parts[0] == "steps" and len(parts) > 1 and parts[1].isdigit():
            return int(parts[1]), ".".join(parts[2:])
        return None
    if parts[0] in ("admm", "retrain", "rules", "target"):
        return 0, key
    return None


def resume_changes(
    changed: list[str], cfg: RunConfig, ckpt: dict[str, Any], epoch_done: int
) -> tuple[list[str], list[str]]:
    """Split changed config keys into (applied, refused) for a run resumed from ``ckpt``.

    A change applies when the run still has that setting ahead of it: a later step, a later
    phase, or the optimizer, schedule, epochs, distillation or rho of the phase in progress.
    What the run has already used (the model, the data, the seed, the rules of a step that
    has started, a finished phase) cannot change without starting again.
    """
    phase, step = ckpt["phase"], int(ckpt.get("step", 0))
    applied, refused = [], []
    for key in changed:
        where = _step_of(key, cfg)
        if key == "name" or key.startswith(DATA_CHANGEABLE):
            applied.append(key)
        elif cfg.steps is not None and key.split(".")[0] in ("admm", "retrain"):
            applied.append(key)  # defaults of the steps: their effect shows in steps.<k>
        elif key.startswith("pretrain."):
            ok = phase == "pretrain" and key.removeprefix("pretrain.").startswith(PHASE_CHANGEABLE)
            (applied if ok else refused).append(key)
        elif where is None:
            refused.append(key)  # model, data, seed, init: what the run trains on
        else:
            k, inner = where
            section = inner.split(".")[0]
            if k > step or phase == "pretrain":
                applied.append(key)  # a step not begun yet
            elif k < step or phase == "done":
                refused.append(key)
            elif section in ("rules", "target", "name"):
                refused.append(key)  # the step in progress was planned with them
            elif section == "admm" and phase != "admm":
                refused.append(key)  # its ADMM phase is over
            elif section in (phase,) and inner.removeprefix(f"{section}.").startswith(
                PHASE_CHANGEABLE
            ):
                if inner.endswith(".epochs") and _new_epochs(cfg, k, section) < epoch_done:
                    refused.append(key)
                else:
                    applied.append(key)
            elif section == "retrain" and phase == "admm":
                applied.append(key)
            else:
                refused.append(key)
    return applied, refused


def _new_epochs(cfg: RunConfig, step: int, phase: str) -> int:
    return int(getattr(cfg.step_list()[step], phase).epochs)


class RunFolder:
    """One run's output folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._log_handler: logging.Handler | None = None
        self._lock_fd: int | None = None
        self.applied_changes: list[str] = []
        self.change_listing = ""

    # -- ownership ---------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the folder for this process (released at exit, even on a kill)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"{self.path} is in use by another admmcompress run (process {holder}); wait "
                "for it to finish, or choose another --out folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporary files of interrupted atomic writes (``.<name>.<random>.tmp``): only a
        kill leaves them, and the lock says no one is writing them now."""
        stale = [
            p
            for folder in (self.path, self.path / STEPS_DIR)
            if folder.is_dir()
            for p in folder.glob(".*.tmp")
            if p.is_file()
        ]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def claim(self, cfg: RunConfig, resume: bool, allow_changes: bool) -> dict[str, Any] | None:
        """Check that the run may use the folder; return the checkpoint to resume from."""
        ckpt_path = self.path / CHECKPOINT
        if (self.path / REPORT_FILE).exists():
            raise RunFolderError(
                f"{self.path} holds a finished run (report.json): its results are there, and a "
                "finished run is never written again; choose another --out folder"
                + (" (there is nothing to resume)" if resume else "")
            )
        if not ckpt_path.exists():
            if resume:
                if not (self.path / CONFIG_COPY).is_file():
                    raise RunFolderError(
                        f"nothing to resume in {self.path}: it holds no run (no {CHECKPOINT}, "
                        f"no {CONFIG_COPY}); run without --resume to start one"
                    )
                # a run killed before its first checkpoint: it starts again
                log.info("no checkpoint in %s: starting the run from the beginning", self.path)
            return None
        if not resume:
            raise RunFolderError(
                f"{self.path} already holds a run (checkpoint.pt); pass --resume to continue "
                "it, or choose another --out folder"
            )
        ckpt = load_checkpoint(ckpt_path)
        if not isinstance(ckpt.get("config"), str):
            raise CheckpointError(f"checkpoint {ckpt_path} holds no config")
        try:
            saved = flatten(_as_now(json.loads(ckpt["config"])))
        except (ValueError, TypeError, RecursionError) as e:
            raise CheckpointError(
                f"checkpoint {ckpt_path} holds an unreadable config: {str(e)[:200]}"
            ) from None
        current = flatten(cfg.model_dump(mode="json"))
        changed = sorted(
            k
            for k in set(saved) | set(current)
            if not k.startswith("runtime.") and saved.get(k) != current.get(k)
        )
        if changed:
            listing = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            if not allow_changes:
                raise RunFolderError(
                    f"cannot resume {self.path}: the config differs from the one the run "
                    f"started with ({listing}). Resume with the original config, or pass "
                    "--allow-changes to continue with the new values (for example a lower "
                    "learning rate after a NaN loss; the result is then not bit-identical "
                    "to an uninterrupted run)"
                )
            applied, refused = resume_changes(changed, cfg, ckpt, int(ckpt.get("epoch", 0)))
            if refused:
                raise RunFolderError(
                    f"cannot resume {self.path} with these changes: "
                    + ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in refused)
                    + ". The run has already used them (its model, data, seed, the rules of a "
                    "step that has started, a finished phase, or fewer epochs than it has "
                    "done); start a new run in another --out folder for them. A resume can "
                    "change what lies ahead: later steps and phases, and the epochs, "
                    "optimizer, schedule, distillation and rho of the phase in progress"
                )
            self.applied_changes = applied
            self.change_listing = listing
        return ckpt

    # -- writing -----------------------------------------------------------------------------
    def open_log(self) -> None:
        """Copy everything logged from now on into run.log."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._log_handler = logging.FileHandler(self.path / LOG_FILE)
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(self._log_handler)

    def close_log(self) -> None:
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def write_config(self, cfg: RunConfig) -> None:
        atomic_write_text(self.path / CONFIG_COPY, config_to_yaml(cfg))
