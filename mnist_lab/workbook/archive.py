"""One profile's artifacts as one file: made where the GPU is, built into a PDF where TeX is.

`mnist-lab pack --profile full` writes artifacts/full.tar.gz: the runs, figures, tables,
macros, executed notebooks, provenance records and report files (results, not this machine's
state: no LaTeX working files, staging folder, checkpoint, lock or page), and MANIFEST.json,
the size and SHA-256 of every file in it.
`mnist-lab unpack FILE` takes an archive as untrusted input. It checks every header before
extracting anything: folders and regular files only (no links, devices, absolute paths or
`..`, no pax global header, at most MAX_DEPTH parts), with the names pack writes, within MAX_BYTES and MAX_MEMBERS, exactly the files of the
manifest. Then, under the profile's lock, it extracts into a fresh folder, checks each file's
hash and each provenance record's paths (inside the profile), and only then replaces the
profile's folder as a whole; any refusal leaves the previous one as it was. `mnist-lab report`
then builds from them, and its title page names the device the runs were trained on.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

from .. import paths, records
from ..errors import LabError
from ..files import atomic_dir, atomic_path, check_output, kind
from ..profiles import get_profile
from ..runs.directory import WEIGHTS
from .lock import profile_lock

MANIFEST = "MANIFEST.json"
# What pack carries from a profile's folder: what the runner, the pages and the report write there.
# Unpack accepts these names and MANIFEST.json at the top, nothing else.
# An archive carries results, not state: no checkpoint (a resumed one would become a run: see
# runs/checkpoints.py), no lock, and no page. The pages (html/, index.html) are left out and
# refused rather than kept and trusted: a page is a view of the executed notebooks, which the
# archive does carry, and `mnist-lab report` writes every page from them on this machine, cleaned
# (workbook/html.py), whereas a kept page would be skipped by the export when dated after its notebook.
PACKED = frozenset({"runs", "figures", "tables", "macros", "notebooks", "provenance",
                    "report.pdf", "report_info.tex", "recipes_table.tex", "provenance_table.tex"})
PAGES = frozenset({"html", "index.html"})
# What stays behind: this machine's working files (and the lock file older versions kept there),
# the run cache's lock, the pages, and what notebooks explored by hand wrote (scratch/).
LEFT_OUT = {".lock", ".staging", "latex", "latex.partial", "latex-failed.log", "scratch", ".index.lock", *PAGES}
# What a run cache (runs/) holds that an archive carries: its index of names, the side-by-side
# footprints, and each run's folder (runs.cache: KEY_LENGTH hex digits) with the files a run writes
# (runs.directory.RUN_FILES). Names starting with "." are this machine's state (checkpoints, the
# index's lock, a save cut short): pack leaves them out and unpack refuses them.
RUNS_FILES = frozenset({"index.json", "footprints.json"})
RUN_FOLDER = re.compile(r"[0-9a-f]{16}")
RUN_FILES = frozenset({"config.json", "history.csv", "metrics.json", "predictions.csv", "environment.json", "model.pt",
                       "provenance.json"})  # runs.directory.RUN_FILES, without importing torch for a name
MAX_BYTES = 2 * 1024**3  # what unpack extracts at most, as the headers declare it; a full profile is ~100 MB
MAX_MEMBERS = 100_000
MAX_MANIFEST_BYTES = 32 * 1024**2
MAX_READ = 16 * 1024**2  # the most tarfile may read at once: it reads a pax or long-name header whole
MAX_DEPTH = 32  # path parts in a member's name; pack writes at most 4 (smoke/runs/KEY/file)
MAX_SHOWN = 60  # characters of a member's name an error line quotes: the line stays one of at most 300
CHUNK = 1024**2


# ---- pack ---------------------------------------------------------------------------------------


def pack(profile: str, out: Path | None = None, weights: bool = True) -> Path:
    """Write the profile's artifacts and their manifest into one .tar.gz; returns its path.

    `weights=False` leaves every run's model.pt out: most of a GPU's archive, and nothing the
    report or the pages read. Such runs are whole for reading results; `mnist-lab run` trains one
    again only where a notebook loads its model (`runs.directory.WEIGHTS_LEFT_OUT`)."""
    get_profile(profile)
    directory = paths.profile_dir(profile)
    target = Path(out) if out else paths.ARTIFACTS / f"{profile}.tar.gz"
    check_output(target, "pack")  # the one check every writer of a path the user names shares
    with profile_lock(profile, "pack"):  # never a set that a run is halfway through rewriting
        entries = list(_entries(directory)) if directory.is_dir() else []
        if not weights:
            entries = [entry for entry in entries if not _is_weights(entry[0])]
        lacking = _lacking({relative for relative, _, info in entries if stat.S_ISREG(info.st_mode)})
        if lacking:
            raise LabError(f"nothing to pack: {directory} has {lacking}; run `mnist-lab run --profile {profile}`")
        with atomic_path(target) as temporary, tarfile.open(temporary, "w:gz") as archive:
            files = {relative: _add(archive, f"{profile}/{relative}", path, info) for relative, path, info in entries}
            _add_manifest(archive, profile, {relative: entry for relative, entry in files.items() if entry})
    return target


def _entries(directory: Path):
    """(relative path, path, lstat) of each folder and file pack carries, parents first."""
    for path in sorted(directory.iterdir()):
        if path.name in PACKED:
            yield from _tree(path, directory)


def _tree(path: Path, directory: Path):
    relative = path.relative_to(directory).as_posix()
    if relative.startswith("runs/") and path.name.startswith("."):
        return  # this machine's state, not a result (a checkpoint, a lock, a save cut short)
    info = path.lstat()
    if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):  # unpack would refuse it
        raise LabError(f"{path} is {kind(info.st_mode)}; an archive carries folders and regular files only: "
                       "replace it with a copy or remove it, and pack again")
    problem = _runs_problem(relative, stat.S_ISDIR(info.st_mode))
    if problem:  # unpack would refuse it
        raise LabError(f"{path} is {problem}: move it out of the run cache and pack again")
    yield relative, path, info
    if stat.S_ISDIR(info.st_mode):
        for child in sorted(path.iterdir()):
            yield from _tree(child, directory)


class _Hashing:
    """A file as tarfile reads it into the archive, hashed on the way: what is hashed is what is packed."""

    def __init__(self, source):
        self.source, self.digest = source, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        return data


def _add(archive: tarfile.TarFile, name: str, path: Path, info: os.stat_result) -> dict | None:
    """Add one folder or file (no owner names); for a file, its manifest entry."""
    member = tarfile.TarInfo(name)
    member.mtime, member.mode = int(info.st_mtime), stat.S_IMODE(info.st_mode)
    if stat.S_ISDIR(info.st_mode):
        member.type = tarfile.DIRTYPE
        archive.addfile(member)
        return None
    member.size = info.st_size
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as source:
        hashing = _Hashing(source)
        archive.addfile(member, hashing)
    return {"size": info.st_size, "sha256": hashing.digest.hexdigest()}


def _add_manifest(archive: tarfile.TarFile, profile: str, files: dict) -> None:
    data = (json.dumps({"format": 1, "profile": profile, "files": files}, indent=1, sort_keys=True) + "\n").encode()
    member = tarfile.TarInfo(f"{profile}/{MANIFEST}")
    member.size, member.mtime, member.mode = len(data), int(time.time()), 0o644
    archive.addfile(member, io.BytesIO(data))


def _runs_problem(relative: str, folder: bool) -> str | None:
    """What makes a path under runs/ something pack does not carry (None: it carries it)."""
    parts = relative.split("/")
    if parts[0] != "runs" or (len(parts) == 1 and folder):
        return None
    if len(parts) == 2 and ((folder and RUN_FOLDER.fullmatch(parts[1])) or (not folder and parts[1] in RUNS_FILES)):
        return None
    if len(parts) == 3 and not folder and RUN_FOLDER.fullmatch(parts[1]) and parts[2] in RUN_FILES:
        return None
    if parts[-1].startswith(".") and parts[-1].endswith(".checkpoint.pt"):
        return "a training checkpoint, this machine's state, which an archive never carries"
    return "not a run, a run's file or the run cache's index"


def _lacking(files: set[str]) -> str | None:
    """What a profile lacks to be worth carrying (pack and unpack agree on it), or None."""
    if not any(_is_record(relative) for relative in files):
        return "no provenance records (provenance/*.json)"
    if not any(relative.startswith("runs/") for relative in files):
        return "no training runs (runs/)"
    return None


def _is_weights(relative: str) -> bool:
    parts = relative.split("/")
    return len(parts) == 3 and parts[0] == "runs" and parts[2] == WEIGHTS


def _is_record(relative: str) -> bool:
    return relative.startswith("provenance/") and relative.count("/") == 1 and relative.endswith(".json")


# ---- unpack -------------------------------------------------------------------------------------


def unpack(archive_path: Path) -> str:
    """Put a packed profile back under artifacts/ once every check has passed; returns the profile's name."""
    archive_path = Path(archive_path)
    _check_source(archive_path)
    with _open(archive_path) as archive:
        profile, members, files = _survey(archive, archive_path)
        # The lock lives beside the profile's folder, so it holds across the swap at atomic_dir's end;
        # the previous folder stays until the new one is whole and checked.
        with profile_lock(profile, "unpack"), atomic_dir(paths.profile_dir(profile)) as staging:
            _extract(archive, archive_path, members, files, staging)
            _check_records(staging, archive_path, files)
    return profile


