"""MNIST as tensors: read the four IDX files once, verify them, keep them in memory.

The usual `torchvision.datasets.MNIST` + `DataLoader` pattern turns every image into
a PIL image and back, one Python call per sample; on MNIST that overhead is most of
the training time. Here the whole set is two uint8 tensors (47 MB for training)
that the trainer moves to its device once and indexes with a random permutation.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import paths
from .errors import LabError

# The published MD5 of each *uncompressed* file (also in data/MNIST/MD5SUMS).
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

# The usual MNIST statistics (pixel values scaled to [0, 1]).
MEAN, STD = 0.1307, 0.3081


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        """The first `n` samples (all of them for None): the small subsets of tests and smoke runs."""
        if n is None:
            return self
        if n <= 0:
            raise LabError(f"a subset size must be positive, got {n}")
        if n > len(self):
            raise LabError(f"a subset of {n:,} images was asked for, but there are only {len(self):,}")
        return Split(self.images[:n], self.labels[:n])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Mnist:
    train: Split
    test: Split


def default_root() -> Path:
    """`$MNIST_LAB_DATA` if set, else the copy the repository carries."""
    return Path(os.environ.get("MNIST_LAB_DATA") or paths.DATA)


def raw_dir(root: Path) -> Path:
    # torchvision's layout, so that its download lands where we look.
    return Path(root) / "MNIST" / "raw"


def load_mnist(root: str | Path | None = None, *, download: bool = False) -> Mnist:
    """Read and verify the four MNIST files under `root`/MNIST/raw (plain or .gz).

    With `download=True`, files that are absent are fetched by torchvision.
    """
    root = Path(root) if root is not None else default_root()
    if download and _missing(root):
        _download(root)
    missing = _missing(root)
    if missing:
        raise LabError(
            f"MNIST not found in {raw_dir(root)}: missing {', '.join(missing)} "
            f"(plain or .gz; expected {', '.join(MD5)}). Point --data-root or MNIST_LAB_DATA "
            "at a folder holding MNIST/raw/, or pass --download to fetch them."
        )
    arrays = {name: _parse_idx(read_verified(root, name)) for name in MD5}
    return Mnist(
        train=_split(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]),
        test=_split(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]),
    )


def pixels(images: torch.Tensor, layout=torch.contiguous_format) -> torch.Tensor:
    """uint8 (B, 28, 28) to float (B, 1, 28, 28) pixels in [0, 1], in the given memory layout."""
    return images.unsqueeze(1).float().div_(255).contiguous(memory_format=layout)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] to the standardized values every model is trained on."""
    return (images - MEAN) / STD


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    if len(images) != len(labels):
        raise LabError(f"MNIST images and labels disagree in length ({len(images)} vs {len(labels)})")
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def find_file(root: Path, name: str) -> Path | None:
    for candidate in (raw_dir(root) / name, raw_dir(root) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing(root: Path) -> list[str]:
    return [name for name in MD5 if find_file(root, name) is None]


def read_verified(root: Path, name: str) -> bytes:
    path = find_file(root, name)
    fix = "restore it (git checkout -- data/, or delete it and pass --download)"
    try:
        content = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise LabError(f"{path} cannot be decompressed ({error}): the file is corrupt or truncated; {fix}") from None
    digest = hashlib.md5(content).hexdigest()
    if digest != MD5[name]:
        raise LabError(
            f"{path} has MD5 {digest}, not the published {MD5[name]}: the file is corrupt or truncated; {fix}"
        )
    return content


def _parse_idx(content: bytes) -> np.ndarray:
    # IDX: two zero bytes, a type code (0x08 = uint8), the number of dimensions,
    # then each dimension as a big-endian int32, then the data.
    ndim = content[3]
    shape = tuple(int(d) for d in np.frombuffer(content, ">i4", count=ndim, offset=4))
    return np.frombuffer(content, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _download(root: Path) -> None:
    from torchvision.datasets import MNIST

    try:
        for train in (True, False):
            MNIST(root, train=train, download=True)
    except Exception as error:  # network errors come in many types
        raise LabError(f"downloading MNIST into {raw_dir(root)} failed: {error}") from None
