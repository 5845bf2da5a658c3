"""Atomic writes: a reader sees the old file or the new one, never half of one.

Each writer writes a temporary file beside the target and renames it into place;
`os.replace` is atomic on POSIX and Windows, so a run killed mid-write (Ctrl-C, an
exception, a dead kernel) leaves the previous artifact intact.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path to write; on success it replaces `target`, on failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp" + target.suffix)
    os.close(fd)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; the file gets what a new file would
    try:
        yield Path(temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as temporary:
        temporary.write_text(text)


def write_json(target: str | Path, data) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(target: str | Path):
    """Yield an empty staging folder; on success it takes the place of `target` as a whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        if target.exists():
            # Two renames, not one: a folder cannot be renamed over a non-empty one.
            retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, retired / "previous")
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def kind(mode: int) -> str:
    """What a file of this st_mode is, as an error line names it."""
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check_output(target: str | Path, writer: str) -> None:
    """Every writer of a file the user names (`pack --out`, `bench --out`) writes a regular file or a
    new path, checked before any work: it renames its result over the target (atomic_path), which
    would replace a device node (/dev/null, as root), a fifo or a link instead of writing to it, and
    fail on a folder, late."""
    from .errors import LabError

    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise LabError(f"{target} is {kind(mode)}; {writer} writes only to a regular file or a new path: name one")