def _refused(archive_path: Path, problem: str) -> LabError:
    return LabError(f"cannot unpack {archive_path}: {problem}; nothing was changed")


def _check_source(archive_path: Path) -> None:
    try:
        mode = os.stat(archive_path).st_mode
    except OSError as error:
        raise _refused(archive_path, error.strerror or type(error).__name__) from None
    if not stat.S_ISREG(mode):
        raise _refused(archive_path, f"it is {kind(mode)}, not a file made by `mnist-lab pack`")


@contextmanager
def _reading(archive_path: Path):
    """What a damaged archive raises while it is read (gzip, zlib, tar, an end cut off) as one line."""
    try:
        yield
    except (OSError, EOFError, tarfile.TarError, zlib.error) as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise _refused(archive_path, f"it is damaged or not made by `mnist-lab pack` ({detail})") from None


class _Bounded:
    """The decompressed stream as tarfile reads it, refusing any one read over MAX_READ: tarfile reads
    a pax or long-name header whole, and a small archive could declare one of gigabytes."""

    def __init__(self, stream):
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        if size is None or not 0 <= size <= MAX_READ:
            raise tarfile.ReadError(f"a header or read of {size} bytes, over the {MAX_READ} accepted")
        return self.stream.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()


class _Forbidden(Exception):
    """A header unpack refuses before tarfile acts on it; the message is the reason."""


