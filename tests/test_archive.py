"""`mnist-lab pack` / `unpack` against hostile archives: one test per case of the security review.

Every archive here is a real .tar.gz crafted with tarfile, most of them from a real packed
profile (the tiny built project) with one thing changed, and with a manifest recomputed over
the result where an attacker could do so too. Each refusal must hold: exit 1 with one line,
the artifacts folder (profile, lock file, no leftover staging) byte-identical, and the user's
file outside untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from mnist_lab import paths
from mnist_lab.workbook import archive
from mnist_lab.workbook.lock import lock_path, profile_lock
from mnist_lab.cli import main
from mnist_lab.errors import LabError
from mnist_lab.files import check_output

from conftest import lock_held_elsewhere

VICTIM_TEXT = "the user's own file, outside the project\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_text(VICTIM_TEXT)
    return path


@pytest.fixture
def packed(project, tmp_path) -> Path:
    """The tiny built profile packed by `mnist-lab pack`."""
    return archive.pack("smoke", tmp_path / "smoke.tar.gz")


def _snapshot(folder: Path) -> dict:
    """Everything under `folder`: files by content, links by target, folders and special files by kind."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            found[relative] = ("link", os.readlink(path))
        elif path.is_dir():
            found[relative] = ("folder",)
        elif path.is_file():
            found[relative] = ("file", path.read_bytes())
        else:
            found[relative] = ("special", path.stat().st_mode)
    return found


def _refused(capsys, project: Path, victim: Path, argv: list[str]) -> str:
    """Run `mnist-lab ARGV`: it must fail with one line and change nothing; returns the line."""
    before = _snapshot(project / "artifacts")
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("mnist-lab: error: ") and error.count("\n") == 1 and "Traceback" not in error, error
    assert _snapshot(project / "artifacts") == before
    assert victim.read_text() == VICTIM_TEXT
    return error


def _read(path: Path) -> dict[str, bytes | None]:
    """An archive's members in order: {name: bytes of a file, None for a folder}."""
    with tarfile.open(path) as packed:
        return {m.name: packed.extractfile(m).read() if m.isfile() else None for m in packed}


