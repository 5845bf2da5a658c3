"""Checkpoints resume only what this machine started.

`fit` resumes from the checkpoint file it is given and, at the final epoch, returns its rows as
the run's history: a checkpoint planted in the run cache (an archive once could carry one, and
anyone who can drop a file there still can) whose identity matches a spec would become a
verified run with made-up numbers. So each checkpoint a training here saves is tied to it: after
every epoch's save, `fit`'s `on_epoch_end` callback records the file's SHA-256 in this machine's
own folder, `artifacts/.local/checkpoints/`, which is outside every profile's folder and so never
written by `mnist-lab unpack` (it replaces `artifacts/<profile>/` only) nor carried by `pack`.
Before a training starts, a checkpoint whose hash is not the one recorded for its path is
ignored with one line, removed (the training would overwrite it after its first epoch anyway),
and the training starts over; it is never loaded at all.

Not protected (docs: the threat model): a local user who can write `artifacts/` and recompute the
hash. A training killed between a checkpoint's save and its hash's record (a few milliseconds
each epoch) starts over next time, which costs time, never a wrong number.

`mnist_lab/train.py` and `checkpoint.py` are part of every run's key (fingerprint.py): this lives
here so that none of them changes and no frozen result goes stale.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from .. import paths
from ..files import write_text

LOCAL = ".local"  # under artifacts/: this machine's own state, never a profile's (profiles.py: full, smoke)


def record_path(checkpoint: Path) -> Path:
    """Where the hash of the checkpoint at this path is kept: named by a hash of its absolute path,
    so that the two caches (train's artifacts/runs/, a profile's) never share one."""
    where = hashlib.sha256(str(Path(checkpoint).resolve()).encode()).hexdigest()[:32]
    return paths.ARTIFACTS / LOCAL / "checkpoints" / f"{where}.sha256"


def _digest(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1024**2), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def written_here(checkpoint: Path) -> bool:
    """Whether the file at `checkpoint` is the last one a training on this machine saved there."""
    try:
        recorded = record_path(checkpoint).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return len(recorded) == 64 and _digest(checkpoint) == recorded


def prepare(checkpoint: Path, printer: Callable[[str], None] = print) -> bool:
    """Before a training of this checkpoint's run: True if it resumes from it; a checkpoint not
    written here is ignored, with one line, and removed, so that the training starts over."""
    checkpoint = Path(checkpoint)
    if not (checkpoint.exists() or checkpoint.is_symlink()):
        return False
    if not checkpoint.is_symlink() and checkpoint.is_file() and written_here(checkpoint):
        return True
    printer(f"ignoring checkpoint {checkpoint}: not written by a training on this machine; training from the start")
    checkpoint.unlink(missing_ok=True)
    record_path(checkpoint).unlink(missing_ok=True)
    return False


def recording(checkpoint: Path, then: Callable[[dict], None] | None = None) -> Callable[[dict], None]:
    """fit's `on_epoch_end`: called once the epoch's checkpoint is saved, it records its hash (then
    calls `then` with the epoch's row)."""
    checkpoint = Path(checkpoint)

    def on_epoch_end(row: dict) -> None:
        digest = _digest(checkpoint)
        if digest:
            write_text(record_path(checkpoint), digest + "\n")
        if then:
            then(row)

    return on_epoch_end


def discard(checkpoint: Path) -> None:
    """Once the run is in the cache: the checkpoint and its record go."""
    Path(checkpoint).unlink(missing_ok=True)
    record_path(checkpoint).unlink(missing_ok=True)
