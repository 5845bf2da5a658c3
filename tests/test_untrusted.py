"""Everything that arrives is data (issue 33): the reproductions of its readers, terminal and limits cases.

Records on disk are read through `mnist_lab.records` (one bounded reader: JSON nested 200,000 deep
is one line, never a RecursionError); text from disk reaches the terminal through
`errors.printable`; recipes, seeds and model arguments are bounded before anything trains.
Property tests of the same readers: tests/test_fuzz_readers.py.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import tarfile

import pytest

from mnist_lab import records
from mnist_lab.cli import main
from mnist_lab.errors import MAX_LINE, LabError, printable
from mnist_lab.runs import RunCache
from mnist_lab.runs.directory import read_run_record
from mnist_lab.workbook import notebooks, provenance

DEEP = b"[" * 200_000 + b"]" * 200_000
DEEP_OBJECT = b'{"a":' * 200_000 + b"1" + b"}" * 200_000


def _one_line(capsys, *, status: int | None = None) -> str:
    printed = capsys.readouterr()
    error = printed.err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert len(error.rstrip("\n")) <= MAX_LINE and "\x1b" not in error, error
    return error


# ---- the bounded reader ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", records.KINDS, ids=lambda kind: kind.what)
@pytest.mark.parametrize("data", [DEEP, DEEP_OBJECT], ids=["arrays", "objects"])
def test_json_nested_200000_deep_is_one_line_for_every_kind(kind, data):
    with pytest.raises(records.Unreadable) as error:
        records.parse(data, kind)
    assert str(error.value) == f"it nests deeper than {kind.max_depth} levels"


@pytest.mark.parametrize("data, problem", [
    (b'{"a": 1e400}', "the number 1e400 is not finite"),
    (b'{"a": NaN}', "NaN is not a number JSON allows"),
    (b'{"a": -Infinity}', "-Infinity is not a number JSON allows"),
    (b'{"a": 1, "a": 2}', "'a' appears twice"),
    (b'{"a": ' + b"9" * 30 + b"}", "over 19 digits"),
    (b'"' + b"x" * (records.MAX_STRING + 1) + b'"', "over the 65536 allowed"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[" + b"0," * (records.MAX_VALUES + 1) + b"0]", f"over {records.MAX_VALUES} values"),
])
def test_the_reader_bounds_numbers_strings_and_counts(data, problem):
    with pytest.raises(records.Unreadable, match=problem.replace("(", r"\(")):
        records.parse(data, records.RUN_ENVIRONMENT)


def test_a_file_is_read_at_most_to_its_kinds_size_and_never_through_a_folder_or_link(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b"{}" + b" " * records.FOOTPRINTS.max_bytes)
    assert records.inspect(big, records.FOOTPRINTS) == (None, f"it is {records.FOOTPRINTS.max_bytes + 2} bytes, "
                                                             f"over the {records.FOOTPRINTS.max_bytes} "
                                                             f"{records.FOOTPRINTS.what} may have")
    assert records.inspect(tmp_path, records.FOOTPRINTS) == (None, "it is a folder, not a file")
    (tmp_path / "link.json").symlink_to(big)
    assert records.inspect(tmp_path / "link.json", records.FOOTPRINTS)[1] == "it is a symbolic link, not a file"
    assert records.inspect(tmp_path / "absent.json", records.FOOTPRINTS) == (None, None)
    with pytest.raises(LabError, match=r"absent.json is not a record of GPU footprints mnist-lab can read "
                                       r"\(there is no such file\); do this"):
        records.read(tmp_path / "absent.json", records.FOOTPRINTS, fix="do this")


def test_a_record_that_fails_is_as_if_absent_and_told_once_naming_the_file(tmp_path, caplog):
    run = tmp_path / "0123456789abcdef"
    run.mkdir()
    (run / "provenance.json").write_bytes(DEEP)
    with caplog.at_level(logging.WARNING, logger="mnist_lab.records"):
        assert read_run_record(run) is None and read_run_record(run) is None
    told = [entry.getMessage() for entry in caplog.records]
    assert told == [f"{run / 'provenance.json'} is not a run record mnist-lab can read "
                    "(it nests deeper than 32 levels); ignored as if absent"]


@pytest.mark.parametrize("record", [
    {"fingerprint": "f" * 64, "inputs": {}, "code": {}, "data": {}, "code_scheme": "v2"},
    {"fingerprint": "f" * 64, "inputs": {}, "code": {}, "data": {}, "git": {"commit": "a" * 40, "dirty": False}},
])
def test_a_run_record_may_say_its_code_scheme(record):
    assert records.parse(json.dumps(record).encode(), records.RUN_RECORD) == record


@pytest.mark.parametrize("change, problem", [
    ({"code_scheme": 2}, "its 'code_scheme' is a number, not a string"),
    ({"git": {"commit": "--output=/tmp/x"}}, "its 'git' → 'commit' is not of the form"),
    ({"fingerprint": "../x"}, "its 'fingerprint' is not of the form"),
    ({"code": {"mnist_lab/train.py": 5}}, "its 'code' → 'mnist_lab/train.py' is a number, not a string"),
])
def test_a_run_record_of_another_shape_says_which_field(change, problem):
    record = {"fingerprint": "f" * 64, "inputs": {}, "code": {}, "data": {}, **change}
    with pytest.raises(records.Unreadable, match=problem.replace("(", r"\(")):
        records.parse(json.dumps(record).encode(), records.RUN_RECORD)


# ---- the reproductions on a real profile -------------------------------------------------------------


def test_a_deep_run_index_and_run_record_leave_status_and_report_working(project, capsys):
    """JSON nested 200,000 deep in runs/index.json and a run's provenance.json: accepted before, and then
    `status --runs` and `report` crashed until the files were removed."""
    cache = RunCache(project / "artifacts" / "smoke" / "runs")
    run = cache.folder / cache.index()["basic_cnn"]["0"][:16]
    (cache.folder / "index.json").write_bytes(DEEP)
    (run / "provenance.json").write_bytes(DEEP_OBJECT)
    assert cache.index() == {} and read_run_record(run) is None
    assert main(["status", "--profile", "smoke", "--runs"]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and f"  {run.name}  (no name)" in printed.out
    assert "STALE: it is missing" in printed.out
    assert main(["report", "--profile", "smoke"]) == 1  # stale, or no TeX here: either way one line
    _one_line(capsys)


def test_unpack_of_a_manifest_nested_200000_deep_is_one_line(tmp_path, capsys):
    path = tmp_path / "deep.tar.gz"
    with tarfile.open(path, "w:gz") as packed:
        member = tarfile.TarInfo("smoke/MANIFEST.json")
        member.size = len(DEEP)
        packed.addfile(member, io.BytesIO(DEEP))
    assert main(["unpack", str(path)]) == 1
    error = _one_line(capsys)
    assert "MANIFEST.json is not a manifest written by `mnist-lab pack` (it nests deeper than 32 levels)" in error
    assert not (tmp_path / "artifacts" / "smoke").exists()


def test_a_record_source_naming_a_folder_is_a_reason_naming_the_record(project, capsys):
    path = provenance.record_path("smoke", "trains")
    record = json.loads(path.read_text())
    record["sources"]["mnist_lab/runs"] = "0" * 64  # a folder of the project
    path.write_text(json.dumps(record))
    reasons = notebooks.status("trains", "smoke")
    assert "mnist_lab/runs, a source its provenance record names, is not a file" in reasons
    assert main(["status", "--profile", "smoke", "trains"]) == 0
    printed = capsys.readouterr()
    assert "Errno" not in printed.out + printed.err and "trains: STALE" in printed.out


# ---- the terminal ------------------------------------------------------------------------------------

FORGED = "x\nall runs fresh \x1b[32mOK\x1b[0m\x1b]0;owned\x07\r"


def test_printable_escapes_control_characters_and_cuts_marked():
    assert printable(FORGED) == "x\\nall runs fresh \\x1b[32mOK\\x1b[0m\\x1b]0;owned\\x07\\r"
    assert printable("\u202edcba\u2028") == "\\u202edcba\\u2028"
    cut = printable("a" * 100_000 + "the end", 50)
    assert len(cut) == 50 and "…" in cut and cut.endswith("the end")
    assert printable("plain", 300) == "plain"


def test_a_run_folder_named_to_forge_a_line_is_printed_escaped(project, capsys):
    runs = project / "artifacts" / "smoke" / "runs"
    (runs / FORGED).mkdir()
    assert main(["status", "--profile", "smoke", "--runs"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "\nall runs fresh" not in out and "  x\\nall runs fresh \\x1b[32m" in out


def test_a_bad_set_field_of_100000_characters_is_echoed_in_at_most_300(capsys):
    assert main(["sweep", "cnn", "--profile", "smoke", "--set", "x" * 100_000]) == 1
    assert "--set takes FIELD=VALUE" in _one_line(capsys)
    assert main(["sweep", "cnn", "--profile", "smoke", "--set", "x" * 100_000 + "=1"]) == 1
    assert "unknown experiment field" in _one_line(capsys)


def test_every_error_line_is_at_most_300_characters_and_escaped(monkeypatch, capsys):
    from mnist_lab import cli

    def long_error(args):
        raise LabError("the artifacts are stale (" + "q1: macros changed\n\x1b[2J; " * 2000 + "); run them again")

    monkeypatch.setattr(cli, "_report", long_error)
    assert main(["report", "--profile", "smoke"]) == 1
    error = _one_line(capsys)
    assert error.rstrip("\n").endswith("); run them again") and "…" in error


def test_the_lock_holders_text_is_printed_escaped(tmp_path, monkeypatch):
    from mnist_lab import paths
    from mnist_lab.workbook.lock import lock_path, profile_lock

    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path)
    path = lock_path("smoke")
    path.write_text("run\n\x1b]0;owned\x07 all runs fresh" + "y" * 10_000)
    with open(path, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: as another process would hold it
        with pytest.raises(LabError) as error, profile_lock("smoke", "report"):
            pass
    message = str(error.value)
    assert "\n" not in message and "\x1b" not in message and "run\\n\\x1b]0;owned" in message and len(message) < 250


def test_an_archive_member_name_with_escape_codes_is_printed_escaped(tmp_path, capsys):
    path = tmp_path / "names.tar.gz"
    with tarfile.open(path, "w:gz") as packed:
        for name, data in (("smoke/MANIFEST.json", b'{"files": {}}'), ("smoke/runs/\x1b]0;owned\x07\nunpacked fine", b"")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            packed.addfile(member, io.BytesIO(data))
    assert main(["unpack", str(path)]) == 1
    assert "\\x1b]0;owned\\x07\\nunpacked fine" in _one_line(capsys)


# ---- limits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting, limit", [
    ("lr=1e999", "lr must be a finite number from 0 to 1e+12, got inf"),
    ("lr=1e20", "lr must be a finite number from 0 to 1e+12, got 1e+20"),
    ("epochs=100000000000000000000", "epochs must be an integer >= 1 and <= 1000"),
    ("batch_size=100000000000000000000", "batch_size must be an integer >= 1 and <= 60000"),
    ("max_rotation=1e300", "max_rotation must be a finite number from 0 to 180"),
    ("model_args={'bogus': 1}", "model 'cnn' has no argument 'bogus'; it accepts: num_classes"),
    ("model_args={'num_classes': 1000000000}", "model argument num_classes must be a finite number from -4096 to 4096"),
])
def test_recipes_are_finite_and_bounded_before_any_cluster_connects(setting, limit, monkeypatch, capsys):
    from mnist_lab import sweep

    def never(*args, **kwargs):
        raise AssertionError("the cluster was reached")

    monkeypatch.setattr(sweep, "train_on_cluster", never)
    assert main(["sweep", "cnn", "--profile", "smoke", "--set", setting]) == 1
    assert limit in _one_line(capsys)


def test_an_epoch_count_out_of_bounds_is_refused_before_the_data_loads(capsys):
    assert main(["train", "cnn", "--epochs", str(10**20), "--data-root", "/nonexistent"]) == 1
    assert "epochs must be an integer >= 1 and <= 1000" in _one_line(capsys)


def test_60003_planned_runs_are_refused_in_one_line(capsys):
    seeds = [str(seed) for seed in range(20_001)]
    assert main(["sweep", "cnn", "vit", "basic_cnn", "--profile", "smoke", "--seeds", *seeds]) == 1
    assert "20001 seeds are over the limit of 100" in _one_line(capsys)
    assert main(["sweep", *["cnn"] * 30, "--profile", "smoke", "--seeds", *seeds[:40]]) == 1
    assert "the sweep plans 1200 runs, over the limit of 1000" in _one_line(capsys)
    assert main(["sweep", "cnn", "--profile", "smoke", "--set", "lr=" + ",".join(["1e-3"] * 40),
                 "--set", "weight_decay=" + ",".join(["0"] * 40)]) == 1
    assert "1600 combinations, over the limit of 1000" in _one_line(capsys)