class _Checked(tarfile.TarInfo):
    """Each header as tarfile reads it, refusing a pax *global* header before its data is read.
    tarfile copies a global header's keywords into every later member's pax_headers: one of 11.6 MB
    (under MAX_READ) before N members costs N copies, gigabytes for a 2 MB archive. Pack never
    writes one (it writes GNU headers), so it is refused outright rather than bounded."""

    def _proc_member(self, tarfile_):  # tarfile's one dispatch on a header's type (3.10 to 3.13)
        if self.type == tarfile.XGLTYPE:
            raise _Forbidden(f"it holds a pax global header ({self.size} bytes), which `mnist-lab pack` "
                             "never writes")
        return super()._proc_member(tarfile_)


@contextmanager
def _forbidden(archive_path: Path):
    try:
        yield
    except _Forbidden as error:
        raise _refused(archive_path, str(error)) from None


@contextmanager
def _open(archive_path: Path):
    with _forbidden(archive_path), _reading(archive_path):
        stream = gzip.open(archive_path, "rb")  # decompressed here, so that every read goes through _Bounded
        try:
            archive = tarfile.open(fileobj=_Bounded(stream), mode="r:", tarinfo=_Checked)
        except BaseException:
            stream.close()
            raise
    with stream, archive:
        yield archive


