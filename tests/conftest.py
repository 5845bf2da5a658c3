import contextlib
import io
import shutil
import signal
import subprocess
from pathlib import Path

import nbformat
import pytest

from mnist_lab.data import load_mnist


@pytest.fixture(autouse=True)
def own_artifacts(tmp_path, monkeypatch):
    """Each test's artifacts folder is its own (the run cache of `mnist-lab train` included): no
    test writes into the checkout's artifacts/. Fixtures that build a project point it elsewhere."""
    from mnist_lab import paths

    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path / "artifacts")
    monkeypatch.setenv("MNIST_LAB_ARTIFACTS", str(tmp_path / "artifacts"))


@pytest.fixture(autouse=True, scope="session")
def own_cpu_slot(tmp_path_factory):
    """The suite's CPU slot (mnist_lab/machine.py) is its own: its trainings take turns with each
    other, never wait on a training elsewhere on the machine (another build, another suite)."""
    runtime = tmp_path_factory.mktemp("runtime")
    runtime.chmod(0o700)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_RUNTIME_DIR", str(runtime))
        patch.delenv("MNIST_LAB_CPU_SLOT", raising=False)  # a slot held by whoever started the suite is not ours
        yield runtime


# What a terminal's Ctrl-C, `kill` and a closed terminal send: a child started for a signal test gets
# their default actions back, whatever its parent left (a suite started with `nohup` or `&` in a
# non-interactive shell ignores SIGINT, and so would every process it starts).
SIGNALS_AT_DEFAULT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def start_for_signals(command: list[str], **kwargs) -> subprocess.Popen:
    """`command` in a process group of its own, as a terminal starts a job, with the default action
    for each of SIGNALS_AT_DEFAULT: what every test that sends a real signal starts."""
    def defaults():
        for number in SIGNALS_AT_DEFAULT:
            signal.signal(number, signal.SIG_DFL)

    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    return subprocess.Popen(command, start_new_session=True, preexec_fn=defaults, **kwargs)


@pytest.fixture(autouse=True, scope="session")
def no_frozen_studies(tmp_path_factory):
    """The tests' builds train the calibration studies unless a test freezes some itself: the
    checkout's frozen/ is read only by the tests of it (tests/test_frozen.py)."""
    from mnist_lab import paths

    empty = tmp_path_factory.mktemp("frozen")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "FROZEN", empty)
        patch.setenv("MNIST_LAB_FROZEN", str(empty))
        yield empty


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST, read and verified once for the whole session."""
    return load_mnist()


@pytest.fixture(scope="session")
def small_mnist(mnist):
    """A few hundred images: enough to see learning, small enough for a 2-core CPU."""
    from mnist_lab.data import Mnist

    return Mnist(train=mnist.train.head(512), test=mnist.test.head(256))


def train_run(experiment, *, data, progress=False, checkpoint=None, on_epoch_end=None, bar=None, **settings):
    """`fit` of the run of `experiment` with these RunSpec settings (on the CPU unless told)."""
    from mnist_lab.spec import RunSpec
    from mnist_lab.train import fit

    settings.setdefault("device", "cpu")
    return fit(RunSpec.of(experiment, **settings), data=data, progress=progress, checkpoint=checkpoint,
               on_epoch_end=on_epoch_end, **({"bar": bar} if bar else {}))


def run_folder(profile_dir: Path, name: str, seed: int = 0) -> Path:
    """The folder of run `name` seed `seed` in a profile's run cache, found by name in its index."""
    from mnist_lab.runs import RunCache

    cache = RunCache(Path(profile_dir) / "runs")
    return cache.folder / cache.index()[name][str(seed)][:16]


def write_pages(profile: str) -> None:
    """What `mnist-lab run` does after the notebooks ran: the offline pages (cli._write_pages)."""
    from mnist_lab.cli import _write_pages

    _write_pages(profile)


@pytest.fixture(scope="session")
def smoke_artifacts(tmp_path_factory):
    """Every notebook executed once by papermill under the smoke profile, into a temporary folder.

    The kernels papermill starts read MNIST_LAB_ARTIFACTS; this process reads paths.ARTIFACTS.
    What the runner printed is kept in run-output.txt beside the profile's folder.
    """
    from mnist_lab import paths
    from mnist_lab.workbook import notebooks

    root = tmp_path_factory.mktemp("artifacts")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("MNIST_LAB_ARTIFACTS", str(root))
        patch.setattr(paths, "ARTIFACTS", root)
        notebooks.execute_all(None, profile="smoke", progress=False, studies="train",  # the studies trained too
                              after=write_pages)
        (root / "run-output.txt").write_text(printed.getvalue())
        yield root / "smoke"