def _add(packed: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    if data is None:
        info.type = tarfile.DIRTYPE
        packed.addfile(info)
    else:
        info.size = len(data)
        packed.addfile(info, io.BytesIO(data))


def _write(path: Path, contents: dict, *, specials=(), manifest: bool = True) -> Path:
    """A .tar.gz of `contents` {name: bytes or None}, the TarInfo `specials` first; with `manifest`,
    any MANIFEST.json in `contents` is replaced by one computed over the files, as pack would."""
    if manifest:
        contents = {name: data for name, data in contents.items() if name != f"smoke/{archive.MANIFEST}"}
    with tarfile.open(path, "w:gz") as packed:
        for info in specials:
            packed.addfile(info)
        for name, data in contents.items():
            _add(packed, name, data)
        if manifest:
            files = {name.split("/", 1)[1]: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                     for name, data in contents.items() if data is not None and name.startswith("smoke/")}
            _add(packed, f"smoke/{archive.MANIFEST}", json.dumps({"format": 1, "files": files}).encode())
    return path


def _special(name: str, kind: int, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _record(contents: dict) -> str:
    """The name of a notebook record in the archive that lists training runs."""
    return next(name for name, data in contents.items()
                if name.startswith("smoke/provenance/") and json.loads(data)["runs"])


# ---- the good case -------------------------------------------------------------------------------


def test_a_packed_profile_unpacks_to_identical_files_with_its_manifest(project, tmp_path, capsys):
    profile = project / "artifacts" / "smoke"
    assert {path.name for path in profile.iterdir()} <= archive.PACKED | archive.LEFT_OUT  # nothing unknown is lost
    carried = {name: entry for name, entry in _snapshot(profile).items()
               if not set(Path(name).parts) & archive.LEFT_OUT}
    out = tmp_path / "smoke.tar.gz"
    assert main(["pack", "--profile", "smoke", "--out", str(out)]) == 0
    contents = _read(out)
    manifest = json.loads(contents.pop(f"smoke/{archive.MANIFEST}"))["files"]
    assert manifest == {name.split("/", 1)[1]: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                        for name, data in contents.items() if data is not None}
    (profile / "index.html").unlink()  # the profile changed since: unpack puts the packed one back whole
    (profile / "macros" / "stray.tex").write_text("% not packed")
    capsys.readouterr()
    times = {path: int(path.stat().st_mtime) for path in profile.glob("runs/*/metrics.json")}
    assert times and main(["unpack", str(out)]) == 0
    assert _snapshot(profile) == carried
    assert {path: int(path.stat().st_mtime) for path in times} == times  # the report dates its runs by them
    assert not [p for p in (project / "artifacts").iterdir() if p.name.endswith((".partial", ".old"))]
    with profile_lock("smoke", "run"):  # the lock, beside the profile, survived the swap
        assert lock_path("smoke").parent == paths.ARTIFACTS


# ---- links: the truncation through a chain of symbolic links -------------------------------------


def test_a_chain_of_symbolic_links_is_refused_and_the_lock_never_follows_one(project, packed, tmp_path, victim,
                                                                               capsys):
    chain = [_special("smoke/html/a", tarfile.SYMTYPE, "b"),  # each link stays inside until the last one exists
             _special("smoke/html/b", tarfile.SYMTYPE, "c"),
             _special("smoke/html/c", tarfile.SYMTYPE, "../../../outside/victim.txt"),
             _special("smoke/.lock", tarfile.SYMTYPE, "html/a")]
    hostile = _write(tmp_path / "chain.tar.gz", _read(packed), specials=chain)
    assert "is a symbolic link" in _refused(capsys, project, victim, ["unpack", str(hostile)])
    with profile_lock("smoke", "run"):  # what truncated the victim before: the next run taking the lock
        pass
    assert victim.read_text() == VICTIM_TEXT and lock_path("smoke").is_file()


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "folder"])
def test_a_lock_file_that_is_not_a_file_of_its_own_is_refused_not_truncated(project, packed, victim, capsys, kind):
    lock = lock_path("smoke")
    lock.unlink()
    {"symlink": lambda: lock.symlink_to(victim), "hardlink": lambda: os.link(victim, lock),
     "fifo": lambda: os.mkfifo(lock), "folder": lock.mkdir}[kind]()
    error = _refused(capsys, project, victim, ["unpack", str(packed)])
    assert f"the lock file {lock}" in error and "refused" in error


# ---- provenance records that name paths outside the profile ----------------------------------------


@pytest.mark.parametrize("field, key", [("outputs", "VICTIM"), ("outputs", "../../outside/victim.txt"),
                                        ("runs", "../../outside"), ("sources", "/etc/passwd")])
def test_a_record_naming_a_path_outside_is_refused(project, packed, tmp_path, victim, capsys, field, key):
    key = str(victim) if key == "VICTIM" else key
    contents = _read(packed)
    name = _record(contents)
    record = json.loads(contents[name])
    record[field][key] = "0" * 64
    contents[name] = json.dumps(record).encode()
    hostile = _write(tmp_path / "record.tar.gz", contents)  # with a manifest that matches
    error = _refused(capsys, project, victim, ["unpack", str(hostile)])
    assert f"lists {key!r} in its {field}" in error and "not inside the" in error


def test_a_record_that_is_not_a_record_is_refused(project, packed, tmp_path, victim, capsys):
    contents = _read(packed)
    contents[_record(contents)] = b'{"outputs": ["/tmp/x"]}'
    error = _refused(capsys, project, victim, ["unpack", str(_write(tmp_path / "bad.tar.gz", contents))])
    assert "is not a provenance record" in error


