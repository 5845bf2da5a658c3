"""One `mnist-lab run`, `report`, `pack` or `unpack` at a time per profile.

Two runs writing the same profile's artifacts would interleave their outputs, and a report
built during a run would read a half-updated set. The lock is an advisory `flock` on
artifacts/.<profile>.lock, which the kernel releases when its holder exits, however it
exits: a dead process's lock is simply taken over. The holder's PID is written in the file
so that the refusal can name it.

The file lives beside the profile's folder, not in it: `unpack` replaces that folder as a
whole, and a lock inside it would be swapped away from under its holder. It is opened
without following links and must be a regular file of its own: the lock truncates it, and
that must never reach a file the project did not make.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

from .. import paths
from ..errors import LabError, printable


def lock_path(profile: str) -> Path:
    return paths.ARTIFACTS / f".{profile}.lock"


def _open(path: Path) -> int:
    """The lock file's descriptor: created if missing, refused if it is a link, a hard link or not a file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK  # NONBLOCK: a fifo never waits
    try:
        descriptor = os.open(path, flags, 0o666)
    except OSError:
        if path.is_symlink():
            raise LabError(f"the lock file {path} is a symbolic link; refused: remove it and try again") from None
        if not os.path.lexists(path) or path.is_file():
            raise  # the system's own words: no permission, a read-only disk
        raise _not_its_own(path) from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(descriptor)
        raise _not_its_own(path)
    return descriptor


def _not_its_own(path: Path) -> LabError:
    return LabError(f"the lock file {path} is not a regular file of its own (a folder, device, fifo or "
                    "hard link); refused: remove it and try again")


@contextlib.contextmanager
def profile_lock(profile: str, command: str):
    """Hold the profile's lock for the duration of `command` (e.g. "run"); refuse if another process holds it."""
    path = lock_path(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(_open(path), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = printable(handle.read(200).strip() or "another process", 100)  # a file anyone may write
            raise LabError(f"the {profile} artifacts are in use by `mnist-lab {holder}`; "
                           "wait for it to finish, or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{command} (pid {os.getpid()})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