def _survey(archive: tarfile.TarFile, archive_path: Path) -> tuple[str, list, dict]:
    """Check every header before anything is extracted: returns the profile, the members (with their
    paths inside it) and the manifest's files. Sizes are added up as the headers arrive, so an archive
    that declares too much is refused before the data after that header is even decompressed."""
    profile, members, files, seen, total = None, [], None, set(), 0
    with _forbidden(archive_path), _reading(archive_path):
        for member in archive:
            if len(seen) >= MAX_MEMBERS:
                raise _refused(archive_path, f"it holds over {MAX_MEMBERS} members, more than a profile")
            top, relative = _member_path(member, archive_path)
            profile = profile or top
            if top != profile:
                raise _refused(archive_path, f"it holds two profiles, {profile} and {top}")
            if relative in seen:
                raise _refused(archive_path, f"{_shown(member.name)} appears twice")
            seen.add(relative)
            total += member.size
            if total > MAX_BYTES:
                raise _refused(archive_path, f"its headers declare over {MAX_BYTES / 1024**3:.1f} GiB "
                                             f"(at least {total / 1024**3:.1f} GiB), more than a profile")
            problem = _runs_problem(relative, member.isdir())  # after the limits: they say more
            if problem:
                raise _refused(archive_path, f"{_shown(member.name)} is {problem}")
            if relative == MANIFEST:
                files = _read_manifest(archive, member, archive_path)
            elif relative:
                members.append((member, relative))
    if profile is None:
        raise _refused(archive_path, "it is empty")
    if files is None:
        raise _refused(archive_path, f"it has no {profile}/{MANIFEST}, so it is not an archive made by "
                                     "`mnist-lab pack` (or by an older one: pack it again)")
    _check_listing(members, files, archive_path, profile)
    return profile, members, files


def _member_path(member: tarfile.TarInfo, archive_path: Path) -> tuple[str, str]:
    """(profile, path inside it) of a member: a plain relative path, a folder or a regular file, a known name."""
    name, parts = member.name, member.name.split("/")
    if len(parts) > MAX_DEPTH:  # before anything makes its folders or quotes it whole
        raise _refused(archive_path, f"the member {_shown(name)} is {len(parts)} parts deep, over the "
                                     f"{MAX_DEPTH} accepted")
    if "\0" in name or any(part in ("", ".", "..") for part in parts):  # an absolute path starts with ""
        raise _refused(archive_path, f"the member {_shown(name)} is not a plain relative path")
    regular = member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.issparse()
    if not (member.isdir() or regular):
        raise _refused(archive_path, f"{_shown(name)} is {_member_kind(member)}; "
                                     "unpack accepts folders and regular files only")
    if member.size < 0:
        raise _refused(archive_path, f"{_shown(name)} declares a negative size")
    try:
        get_profile(parts[0])
    except LabError:
        raise _refused(archive_path, f"its top folder {parts[0]!r} is not a profile") from None
    relative = "/".join(parts[1:])
    if relative and parts[1] in PAGES:
        raise _refused(archive_path, f"{_shown(name)} is a page: pages are written by `mnist-lab report` from the "
                                     "notebooks, never carried (pack it again with this version)")
    known = parts[1] in PACKED if relative else member.isdir()
    if not (known or (relative == MANIFEST and regular)):
        raise _refused(archive_path, f"{_shown(name)} is not something `mnist-lab pack` writes "
                                     f"(under {parts[0]}/ it writes {', '.join(sorted(PACKED))}, {MANIFEST})")
    return parts[0], relative


def _shown(name: str) -> str:
    """A member's name as an error line quotes it: repr (no control characters reach the terminal),
    cut and marked when long."""
    shown = repr(name)
    return shown if len(shown) <= MAX_SHOWN else f"{shown[:MAX_SHOWN]}… ({len(name)} characters)"


def _member_kind(member: tarfile.TarInfo) -> str:
    kinds = (("issym", "a symbolic link"), ("islnk", "a hard link"), ("ischr", "a character device"),
             ("isblk", "a block device"), ("isfifo", "a fifo"), ("issparse", "a sparse file"))
    return next((kind for test, kind in kinds if getattr(member, test)()), f"a member of tar type {member.type!r}")


