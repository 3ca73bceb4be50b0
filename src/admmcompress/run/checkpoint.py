"""Atomic, safely loadable checkpoints: a kill at any moment leaves the last good one intact."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..formats.atomic import atomic_write
from ..models.weights import check_torch_file

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupt or from an incompatible run."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load with ``weights_only=True``: a checkpoint file can never run code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        check_torch_file(path, "checkpoint")
    except ValueError as e:
        raise CheckpointError(
            f"{e}; it is truncated, corrupt or not a checkpoint of this tool. Start the run "
            "again in a new --out folder"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        # torch's own text (e.g. advice to disable weights_only) does not help here.
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}): it is truncated, corrupt "
            "or not a checkpoint of this tool. Start the run again in a new --out folder"
        ) from None
    found = state.get("format") if isinstance(state, dict) else None
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {found!r}, this version reads format {CHECKPOINT_FORMAT}"
        )
    return state


PHASES = ("pretrain", "admm", "retrain", "done")


def check_structure(ckpt: dict[str, Any], path: Path, steps: int) -> None:
    """Raise ``CheckpointError`` unless ``ckpt`` has every field a resume reads, each of
    the right kind: a file that loads safely can still be the wrong shape inside."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {path} cannot be resumed: {why}. It is damaged or not from this "
            "tool; start the run again in another --out folder"
        )

    def tensors(key: str, dtype: torch.dtype | None = None, required: bool = True) -> None:
        value = ckpt.get(key)
        if value is None and not required:
            return
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
        ):
            raise bad(f"{key!r} is not a mapping of names to tensors")
        if dtype is not None and any(v.dtype != dtype for v in value.values()):
            raise bad(f"{key!r} holds tensors that are not {dtype}")

    phase, step, epoch = ckpt.get("phase"), ckpt.get("step", 0), ckpt.get("epoch")
    if phase not in PHASES:
        raise bad(f"its phase is {phase!r}, not one of {', '.join(PHASES)}")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise bad(f"its epoch is {epoch!r}")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= steps:
        raise bad(f"its step is {step!r}, this config has {steps} step(s)")
    if (phase == "done") != (step == steps):
        raise bad(f"phase {phase!r} at step {step} of {steps}")
    for key, kind in (("history", list), ("phases", dict), ("seconds", dict), ("config", str)):
        if not isinstance(ckpt.get(key), kind):
            raise bad(f"{key!r} is not a {kind.__name__}")
    if not all(isinstance(v, int | float) for v in ckpt["seconds"].values()):
        raise bad("'seconds' holds something other than numbers")
    # the records a report is written from at the end of the run: a damaged one must stop
    # the resume now, not a finished run at its last line
    if not _phase_records(ckpt["phases"]):
        raise bad("'phases' holds something other than numbers per phase")
    for entry in ckpt["history"]:
        if not _flat_record(entry):
            raise bad("'history' holds an epoch record that is not names and numbers")
    for entry in ckpt.get("steps", []):
        if not _flat_record(entry):
            raise bad("'steps' holds a step record that is not names and numbers")
    for key, kind in (("steps", list), ("rules", dict), ("plan", dict), ("warnings", list)):
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise bad(f"{key!r} is not a {kind.__name__}")
    planned = ckpt.get("planned_step")
    if planned is not None and (
        not isinstance(planned, int) or isinstance(planned, bool) or not 0 <= planned <= steps
    ):
        raise bad(f"its planned step is {planned!r}")
    if not all(isinstance(w, str) for w in ckpt.get("warnings", [])):
        raise bad("'warnings' holds something other than text")
    if not all(
        isinstance(k, str) and isinstance(r, dict) for k, r in ckpt.get("rules", {}).items()
    ):
        raise bad("'rules' is not a mapping of layer names to rules")
    tensors("model")
    tensors("masks", torch.bool)
    tensors("support", torch.bool, required=False)
    tensors("quant_init", required=False)
    rng = ckpt.get("rng")
    if not isinstance(rng, dict):
        raise bad("'rng' is missing")
    states = [rng.get("torch"), rng.get("data"), *(rng.get("torch_per_rank") or [])]
    size = torch.get_rng_state().numel()
    if not all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.numel() == size for t in states
    ):
        raise bad(f"its random generator states are not {size}-byte tensors")
    if not isinstance(rng.get("cuda", []), list):
        raise bad("its CUDA generator states are not a list")
    for key in ("optimizer", "scheduler", "admm", "quant"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise bad(f"{key!r} is not a mapping")


def _number_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _scalar(v: Any) -> bool:
    return _number_or_none(v) or isinstance(v, str | bool)


def _table(value: Any, cell: Callable[[Any], bool]) -> bool:
    """``{row name: {column: cell}}``, as the report's tables read it."""
    return isinstance(value, dict) and all(
        isinstance(k, str)
        and isinstance(r, dict)
        and all(isinstance(f, str) and cell(v) for f, v in r.items())
        for k, r in value.items()
    )


def _phase_records(value: Any) -> bool:
    """``{phase: {field: number}}``."""
    return _table(value, _number_or_none)


#: the tables a history or step record may hold, and what their cells are
_TABLES: dict[str, Callable[[Any], bool]] = {
    "phases": _number_or_none,  # per phase: accuracy, loss, epochs, seconds
    "residuals": _number_or_none,  # per layer: primal, dual, rho
    "layers": _scalar,  # per layer: non-zeros, bits, the rule in words
}


def _flat_record(value: Any) -> bool:
    """One history or step record: names, numbers and words, its known tables, and an
    ``allocation`` mapping (how a target rate was split)."""
    if not isinstance(value, dict):
        return False
    for k, v in value.items():
        if not isinstance(k, str):
            return False
        if k in _TABLES:
            if not _table(v, _TABLES[k]):
                return False
        elif k == "allocation":
            if not isinstance(v, dict):
                return False
        elif not _scalar(v):
            return False
    return True


def check_like(loaded: Any, fresh: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``loaded`` has the structure of ``fresh`` (same keys,
    lengths, kinds of value, tensor shapes and dtypes): optimizers and schedules accept any
    state dict and fail only later, mid-training, on a damaged one."""
    if isinstance(fresh, dict):
        if not isinstance(loaded, dict) or set(loaded) != set(fresh):
            raise ValueError(f"{where} does not have the fields {sorted(map(str, fresh))}")
        for k in fresh:
            check_like(loaded[k], fresh[k], f"{where}.{k}")
    elif isinstance(fresh, list | tuple):
        if not isinstance(loaded, list | tuple) or len(loaded) != len(fresh):
            raise ValueError(f"{where} is not a list of {len(fresh)}")
        for i, (a, b) in enumerate(zip(loaded, fresh, strict=True)):
            check_like(a, b, f"{where}[{i}]")
    elif isinstance(fresh, torch.Tensor):
        if not isinstance(loaded, torch.Tensor) or loaded.shape != fresh.shape:
            raise ValueError(f"{where} is not a tensor of shape {tuple(fresh.shape)}")
        if loaded.dtype != fresh.dtype:
            raise ValueError(f"{where} is {loaded.dtype}, not {fresh.dtype}")
    elif isinstance(fresh, bool) or fresh is None or isinstance(fresh, str):
        if type(loaded) is not type(fresh):
            raise ValueError(f"{where} is {type(loaded).__name__}, not {type(fresh).__name__}")
    elif isinstance(fresh, int | float):
        if isinstance(loaded, bool) or not isinstance(loaded, int | float):
            raise ValueError(f"{where} is {type(loaded).__name__}, not a number")
    elif type(loaded) is not type(fresh):
        raise ValueError(f"{where} is {type(loaded).__name__}, not {type(fresh).__name__}")


def check_optimizer_state(loaded: Any, optimizer: torch.optim.Optimizer) -> None:
    """``check_like`` for an optimizer: its groups as a fresh one has them, and each
    parameter's state (momentum, Adam moments) tensors of the parameter's shape or scalars."""
    fresh = optimizer.state_dict()
    if not isinstance(loaded, dict) or set(loaded) != {"state", "param_groups"}:
        raise ValueError("the optimizer state does not have 'state' and 'param_groups'")
    check_like(loaded["param_groups"], fresh["param_groups"], "optimizer.param_groups")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = loaded["state"]
    if not isinstance(state, dict):
        raise ValueError("the optimizer's per-parameter state is not a mapping")
    for index, entry in state.items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise ValueError(f"the optimizer holds state for parameter {index!r} of {len(params)}")
        if not isinstance(entry, dict):
            raise ValueError(f"the optimizer state of parameter {index} is not a mapping")
        shape = params[index].shape
        for key, value in entry.items():
            # a step count may be a number or a scalar tensor; every other entry (momentum,
            # Adam's moments) has the parameter's shape, or is None (SGD before momentum)
            scalar = key == "step"
            ok = scalar and isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok or (value is None and not scalar)
            ok = ok or (
                isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and (value.shape == shape or (scalar and value.dim() == 0))
            )
            if not ok:
                want = "a number or a scalar tensor" if scalar else f"of shape {tuple(shape)}"
                raise ValueError(f"the optimizer's {key!r} of parameter {index} is not {want}")