# ---- archives that would replace the profile with nothing, or with too much ----------------------


@pytest.mark.parametrize("case, message", [
    ("empty smoke/", "has no smoke/MANIFEST.json"),
    ("empty smoke/ with a manifest", "no provenance records"),
    ("no runs/", "no training runs (runs/)"),
])
def test_an_archive_without_records_or_runs_is_refused(project, packed, tmp_path, victim, capsys, case, message):
    if case == "no runs/":
        contents = {name: data for name, data in _read(packed).items() if not name.startswith("smoke/runs")}
    else:
        contents = {"smoke": None}
    hostile = _write(tmp_path / "empty.tar.gz", contents, manifest=case != "empty smoke/")
    assert message in _refused(capsys, project, victim, ["unpack", str(hostile)])


def test_an_archive_whose_headers_declare_gigabytes_is_refused_before_extracting(project, tmp_path, victim, capsys):
    hostile = tmp_path / "bomb.tar.gz"
    huge = tarfile.TarInfo("smoke/figures/huge.pdf")  # a name pack writes: only its size is wrong
    huge.size = 3 * 1024**3  # 1 MiB of zeros follows, then nothing: only the header can refuse it this fast
    with gzip.open(hostile, "wb") as stream:
        stream.write(huge.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024**2))
    assert hostile.stat().st_size < 10_000
    assert "its headers declare over 2.0 GiB" in _refused(capsys, project, victim, ["unpack", str(hostile)])


def test_a_pax_header_of_a_gigabyte_is_refused_without_reading_it(project, tmp_path, victim, capsys):
    hostile = tmp_path / "pax.tar.gz"
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 1024**3  # tarfile reads a pax header whole, into memory
    with gzip.open(hostile, "wb") as stream:
        stream.write(header.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024**2))
    error = _refused(capsys, project, victim, ["unpack", str(hostile)])
    assert f"a header or read of {1024**3} bytes" in error


def test_a_file_of_zeros_over_the_size_limit_is_refused(project, packed, tmp_path, victim, capsys, monkeypatch):
    contents = _read(packed)
    monkeypatch.setattr(archive, "MAX_BYTES", sum(len(data or b"") for data in contents.values()) + 1024**2)
    contents["smoke/figures/zeros.pdf"] = bytes(8 * 1024**2)  # a name pack writes; compresses to a few KB
    hostile = _write(tmp_path / "zeros.tar.gz", contents)
    assert hostile.stat().st_size < packed.stat().st_size + 100_000
    assert "its headers declare over" in _refused(capsys, project, victim, ["unpack", str(hostile)])


def test_too_many_members_are_refused(project, packed, victim, capsys, monkeypatch):
    monkeypatch.setattr(archive, "MAX_MEMBERS", 5)
    assert "over 5 members" in _refused(capsys, project, victim, ["unpack", str(packed)])


# ---- damaged archives, and files that do not match the manifest -------------------------------------


@pytest.mark.parametrize("damage", ["truncated gzip", "not gzip", "gzip of junk", "a folder"])
def test_a_damaged_archive_is_one_line(project, packed, tmp_path, victim, capsys, damage):
    hostile = tmp_path / "damaged.tar.gz"
    if damage == "truncated gzip":
        hostile.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    elif damage == "not gzip":
        hostile.write_bytes(b"not an archive")
    elif damage == "gzip of junk":
        hostile.write_bytes(gzip.compress(os.urandom(5000)))
    else:
        hostile.mkdir()
    error = _refused(capsys, project, victim, ["unpack", str(hostile)])
    assert "nothing was changed" in error


@pytest.mark.parametrize("tamper, message", [("same size", "does not match its manifest"),
                                             ("longer", "its manifest says")])
