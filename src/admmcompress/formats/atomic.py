"""Atomic writes: a kill at any moment leaves either the old file or the complete new one,
and a full disk says so in one message instead of a writer's traceback."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
#: what torch.save and safetensors say when the OS refuses a write for lack of space
NO_SPACE_TEXT = ("No space left", "os error 28", "error code: 28", "errno 28")


class DiskFullError(OSError):
    """No space left to write a file: the previous version of the file is intact."""


def _no_space(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in NO_SPACE:
        return True
    return any(t in str(e) for t in NO_SPACE_TEXT)


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows (setting it to read
    it would briefly give any file another thread creates meanwhile the wrong mode)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """An existing file keeps its mode (a user's chmod 600 stays); a new one gets the mode
    any new file of this user gets (0644 under the usual umask), not mkstemp's private 0600."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename over ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        mode = _new_file_mode(path)
        write(tmp)
        with open(tmp, "rb+") as f:
            # after the writer: some (safetensors) replace the file they are given
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _no_space(e):
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on the disk to write {path} (its previous version, if any, is "
                "intact); free some space, then continue with the same command (and --resume "
                "for a run)",
            ) from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))