# ---- a tiny project: a copy of the package and data with two small notebooks ------------------

# A notebook that stages one macro, waits for a signal file (so a test can interrupt it there),
# then stages another; `fail` makes its last cell raise.
SLOW = '''import time
from pathlib import Path
from mnist_lab.workbook import Workbook
wb = Workbook("slow", profile=profile)
wb.macro("First", "1")
Path(marker).touch()
while wait and Path(marker).exists():
    time.sleep(0.05)
wb.macro("Second", "2")
assert not fail, "told to fail"'''
# A notebook that uses a training run, as q2_cnn does, on the smoke profile's subsets.
TRAINS = '''from mnist_lab.workbook import Workbook
wb = Workbook("trains", profile=profile, seeds=seeds)
run = wb.run("basic_cnn", seeds[0])
wb.macro("Accuracy", f"{run.metrics['test_accuracy']:.2f}")'''


@contextlib.contextmanager
def lock_held_elsewhere(profile: str = "smoke"):
    """The profile's lock held by another process (as `run (test)`) until the block ends, when
    that process is killed, as a crashed holder would be; yields the process."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom mnist_lab.workbook.lock import profile_lock\n"
         f"with profile_lock({profile!r}, 'run (test)'):\n    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def make_notebook(path: Path, parameters: str, code: str) -> None:
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(code),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


def new_project(root: Path, notebooks: dict[str, tuple[str, str]]) -> Path:
    """A copy of the package and data under `root`, with notebooks {name: (parameters cell, code)}."""
    from mnist_lab import paths

    shutil.copytree(paths.ROOT / "mnist_lab", root / "mnist_lab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(paths.DATA, root / "data")
    (root / "notebooks").mkdir()
    for name, (parameters, code) in notebooks.items():
        make_notebook(root / "notebooks" / f"{name}.ipynb", parameters, code)
    return root


def point_at(patch, root: Path) -> None:
    """Make this process and the kernels it starts use the tiny project's notebooks, artifacts and
    data, with the runs its notebooks read declared to the runner."""
    from mnist_lab import paths

    from mnist_lab.workbook import plan

    patch.setitem(plan.READS, "trains", plan.Reads(experiments=("basic_cnn",)))  # what TRAINS reads
    patch.setattr(paths, "NOTEBOOKS", root / "notebooks")
    patch.setattr(paths, "ARTIFACTS", root / "artifacts")
    for name, value in (("MNIST_LAB_NOTEBOOKS", "notebooks"), ("MNIST_LAB_ARTIFACTS", "artifacts"),
                        ("MNIST_LAB_DATA", "data")):
        patch.setenv(name, str(root / value))


@pytest.fixture(scope="session")
def built_project(tmp_path_factory):
    """The tiny project, each notebook run once by the runner."""
    from mnist_lab.workbook import notebooks

    root = tmp_path_factory.mktemp("project")
    new_project(root, {"slow": (f'profile = "smoke"\nmarker = "{root}/reached"\nwait = False\nfail = False', SLOW),
                       "trains": ('profile = "smoke"\nseeds = [0]', TRAINS)})
    with pytest.MonkeyPatch.context() as patch:
        point_at(patch, root)
        assert notebooks.execute_all(None, profile="smoke", progress=False, after=write_pages) == ["slow", "trains"]
    return root


@pytest.fixture
def project(built_project, tmp_path, monkeypatch):
    """A fresh copy of the built tiny project for one test to change."""
    return copy_project(built_project, tmp_path, monkeypatch)


def copy_project(built: Path, tmp_path: Path, monkeypatch) -> Path:
    """A fresh copy of a built tiny project, with this process and its kernels pointed at it."""
    from mnist_lab import paths

    root = tmp_path / "project"
    shutil.copytree(built, root)
    point_at(monkeypatch, root)
    monkeypatch.setattr(paths, "ROOT", root)
    return root


# ---- two tiers: `pytest -m "not slow"` is the inner loop ---------------------------------------------

# Fixtures that start notebook kernels (and so train, or build the report from what they trained):
# a test that uses one is slow, whatever its module. Ray and the browser mark their modules.
SLOW_FIXTURES = {"smoke_artifacts", "smoke_report", "built_project", "project", "executed_project", "tiny_project"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
