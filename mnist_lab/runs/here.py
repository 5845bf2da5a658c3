"""Training one run in this process into a run cache: the one way a run is trained here, whether
the runner, `mnist-lab train`, a notebook explored by hand or a side-by-side worker asks."""

from __future__ import annotations

from .planned import Planned


def train_here(cache, run: Planned, data, printer, prefix: str = "", progress: bool = False, bar=None,
               announce=None):
    """Train one run in this process and put it in the cache; one line per epoch to `printer`.
    An interrupted training resumes from its last completed epoch the next time."""
    from ..train import fit

    spec = run.spec
    epochs = spec.recipe.epochs
    images = spec.limit_train or len(data.train)
    seconds: list[float] = []

    def epoch_line(row: dict) -> None:
        seconds.append(row["seconds"])
        left = sum(seconds) / len(seconds) * (epochs - row["epoch"])
        printer(f"{prefix}{run.name}: epoch {row['epoch']}/{epochs}, {images / row['train_seconds']:,.0f} images/s, "
                f"loss {row['train_loss']:.4f}, test accuracy {row['test_accuracy']:.2f}%, {human_seconds(left)} left")

    from . import checkpoints

    checkpoint = cache.checkpoint(spec)
    if checkpoints.prepare(checkpoint, printer):  # one resumed only if a training here saved it
        printer(f"{prefix}{run.name}: found {checkpoint}: resuming after its last completed epoch")
    options = {"bar": bar} if bar else {}
    result = fit(spec, label=run.name, data=data, progress=progress, checkpoint=checkpoint,
                 on_epoch_end=checkpoints.recording(checkpoint, epoch_line), announce=announce, **options)
    stored = cache.put(result)
    checkpoints.discard(checkpoint)
    return stored


def human_seconds(seconds: float) -> str:
    """4 s, 3 min 04 s, 1 h 02 min: how long, as people say it."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
