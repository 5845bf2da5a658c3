"""Property tests of every reader of untrusted files, and of `unpack` (issue 33).

Whatever bytes lie where a record is read, or whatever an archive holds, the result is a valid
record (or None: as if absent), or one LabError line: never a traceback, never a file written
outside the profile's folder. Hypothesis draws the inputs; each test is bounded in examples and
time so that the whole file runs in well under a minute. The reproductions: tests/test_untrusted.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_lab import paths, records
from mnist_lab.cli import main
from mnist_lab.errors import MAX_LINE, LabError
from mnist_lab.runs import RunCache, frozen
from mnist_lab.runs.directory import read_run_record
from mnist_lab.runs.side_by_side import read_footprints
from mnist_lab.workbook import html, provenance
from mnist_lab.workbook.report import title

FUZZ = settings(max_examples=120, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

KEY = "ab" * 32
RECORD = {"notebook": "trains", "profile": "smoke", "parameters": {"seeds": [0]}, "notebook_hash": "0" * 64,
          "data": {"train-images-idx3-ubyte": "0" * 64}, "git": {"commit": "c" * 40, "dirty": False},
          "started": "2026-01-01T00:00:00+00:00", "wall_seconds": 1.5, "sources": {"mnist_lab/train.py": "0" * 64},
          "runs": {f"runs/{KEY[:16]}": KEY}, "outputs": {"macros/trains.tex": "0" * 64},
          "changes": {"macros": [["A", "1", "2"]], "tables": []}, "frozen": {}, "code_scheme": "v1"}
# A valid example of each kind: the fuzzer changes one of its fields at a time.
VALID = {
    records.RUN_RECORD: {"fingerprint": KEY, "inputs": {"seed": 0, "recipe": {"model": "cnn"}},
                         "code": {"mnist_lab/train.py": "0" * 64}, "data": {}, "files": {"config.json": "0" * 64},
                         "git": {"commit": "c" * 40, "dirty": None}, "wall_seconds": 2.0},
    records.RUN_INDEX: {"cnn": {"0": KEY}},
    records.FROZEN_INDEX: {"vit": {"1": KEY}},
    records.FROZEN_STUDIES: {"vit": {"candidates": ["a"], "epochs": 3}},
    records.FOOTPRINTS: {"cnn": 1 << 30},
    records.NOTEBOOK_RECORD: RECORD,
    records.RUN_CONFIG: {"experiment": {"model": "cnn"}, "seed": 0, "fingerprint": KEY},
    records.RUN_METRICS: {"epochs": 2, "test_accuracy": 98.5, "train_seconds": 3.0},
    records.RUN_ENVIRONMENT: {"torch": "2"},
    records.ARCHIVE_MANIFEST: {"format": 1, "files": {"runs/x": {"size": 3, "sha256": "0" * 64}}},
    records.EXECUTED_NOTEBOOK: {"metadata": {"papermill": {"end_time": "2026-01-01T00:00:00"}}, "cells": []},
}
assert set(VALID) == set(records.KINDS)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25)
json_text = json_values.map(lambda value: json.dumps(value).encode())
# Bytes near JSON: a value's text, cut, spliced, or wrapped in brackets, and plain bytes.
anything = st.one_of(
    st.binary(max_size=300), json_text,
    st.tuples(json_text, st.integers(0, 200)).map(lambda cut: cut[0][:cut[1]]),
    st.tuples(st.sampled_from(["[", "{\"a\":", "[{\"b\":"]), st.integers(0, 80)).map(
        lambda deep: (deep[0] * deep[1]).encode()),
)


def _changed(draw_from: dict, path_value) -> bytes:
    """A valid example with one field (at the top or one level down) replaced or removed."""
    (top, inner), value, remove = path_value
    record = json.loads(json.dumps(draw_from))
    keys = sorted(record)
    if not keys:
        return json.dumps(value).encode()
    key = keys[top % len(keys)]
    target = record[key] if isinstance(record[key], dict) and record[key] and inner is not None else record
    name = sorted(target)[(inner or 0) % len(target)] if target is not record else key
    if remove:
        del target[name]
    else:
        target[name] = value
    return json.dumps(record).encode()


def _check_outcome(parse):
    try:
        value = parse()
    except records.Unreadable as error:
        message = str(error)
        assert "\n" not in message and len(message) <= MAX_LINE, message
        return None
    return value


@pytest.mark.parametrize("kind", records.KINDS, ids=lambda kind: kind.what)
@FUZZ
@given(data=anything)
def test_any_bytes_give_a_valid_record_or_one_line(kind, data):
    value = _check_outcome(lambda: records.parse(data, kind))
    if value is not None:
        assert kind.shape.problem(value, ()) is None


@pytest.mark.parametrize("kind", records.KINDS, ids=lambda kind: kind.what)
@FUZZ
@given(change=st.tuples(st.tuples(st.integers(0, 50), st.none() | st.integers(0, 50)), json_values, st.booleans()))
def test_a_valid_record_with_one_field_changed_is_valid_or_one_line(kind, change):
    assert records.parse(json.dumps(VALID[kind]).encode(), kind) == VALID[kind]
    value = _check_outcome(lambda: records.parse(_changed(VALID[kind], change), kind))
    if value is not None:
        assert kind.shape.problem(value, ()) is None


# ---- each reader of the package, on the file where it reads -----------------------------------------


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _lab_error_is_one_line(call):
    """`call()`; a LabError it raises must be one line (the command line cuts it to MAX_LINE)."""
    try:
        return call()
    except LabError as error:
        assert "\n" not in str(error), str(error)
        return None


record_bytes = st.one_of(anything, st.tuples(st.tuples(st.integers(0, 50), st.none() | st.integers(0, 50)),
                                             json_values, st.booleans()).map(lambda change: _changed(RECORD, change)))


@FUZZ
@given(data=anything)
def test_the_run_cache_readers_take_any_bytes(tmp_path, data):
    cache = RunCache(tmp_path / "runs")
    run = cache.folder / KEY[:16]
    for name in ("index.json", "footprints.json", f"{KEY[:16]}/provenance.json"):
        _write(cache.folder / name, data)
    record = read_run_record(run)
    assert record is None or isinstance(record["fingerprint"], str)
    assert isinstance(cache.index(), dict) and isinstance(cache.names(), dict)
    assert all(isinstance(peak, int) for peak in read_footprints(cache).values())
    assert [path for path, _ in cache.runs()] == [run]


@FUZZ
@given(data=anything)
def test_the_frozen_index_takes_any_bytes(tmp_path, monkeypatch, data):
    monkeypatch.setattr(paths, "FROZEN", tmp_path / "frozen")
    _write(frozen.folder("smoke") / frozen.INDEX, data)
    assert isinstance(frozen.index("smoke"), dict)


@FUZZ
@given(data=record_bytes)
def test_a_notebook_record_is_read_alike_by_status_the_pages_and_the_title_page(tmp_path, data):
    _write(provenance.record_path("smoke", "trains"), data)
    record = provenance.read_record("smoke", "trains")
    page, why = html.page_record("smoke", "trains")
    assert (record is None) == (page is None) and (why is None) == (record is not None)
    assert why is None or ("\n" not in why and why.startswith("unreadable record"))
    quoted = _lab_error_is_one_line(lambda: title._records(paths.profile_dir("smoke")))
    assert (quoted is None) == (record is None)


@FUZZ
@given(config=anything, metrics=anything)
def test_the_title_pages_run_table_takes_any_bytes(tmp_path, config, metrics):
    directory = paths.profile_dir("smoke")
    _write(directory / "runs" / KEY[:16] / "config.json", config)
    _write(directory / "runs" / KEY[:16] / "metrics.json", metrics)
    _lab_error_is_one_line(lambda: title._training_runs(directory))


# ---- unpack ------------------------------------------------------------------------------------------

NAMES = ["smoke", "smoke/runs", f"smoke/runs/{KEY[:16]}", f"smoke/runs/{KEY[:16]}/config.json",
         "smoke/provenance", "smoke/provenance/trains.json", "smoke/figures/a.png", "smoke/MANIFEST.json",
         "smoke/../escape", "/etc/owned", "smoke/runs/\x1b]0;x\x07\nfresh", "full/runs/x", "smoke/latex/x",
         "smoke/" + "d/" * 40 + "f", "smoke/html/index.html", "smoke/runs/./x"]
KINDS = [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
         tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.GNUTYPE_SPARSE]
member = st.tuples(st.sampled_from(NAMES) | st.text(min_size=1, max_size=40).map(lambda text: "smoke/" + text),
                   st.sampled_from(KINDS),
                   st.one_of(st.binary(max_size=64), record_bytes, st.just(json.dumps(RECORD).encode())),
                   st.sampled_from(["", "../../outside", "/tmp", "smoke/runs"]))


def _archive(members: list, manifest: str, pax: bool) -> bytes:
    """A .tar.gz of `members`; with manifest "computed", MANIFEST.json lists the regular files as pack
    would (so the later checks are reached), with "garbage" a random one, with "none" no manifest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT,
                      pax_headers={"comment": "x" * 100} if pax else None) as packed:
        files = {}
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                packed.addfile(info, io.BytesIO(data))
                if name.startswith("smoke/") and name != "smoke/MANIFEST.json":
                    files[name[len("smoke/"):]] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            else:
                packed.addfile(info)
        if manifest != "none":
            text = json.dumps({"format": 1, "files": files}).encode() if manifest == "computed" else b"[]"
            info = tarfile.TarInfo("smoke/MANIFEST.json")
            info.size = len(text)
            packed.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def _outside(root: Path) -> dict:
    """Every path under `root` but the profile's folder (which unpack replaces) and its lock file."""
    profile, lock = root / "artifacts" / "smoke", root / "artifacts" / ".smoke.lock"
    found = {}
    for path in root.rglob("*"):
        if path == lock or path == profile or profile in path.parents or path.parent.name == "archives":
            continue
        found[str(path)] = path.read_bytes() if path.is_file() and not path.is_symlink() else os.lstat(path).st_mode
    return found


