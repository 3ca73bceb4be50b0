"""Exit codes, and the one message every foreseeable error becomes.

| code | meaning |
| ---: | --- |
| 0 | done |
| 1 | a bug: an error this tool did not foresee (the traceback is printed for a report) |
| 2 | bad input: a config, a file, a folder, an option or a model that cannot work |
| 3 | training stopped: a loss or rho became NaN or infinite (the last checkpoint is kept) |
| 4 | the result breaks a constraint: it was not saved |
| 5 | the machine refused: the disk is full, a file cannot be written, memory ran out |
| 130 | interrupted (Ctrl-C); the last finished epoch is checkpointed |
"""

from __future__ import annotations

OK = 0
BAD_INPUT = 2
TRAINING_STOPPED = 3
CONSTRAINT_BROKEN = 4
MACHINE = 5
INTERRUPTED = 130


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (from the OS, torch.save or safetensors) means the disk is full."""
    from ..formats.atomic import NO_SPACE, NO_SPACE_TEXT

    if isinstance(e, OSError) and e.errno in NO_SPACE:
        return True
    return any(marker in str(e) for marker in NO_SPACE_TEXT)


def classify(e: BaseException) -> tuple[int, str]:
    """The exit code and the message for an error a command raised."""
    # imported here: these modules import torch, which a quick --help must not pay for
    from ..constraints import ConstraintError
    from ..core.admm import ADMMOverflowError
    from ..core.selection import SelectionError
    from ..core.verify import ConstraintViolationError
    from ..data import DataError
    from ..formats import ModelFileError
    from ..formats.atomic import DiskFullError
    from ..models import ModelSourceError
    from ..recipe.schema import ConfigError
    from ..run.checkpoint import CheckpointError
    from ..run.folder import RunFolderError
    from ..train.loop import NonFiniteLossError

    if isinstance(e, KeyboardInterrupt):
        return INTERRUPTED, (
            "admmcompress: interrupted; the last completed epoch is checkpointed, continue "
            "with the same command and --resume"
        )
    if isinstance(e, NonFiniteLossError | ADMMOverflowError):
        return TRAINING_STOPPED, f"admmcompress: training stopped: {e}"
    if isinstance(e, ConstraintViolationError):
        return CONSTRAINT_BROKEN, f"admmcompress: {e}"
    if isinstance(e, DiskFullError) or is_disk_full(e):
        return MACHINE, f"admmcompress: error: {e if isinstance(e, DiskFullError) else _full(e)}"
    if isinstance(e, MemoryError):
        return MACHINE, (
            "admmcompress: error: out of memory; use a smaller batch size, subset or model, "
            "or a machine with more memory"
        )
    user = (
        ConfigError,
        SelectionError,
        ConstraintError,
        DataError,
        RunFolderError,
        CheckpointError,
        ModelFileError,
        ModelSourceError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        ValueError,
    )
    if isinstance(e, user):
        prefix = "config error: " if isinstance(e, SelectionError) else ""
        return BAD_INPUT, f"admmcompress: error: {prefix}{_one_paragraph(str(e))}"
    if isinstance(e, PermissionError):
        return MACHINE, f"admmcompress: error: permission denied: {e.filename or e}"
    if isinstance(e, OSError):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return MACHINE, f"admmcompress: error: {e.strerror or e}{where}"
    raise e  # unforeseen: a bug; the traceback says where


def _full(e: BaseException) -> str:
    return (
        f"the disk is full ({type(e).__name__}); nothing finished was overwritten: free some "
        "space and continue with the same command and --resume"
    )


def _one_paragraph(text: str, limit: int = 4000) -> str:
    """A message bounded in size: a hostile file must not make it huge."""
    return text if len(text) <= limit else text[:limit] + " [...]"