def test_a_file_changed_after_packing_is_refused(project, packed, tmp_path, victim, capsys, tamper, message):
    contents = _read(packed)
    name = next(name for name in contents if name.startswith("smoke/runs/") and name.endswith("metrics.json"))
    data = contents[name]
    contents[name] = data.replace(b"1", b"9") if tamper == "same size" else data + b" "
    assert contents[name] != data
    hostile = _write(tmp_path / "tampered.tar.gz", contents, manifest=False)  # the manifest pack wrote
    assert message in _refused(capsys, project, victim, ["unpack", str(hostile)])


@pytest.mark.parametrize("change, message", [("missing", "is in its manifest but not in the archive"),
                                             ("extra", "is in the archive but not in its manifest")])
def test_files_missing_from_or_extra_to_the_manifest_are_refused(project, packed, tmp_path, victim, capsys,
                                                                  change, message):
    contents = _read(packed)
    if change == "missing":
        del contents[next(name for name in contents if name.startswith("smoke/macros/"))]
    else:
        contents["smoke/macros/extra.tex"] = b"% not in the manifest"
    hostile = _write(tmp_path / "changed.tar.gz", contents, manifest=False)
    assert message in _refused(capsys, project, victim, ["unpack", str(hostile)])


# ---- members that are not plain folders and files with the names pack writes ----------------------


@pytest.mark.parametrize("member, message", [
    (("smoke/evil.sh", "rm -rf ~"), "is not something `mnist-lab pack` writes"),
    (("smoke/.lock", ""), "is not something `mnist-lab pack` writes"),
    (("/tmp/victim.txt", "x"), "is not a plain relative path"),
    (("smoke/html/../../../outside/victim.txt", "x"), "is not a plain relative path"),
    (("full/figures/x.pdf", "x"), "two profiles"),
    (("elsewhere/x", "x"), "is not a profile"),
    (("smoke/html/hard", tarfile.LNKTYPE), "is a hard link"),
    (("smoke/html/fifo", tarfile.FIFOTYPE), "is a fifo"),
    (("smoke/html/null", tarfile.CHRTYPE), "is a character device"),
    (("smoke/html/disk", tarfile.BLKTYPE), "is a block device"),
])
def test_a_member_that_is_not_a_plain_folder_or_file_pack_writes_is_refused(project, packed, tmp_path, victim,
                                                                            capsys, member, message):
    name, what = member
    contents = _read(packed)
    if isinstance(what, str):  # a file's text; else a tar type (bytes)
        contents[name] = what.encode()
        hostile = _write(tmp_path / "member.tar.gz", contents)
    else:
        target = "smoke/index.html" if what == tarfile.LNKTYPE else ""
        hostile = _write(tmp_path / "member.tar.gz", contents, specials=[_special(name, what, target)])
    assert message in _refused(capsys, project, victim, ["unpack", str(hostile)])


# ---- pack's target, and the lock ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "folder", "symlink"])
def test_pack_writes_only_to_a_regular_file_or_a_new_path(project, tmp_path, victim, capsys, kind):
    out = tmp_path / "out" / "smoke.tar.gz"
    out.parent.mkdir()
    {"fifo": lambda: os.mkfifo(out), "folder": out.mkdir, "symlink": lambda: out.symlink_to(victim)}[kind]()
    before = _snapshot(out.parent)
    error = _refused(capsys, project, victim, ["pack", "--profile", "smoke", "--out", str(out)])
    assert f"{out} is a {kind.replace('symlink', 'symbolic link')}" in error
    assert _snapshot(out.parent) == before


def test_a_device_node_is_refused_without_writing_to_it():
    null = Path("/dev/null")  # only looked at: the check comes before anything is written
    with pytest.raises(LabError, match="/dev/null is a character device"):
        check_output(null, "pack")
    assert null.is_char_device()


def test_unpack_while_another_process_holds_the_lock_is_refused(project, packed, victim, capsys):
    with lock_held_elsewhere() as holder:
        error = _refused(capsys, project, victim, ["unpack", str(packed)])
        assert f"in use by `mnist-lab run (test) (pid {holder.pid})`" in error
