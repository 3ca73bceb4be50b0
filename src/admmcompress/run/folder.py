"""The run folder: which files a run keeps, who may write them, and its log.

A run writes into its folder only once it knows the folder is its own: empty, or holding
this run's checkpoint when resuming with the same config (or ``--allow-changes``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..recipe.schema import ConfigError, RunConfig, config_to_yaml, validate_config
from .checkpoint import load_checkpoint

log = logging.getLogger("admmcompress")

CHECKPOINT = "checkpoint.pt"
CONFIG_COPY = "config.yaml"
MODEL_FILE = "model.safetensors"
TEACHER_FILE = "teacher.safetensors"  # the model before step 1, kept when a phase distills
LOG_FILE = "run.log"
STEPS_DIR = "steps"  # each finished step's model, <name>.safetensors
REPORT_FILE = "report.json"


class RunFolderError(RuntimeError):
    """The output folder holds another run, or a resume does not match it."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, so config differences can be named key by key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
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


class RunFolder:
    """One run's output folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._log_handler: logging.Handler | None = None

    def claim(self, cfg: RunConfig, resume: bool, allow_changes: bool) -> dict[str, Any] | None:
        """Check that the run may use the folder; return the checkpoint to resume from."""
        ckpt_path = self.path / CHECKPOINT
        if not ckpt_path.exists():
            if (self.path / REPORT_FILE).exists() and not resume:
                raise RunFolderError(
                    f"{self.path} already holds a finished run; choose another --out folder"
                )
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
        saved = flatten(_as_now(json.loads(ckpt["config"])))
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
            log.warning("resuming with a changed config: %s", listing)
        return ckpt

    def open_log(self) -> None:
        """Create the folder and copy everything logged from now on into run.log."""
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
        (self.path / CONFIG_COPY).write_text(config_to_yaml(cfg))
