"""One `mnist-lab run` or `report` at a time per profile.

Two runs writing the same profile's artifacts would interleave their outputs, and a report
built during a run would read a half-updated set. The lock is an advisory `flock` on
artifacts/<profile>/.lock, which the kernel releases when its holder exits, however it
exits: a dead process's lock is simply taken over. The holder's PID is written in the file
so that the refusal can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from .. import paths
from ..errors import LabError


@contextlib.contextmanager
def profile_lock(profile: str, command: str):
    """Hold the profile's lock for the duration of `command` (e.g. "run"); refuse if another process holds it."""
    directory = paths.profile_dir(profile)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
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