def _unpack_is_fine_or_one_line(tmp_path: Path, capsys, data: bytes) -> None:
    path = tmp_path / "archives" / "fuzzed.tar.gz"
    _write(path, data)
    before = _outside(tmp_path)
    code = main(["unpack", str(path)])
    printed = capsys.readouterr()
    assert code in (0, 1), printed.err
    if code == 1:
        assert printed.err.count("\n") == 1 and printed.err.startswith("mnist-lab: error: "), printed.err
        assert len(printed.err) - 1 <= MAX_LINE and "\x1b" not in printed.err, printed.err
    else:
        assert printed.err == ""
    assert _outside(tmp_path) == before
    assert not (tmp_path / "owned").exists() and not Path("/etc/owned").exists()


@pytest.fixture
def outside(tmp_path):
    """A user's file beside the artifacts folder: no archive may change it."""
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("the user's own file\n")
    (tmp_path / "artifacts").mkdir()
    return victim


@FUZZ
@given(data=anything)
def test_unpack_of_any_bytes_is_one_line(tmp_path, capsys, outside, data):
    _unpack_is_fine_or_one_line(tmp_path, capsys, data)


@FUZZ
@given(data=st.binary(min_size=1, max_size=2000), gzipped=st.booleans())
def test_unpack_of_any_tar_stream_is_one_line(tmp_path, capsys, outside, data, gzipped):
    import gzip

    _unpack_is_fine_or_one_line(tmp_path, capsys, gzip.compress(data) if gzipped else data)


@settings(FUZZ, max_examples=300)
@given(members=st.lists(member, max_size=8), manifest=st.sampled_from(["computed", "computed", "garbage", "none"]),
       pax=st.booleans(), cut=st.none() | st.integers(10, 400))
def test_unpack_of_any_member_set_is_fine_or_one_line_and_writes_only_the_profile(tmp_path, capsys, outside, members,
                                                                                  manifest, pax, cut):
    data = _archive(members, manifest, pax)
    _unpack_is_fine_or_one_line(tmp_path, capsys, data[:cut] if cut else data)


def test_a_fuzzed_archive_that_is_whole_does_unpack(tmp_path, capsys, outside):
    """The member sets above reach the end: one made of what pack writes is unpacked."""
    members = [("smoke/runs", tarfile.DIRTYPE, b"", ""),
               (f"smoke/runs/{KEY[:16]}/config.json", tarfile.REGTYPE, b"{}", ""),
               ("smoke/provenance/trains.json", tarfile.REGTYPE, json.dumps({**RECORD, "sources": {}}).encode(), "")]
    _unpack_is_fine_or_one_line(tmp_path, capsys, _archive(members, "computed", False))
    assert (tmp_path / "artifacts" / "smoke" / "provenance" / "trains.json").is_file()