def _read_manifest(archive: tarfile.TarFile, member: tarfile.TarInfo, archive_path: Path) -> dict:
    """The manifest's {path: {"size", "sha256"}}, checked for shape (its paths are matched to the members)."""
    if member.size > MAX_MANIFEST_BYTES:
        raise _refused(archive_path, f"its {MANIFEST} declares {member.size} bytes, more than a manifest")
    source = archive.extractfile(member)
    data = b"".join(iter(lambda: source.read(CHUNK), b""))
    try:
        return records.parse(data, records.ARCHIVE_MANIFEST)["files"]
    except records.Unreadable as error:
        raise _refused(archive_path, f"its {MANIFEST} is not a manifest written by `mnist-lab pack` ({error})") from None


def _check_listing(members: list, files: dict, archive_path: Path, profile: str) -> None:
    """The archive's files are exactly the manifest's, of its sizes, none where a folder must be,
    and a profile worth installing."""
    present = {relative: member for member, relative in members if not member.isdir()}
    for names, where in ((sorted(set(files) - set(present)), "is in its manifest but not in the archive"),
                         (sorted(set(present) - set(files)), "is in the archive but not in its manifest")):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise _refused(archive_path, f"{profile}/{names[0]} {where}{more}")
    for relative, member in present.items():
        if member.size != files[relative]["size"]:
            raise _refused(archive_path, f"{member.name} holds {member.size} bytes, its manifest says "
                                         f"{files[relative]['size']}")
    for _, relative in members:
        parent = relative.rpartition("/")[0]
        while parent:
            if parent in present:
                raise _refused(archive_path, f"{profile}/{relative} is inside {profile}/{parent}, which is a file")
            parent = parent.rpartition("/")[0]
    lacking = _lacking(set(present))
    if lacking:
        raise _refused(archive_path, f"it has {lacking}, so it is no profile that `mnist-lab run` made")


def _extract(archive: tarfile.TarFile, archive_path: Path, members: list, files: dict, staging: Path) -> None:
    """Write each folder and file into the fresh staging folder, each file checked against the manifest.
    The paths were checked and no link can exist there, so nothing lands outside it."""
    for member, relative in members:
        target = staging / relative
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)  # it may exist already, made as a parent
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = _copy(archive, member, target, archive_path)
        if digest != files[relative]["sha256"]:
            raise _refused(archive_path, f"{member.name} does not match its manifest (SHA-256 {digest[:12]}…, "
                                         f"expected {files[relative]['sha256'][:12]}…): altered or corrupt")
        if 0 <= member.mtime < 2**33:  # the report dates its runs, and the pages are rebuilt, by mtime
            os.utime(target, (member.mtime, member.mtime))


def _copy(archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path, archive_path: Path) -> str:
    """Write one member to a new file (never through a link); returns its SHA-256."""
    digest = hashlib.sha256()
    with _reading(archive_path):
        source = archive.extractfile(member)
    with source, os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666), "wb") as out:
        while True:
            with _reading(archive_path):  # only the reads: a full disk is the system's own error
                chunk = source.read(CHUNK)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
            out.write(chunk)


def _check_records(staging: Path, archive_path: Path, files: dict) -> None:
    """Every path a provenance record names stays inside the profile (outputs, runs) or the project
    (sources): a later run deletes the outputs a record lists, and reads what it names."""
    for relative in sorted(filter(_is_record, files)):
        record, problem = records.inspect(staging / relative, records.NOTEBOOK_RECORD)  # as the runner reads it
        problem = problem or ("it is missing" if record is None else None)
        if problem:
            raise _refused(archive_path, f"{relative} is not a provenance record ({problem})")
        for field, folder, where in (("outputs", staging, "profile"), ("runs", staging, "profile"),
                                     ("sources", paths.ROOT, "project")):
            for key in record[field]:
                try:
                    paths.inside(folder, key, field)
                except LabError:
                    raise _refused(archive_path, f"{relative} lists {key!r} in its {field}, "
                                                 f"which is not inside the {where}") from None
