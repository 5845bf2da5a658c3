"""One CPU training at a time per machine: two share it by taking turns instead of collapsing.

Each torch process spins one thread per core; two of them training at once on the same cores
run 10-150 times slower each (docs/performance.md), where taking turns costs 2 times. So every
training on the CPU (a notebook's kernel, `mnist-lab train`, a sweep's worker, the benchmark)
holds a machine-wide slot: an advisory `flock` on a file in the user's runtime folder, which
the kernel releases however its holder exits. A second training waits, saying for whom.

A process that holds the slot passes it on to the processes it starts (the benchmark's two
sides take turns under its slot) through the environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
import tempfile
from pathlib import Path

from .errors import LabError

HELD = "MNIST_LAB_CPU_SLOT"  # set while this process, or the one that started it, holds the slot


def slot_path() -> Path:
    """The slot's file: in $XDG_RUNTIME_DIR, else a folder of this user's own in the temporary folder."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) / "mnist-lab" if runtime else Path(tempfile.gettempdir()) / f"mnist-lab-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():  # a shared /tmp: never another user's
        raise LabError(f"{folder} is not a folder of this user's own; remove it, or set XDG_RUNTIME_DIR")
    return folder / "cpu.lock"


@contextlib.contextmanager
def cpu_slot(label: str, announce=None):
    """Hold the machine's CPU slot while training `label` (e.g. "vit seed 0"); wait for it, once
    announced, while another training holds it."""
    if os.environ.get(HELD):
        yield  # held already: by this process (a nested call) or by the one that started it
        return
    descriptor = os.open(slot_path(), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "another training"
            (announce or _to_stderr)(f"waiting for the CPU: {holder}")
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # as long as that training takes; Ctrl-C ends the wait
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{label} is training in pid {os.getpid()}\n".encode(), 0)
        os.environ[HELD] = str(os.getpid())
        try:
            yield
        finally:
            os.environ.pop(HELD, None)
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)  # releases the lock


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
