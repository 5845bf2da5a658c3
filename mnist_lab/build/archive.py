"""One profile's artifacts as one file: made where the GPU is, built into a PDF where TeX is.

`mnist-lab pack --profile full` writes artifacts/full.tar.gz: the runs, figures, tables,
macros, executed notebooks and provenance records (not LaTeX's working files, the lock or a
staging folder). `mnist-lab unpack FILE` puts them back under artifacts/, replacing that
profile's folder as a whole; `mnist-lab report` then builds from them, and its title page
names the device the runs were trained on.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from .. import paths
from ..errors import LabError
from ..files import atomic_dir, atomic_path
from ..profiles import get_profile

LEFT_OUT = {".lock", ".staging", "latex", "latex.partial"}


def pack(profile: str, out: Path | None = None) -> Path:
    get_profile(profile)
    directory = paths.profile_dir(profile)
    if not (directory / "provenance").is_dir():
        raise LabError(f"nothing to pack: {directory} has no provenance records; run `mnist-lab run --profile {profile}`")
    target = Path(out) if out else paths.ARTIFACTS / f"{profile}.tar.gz"
    with atomic_path(target) as temporary, tarfile.open(temporary, "w:gz") as archive:
        for path in sorted(directory.iterdir()):
            if path.name not in LEFT_OUT:
                archive.add(path, arcname=f"{profile}/{path.name}")
    return target


def unpack(archive_path: Path) -> str:
    """Put a packed profile back under artifacts/; returns the profile's name."""
    try:
        archive = tarfile.open(archive_path, "r:gz")
    except (OSError, tarfile.TarError) as error:
        raise LabError(f"{archive_path} is not an archive made by `mnist-lab pack` ({error})") from None
    with archive:
        profiles = {Path(member.name).parts[0] for member in archive.getmembers()}
        if len(profiles) != 1:
            raise LabError(f"{archive_path} holds {len(profiles)} top-level folders, not one profile")
        profile = profiles.pop()
        get_profile(profile)
        with atomic_dir(paths.profile_dir(profile)) as staging:  # the old folder stays until this is whole
            archive.extractall(staging, filter="data")  # no links out of it, no absolute paths
            inner = staging / profile
            for path in inner.iterdir():
                path.replace(staging / path.name)
            inner.rmdir()
    return profile
