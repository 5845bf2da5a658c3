"""`mnist-lab`: the command line. Every user error is one line on stderr, of at most
errors.MAX_LINE characters with control characters escaped, and a non-zero exit; Ctrl-C
anywhere, start-up included, is one line and exit 130."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import paths
from .errors import MAX_LINE, LabError, printable
from .names import DEVICES, MODELS
from .names import EXPERIMENTS as EXPERIMENT_NAMES
from .names import PROFILES as PROFILE_NAMES

BENCH_MODELS = MODELS  # each trained with the experiment of the same name
INTERRUPTED = "mnist-lab: interrupted; previous artifacts intact"
TERMINATED = "mnist-lab: terminated; previous artifacts intact"
HUNG_UP = "mnist-lab: hung up (SIGHUP); previous artifacts intact"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints the whole usage; one line says enough
        self.exit(2, _error_line(f"{self.prog}: error: ", f"{message} (see --help)") + "\n")


def _error_line(prefix: str, message) -> str:
    """One error line: the message (which may quote a name or a field from disk) escaped and cut to fit."""
    return prefix + printable(message, MAX_LINE - len(prefix))


MAX_SEED = 2**32 - 1  # profiles.MAX_SEED


def _integer_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer >= minimum (and <= maximum), with a one-line message otherwise."""
    description = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if maximum is not None:
        description = f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {description}, got {value}")
        return value

    return parse


_positive_int, _seed = _integer_at_least(1), _integer_at_least(0, MAX_SEED)


class _Distinct(argparse.Action):
    """A list option whose values must not repeat (`--seeds 0 0` would train one run twice)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(set(values)) != len(values):
            parser.error(f"{option_string}: each value once, got {' '.join(map(str, values))}")
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mnist-lab", description="Regenerate the INT305 MNIST report's models, tables and figures.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train one experiment and write its run directory")
    train.add_argument("experiment", choices=EXPERIMENT_NAMES, metavar="EXPERIMENT",
                       help=f"one of: {', '.join(EXPERIMENT_NAMES)}")
    train.add_argument("--epochs", type=_positive_int, help="override the report's number of epochs")
    train.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    train.add_argument("--device", choices=DEVICES, default="auto", help="auto picks CUDA, then MPS, then CPU")
    train.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="fp32 is bit-faithful; auto uses bf16 autocast on CUDA only")
    train.add_argument("--limit-train", type=_positive_int, help="train on the first N training images")
    train.add_argument("--limit-test", type=_positive_int, help="evaluate on the first N test images")
    train.add_argument("--data-root", type=Path, help="folder holding MNIST/raw/ (default: $MNIST_LAB_DATA or data/)")
    train.add_argument("--download", action="store_true", help="fetch missing MNIST files with torchvision")
    train.add_argument("--out", type=Path, help="also copy the run directory here (the run cache: artifacts/runs/)")
    train.add_argument("--deterministic", action="store_true",
                       help="on a GPU, deterministic kernels only (slower); the CPU always is")
    train.add_argument("--faithful", action="store_true",
                       help="train the report's code exactly: none of the trainer's speed-ups (mnist_lab/speed)")
    train.add_argument("--no-cuda-graphs", action="store_true",
                       help="on a GPU, train step by step instead of replaying each step as a CUDA graph")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    run = commands.add_parser("run", help="execute the notebooks with papermill, regenerating tables and figures")
    run.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="notebook names (default: all, in order)")
    run.add_argument("--profile", choices=PROFILE_NAMES, default="full",
                     help="full: the report's schedule on all of MNIST; smoke: small subsets, minutes on a CPU")
    run.add_argument("--device", choices=DEVICES, help="passed to the notebooks that train (their default: auto)")
    run.add_argument("--seeds", type=_seed, nargs="+", action=_Distinct,
                     help="train each experiment once per seed")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="set a notebook parameter; VALUE is a Python literal (e.g. -p seeds '[0, 1]')")
    run.add_argument("--force", action="store_true", help="re-run every notebook named, stale or not")
    run.add_argument("--address", help="train the missing runs as Ray tasks on this cluster (as `sweep --address`)")
    run.add_argument("--studies", choices=("frozen", "train"), default="frozen",
                     help="the calibration studies' runs: read from frozen/ where the cache lacks them (default), "
                          "or trained here")
    run.add_argument("--runs-per-gpu", type=_positive_int, metavar="N",
                     help="on a GPU, train N runs at once, each in a process of its own (default: with CUDA's MPS "
                          "daemon running, as many as the GPU's memory and this machine's cores hold; else 1)")
    run.add_argument("--no-progress", action="store_true",
                     help="no bar of each notebook's cells (drawn only on a terminal; a log gets the epoch lines alone)")

    sweep = commands.add_parser("sweep", help="train experiments × seeds × overrides as Ray tasks into the run cache")
    sweep.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                       help=f"experiments ({', '.join(EXPERIMENT_NAMES)}) or variants such as 'cnn[hflip=true]'")
    sweep.add_argument("--seeds", type=_seed, nargs="+", action=_Distinct, default=[0],
                       help="one run per seed (default: 0)")
    sweep.add_argument("--set", action="append", default=[], metavar="FIELD=V1,V2",
                       help="train a variant per value (e.g. --set lr=1e-3,3e-4 --set augmentation.hflip=true,false)")
    sweep.add_argument("--profile", choices=PROFILE_NAMES, default="full", help="whose run cache, and its subsets")
    sweep.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="where each run trains; cuda asks Ray for one GPU per run")
    sweep.add_argument("--address", help="an existing Ray cluster (default: $RAY_ADDRESS, else Ray started here, "
                                          "on 127.0.0.1 only)")
    sweep.add_argument("--connect-timeout", type=_positive_int, default=60, metavar="SECONDS",
                       help="how long to wait for the cluster at --address (default: 60)")
    sweep.add_argument("--cpus-per-run", type=_positive_int,
                       help="threads (and Ray CPUs) per run on CPUs (default: every core, one run at a time)")

    status = commands.add_parser("status", help="list each notebook's artifacts as fresh or stale, and why")
    status.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="notebook names (default: all)")
    status.add_argument("--profile", choices=PROFILE_NAMES, default="full", help="whose artifacts")
    status.add_argument("--device", choices=DEVICES, help="as for `run`: a change of parameter makes a notebook stale")
    status.add_argument("--seeds", type=_seed, nargs="+", action=_Distinct, help="as for `run`")
    status.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="as for `run`")
    freeze = commands.add_parser("freeze", help="write the calibration studies' runs from the run cache into frozen/ "
                                                "(after `run --studies train`)")
    freeze.add_argument("--profile", choices=PROFILE_NAMES, default="full", help="whose runs")
    rekey = commands.add_parser("rekey", help="move frozen/PROFILE and the profile's run cache to the current "
                                              "code-hash scheme, without retraining (records of older versions)")
    rekey.add_argument("--profile", choices=PROFILE_NAMES, default="full", help="whose runs")
    status.add_argument("--runs", action="store_true",
                        help="list the profile's run cache instead: each run's key, names, settings and freshness")

    report = commands.add_parser("report", help="build the LaTeX report from a profile's artifacts into a PDF")
    report.add_argument("--profile", choices=PROFILE_NAMES, default="full",
                        help="whose artifacts: artifacts/PROFILE/ (run `mnist-lab run --profile PROFILE` first)")
    report.add_argument("--force", action="store_true", help="rebuild the PDF even if latexmk finds it up to date")
    report.add_argument("--verbose", action="store_true", help="show latexmk's and LaTeX's own output")
    report.add_argument("--allow-stale", action="store_true",
                        help="build from stale artifacts anyway; the title page says what is stale")
    pack = commands.add_parser("pack", help="pack a profile's artifacts into one archive (e.g. from a GPU machine)")
    pack.add_argument("--profile", choices=PROFILE_NAMES, default="full", help="whose artifacts")
    pack.add_argument("--out", type=Path,
                      help="the archive: a new path or a regular file (default: artifacts/PROFILE.tar.gz)")
    pack.add_argument("--without-weights", action="store_true",
                      help="leave the runs' model.pt out: enough for `report` and the pages elsewhere, a fraction "
                           "of the size; `run` there retrains a run only where a notebook loads its model")
    unpack = commands.add_parser("unpack", help="check a packed profile and put it back under artifacts/, "
                                                "replacing that profile's")
    unpack.add_argument("archive", type=Path,
                        help="a file made by `mnist-lab pack`; refused whole unless it matches its manifest")

    bench = commands.add_parser("bench", help="time the trainer against the usual DataLoader loop on the report's models")
    bench.add_argument("--models", nargs="+", choices=BENCH_MODELS, metavar="MODEL", default=list(BENCH_MODELS),
                           help="which models (default: all four)")
    bench.add_argument("--images", type=_positive_int, default=1024, help="training subset size, one epoch (default 1024)")
    bench.add_argument("--repeats", type=_positive_int, default=8,
                           help="timed epochs per loop, the two loops taking turns (default 8)")
    bench.add_argument("--full-schedule", action="store_true",
                           help="also train the report's whole schedule once per model and time it (tens of minutes on a CPU)")
    bench.add_argument("--data-root", type=Path, help="folder holding MNIST/raw/ (default: $MNIST_LAB_DATA or data/)")
    bench.add_argument("--out", type=Path, help="JSON results (default: artifacts/bench/bench.json)")
    return parser


def _parameters(args) -> tuple[dict, dict]:
    """The -p parameters (each checked against its notebook) and the shared --device/--seeds, read
    as `--set` values are: true/false, a Python literal, or else the word as a string."""
    from .experiments import parse_value

    parameters = {name: parse_value(value) for name, value in args.parameter}
    shared = {"device": args.device, "seeds": args.seeds}
    return parameters, {key: value for key, value in shared.items() if value is not None}


def _run(args) -> None:
    from .workbook import notebooks

    parameters, shared = _parameters(args)
    notebooks.execute_all(args.notebooks, profile=args.profile, parameters=parameters, shared=shared,
                          force=args.force, progress=not args.no_progress and sys.stderr.isatty(),
                          address=args.address, studies=args.studies, runs_per_gpu=args.runs_per_gpu,
                          after=_write_pages)


def _write_pages(profile: str) -> None:
    """The offline pages of what the runner just committed (called under the profile's lock)."""
    from .workbook.html import write_site

    print(f"pages: {write_site(profile)}", flush=True)


def _status(args) -> None:
    from .workbook import notebooks, provenance
    from . import paths

    parameters, shared = _parameters(args)
    directory = paths.profile_dir(args.profile)
    print(f"profile {args.profile}: {directory}")
    if args.runs:
        _list_runs(args.profile)
        return
    frozen = notebooks.frozen_line(args.profile)
    if frozen:
        print(f"frozen: {frozen}")
    for name in args.notebooks or notebooks.available():
        reasons = notebooks.status(name, args.profile, parameters, shared)
        record = provenance.read_record(args.profile, name) or {"outputs": {}}
        when = f"ran {record['started']}, {record['wall_seconds']:.0f} s" if "started" in record else "not run"
        print(f"{name}: {'STALE' if reasons else 'fresh'} ({printable(when, 200)})")
        for reason in reasons:  # reasons and outputs quote a record's paths: escaped, as any text from disk
            print(f"    because {printable(reason, 400)}")
        for output in record["outputs"]:
            print(f"    {'stale' if reasons else 'fresh'}  {printable(output, 400)}")


def _list_runs(profile: str) -> None:
    """Every run in the profile's cache: its key, the names it goes by, its settings, whether its
    code still matches; and whether any two runs share a spec (each spec should train once)."""
    import json

    from .runs import for_profile
    from .runs.cache import staleness

    cache = for_profile(profile)
    names, runs = cache.names(), cache.runs()
    values = [json.dumps((record or {}).get("inputs"), sort_keys=True) for _, record in runs]
    print(f"runs in {cache.folder}: {len(runs)}, {len(set(values))} distinct specs")
    for directory, record in runs:
        key = (record or {}).get("fingerprint", "")
        called = ", ".join(names.get(key, [])) or "(no name)"
        reasons = staleness(directory, name="it")
        inputs = (record or {}).get("inputs") or {}
        recipe = inputs.get("recipe") if isinstance(inputs.get("recipe"), dict) else {}
        # A folder's name and its record's fields are an archive's or another machine's words: a newline
        # or an escape sequence in them must not forge a line ("all runs fresh") or drive the terminal.
        fields = ", ".join(printable(value, 40) for value in (
            recipe.get("model"), f"{recipe.get('epochs')} epochs", f"seed {inputs.get('seed')}", inputs.get("device")))
        state = "STALE: " + "; ".join(reasons) if reasons else "fresh"
        print(f"  {printable(directory.name, 40)}  {printable(called, 200)}: {fields}: {printable(state, 400)}")
    repeated = len(values) - len(set(values))
    if repeated:
        print(f"  {repeated} run(s) repeat another's spec")


def _sweep(args) -> None:
    from . import sweep

    summary = sweep.run(args.experiments, seeds=args.seeds, settings=args.set, profile=args.profile,
                        address=args.address, device=args.device, cpus_per_run=args.cpus_per_run,
                        connect_timeout=args.connect_timeout)
    if summary["failed"]:
        raise LabError(f"{len(summary['failed'])} run(s) failed: {', '.join(summary['failed'])}; "
                       "the others are in the cache, and the same command retries the failed ones")


def _report(args) -> None:
    from .workbook import report

    pdf, changed = report.build(args.profile, force=args.force, verbose=args.verbose, allow_stale=args.allow_stale)
    print(f"report ({args.profile}): {pdf} ({'rebuilt' if changed else 'up to date'})")


def _train(args) -> None:
    import shutil

    from .data import load_mnist
    from .experiments import get_experiment
    from .files import atomic_dir
    from .runs import RunCache, check_replaceable
    from .runs.executor import Planned, train_here
    from .spec import RunSpec

    experiment = get_experiment(args.experiment)
    if args.epochs:
        experiment = experiment.replace(epochs=args.epochs)
    spec = RunSpec.of(experiment, args.seed, device=args.device, precision=args.precision,
                      limit_train=args.limit_train, limit_test=args.limit_test, fast=not args.faithful,
                      cuda_graphs=not args.no_cuda_graphs, deterministic=args.deterministic)
    out = args.out.resolve() if args.out else None
    if out:
        check_replaceable(out, verified=True)  # before training, not after: never the user's own files
    data = load_mnist(args.data_root, download=args.download)
    cache = RunCache(paths.ARTIFACTS / "runs")  # `train`'s own cache: the same command twice trains once
    run = cache.get(spec)
    if run is None:
        # The one way a run is trained into a cache (the runner's too): a checkpoint after every
        # epoch, so the same command again after an interruption resumes (only from one saved here).
        run = train_here(cache, Planned(experiment.name, spec), data, lambda line: print(line, flush=True),
                         progress=not args.no_progress)
        verb = "trained"
    else:
        verb = "already in the run cache"
    cache.label(experiment.name, spec)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(out) as staging:
            for file in run.directory.iterdir():
                shutil.copyfile(file, staging / file.name)
    metrics = run.metrics
    print(f"{experiment.name} seed {args.seed} ({verb}): test accuracy {metrics['test_accuracy']:.2f}% after "
          f"{metrics['epochs']} epochs, {metrics['train_images_per_second']:.0f} images/s; run: {out or run.directory}")


def _freeze(args) -> None:
    from .workbook import notebooks

    print(f"froze the {args.profile} profile's calibration-study runs into {notebooks.freeze(args.profile)}")


def _rekey(args) -> None:
    from .runs import frozen, rekey
    from .runs.cache import for_profile
    from .workbook.lock import profile_lock

    folders = {f"frozen/{args.profile}": frozen.folder(args.profile),
               f"the {args.profile} run cache": for_profile(args.profile).folder}
    with profile_lock(args.profile, "rekey"):  # the run cache is the profile's: no run writes it meanwhile
        for name, folder in folders.items():
            if not folder.is_dir():
                continue
            done = rekey.rekey_folder(folder)
            print(f"{name}: {len(done.moved)} record(s) moved to code-hash scheme {rekey.SCHEME}, "
                  f"{len(done.current)} already under it, {len(done.refused)} left as they were")
            for directory, why in sorted(done.refused.items())[:5]:  # a folder's name and a record's words
                print(f"    {printable(directory, 40)}: {printable(why, 250)}")


def _pack(args) -> None:
    from .workbook import archive

    packed = archive.pack(args.profile, args.out, weights=not args.without_weights)
    without = " without the runs' weights" if args.without_weights else ""
    print(f"packed the {args.profile} artifacts{without} into {packed} ({packed.stat().st_size / 2**20:.1f} MiB)")


def _unpack(args) -> None:
    from .workbook import archive

    profile = archive.unpack(args.archive)
    print(f"unpacked {args.archive} into {paths.profile_dir(profile)}; `mnist-lab report --profile {profile}` builds it")


def _bench(args) -> None:
    from .bench import benchmark
    from .files import check_output
    from .machine import cpu_slot

    if args.out:
        check_output(args.out, "bench")  # before minutes of timing, as pack's --out

    # The whole benchmark holds the machine's CPU slot; its two sides, which it starts, take turns under it.
    with cpu_slot("the benchmark"):
        report = benchmark.run(tuple(args.models), images=args.images, repeats=args.repeats,
                               full_schedule=args.full_schedule, root=args.data_root, out=args.out)
    print(benchmark.table(report))


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    args = args or build_parser().parse_args(argv)
    try:
        {"train": _train, "run": _run, "sweep": _sweep, "status": _status, "report": _report,
         "pack": _pack, "unpack": _unpack, "bench": _bench, "freeze": _freeze,
         "rekey": _rekey}[args.command](args)
    except LabError as error:
        print(_error_line("mnist-lab: error: ", error), file=sys.stderr)
        return 1
    except BrokenPipeError:  # `mnist-lab status | head`: the reader has what it wanted; no error to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush goes nowhere
        return 141  # as a shell reports a process ended by SIGPIPE
    except OSError as error:  # a folder that cannot be written, a disk full: the system's own words
        print(_error_line("mnist-lab: error: ", error), file=sys.stderr)
        return 1
    except KeyboardInterrupt as interruption:
        return _interrupted(interruption)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: every clean-up that keeps the previous artifacts
    intact on Ctrl-C runs for it too."""


class HungUp(KeyboardInterrupt):
    """SIGHUP (the terminal closed, or `kill -HUP`), raised where Ctrl-C would be, for the same
    clean-ups: its default action killed the process where it stood, leaving latex.partial/ behind."""


# The signal the handlers below last raised for: a library may catch the exception and raise a
# plain KeyboardInterrupt in its place (Ray's ray.wait does), and the status must still say which.
_received: list[type] = []


def _on_sigterm(signum, frame):
    _received.append(Terminated)
    raise Terminated()


def _on_sighup(signum, frame):
    _received.append(HungUp)
    raise HungUp()


def _interrupted(interruption: BaseException) -> int:
    """One line, and the shell's exit status for the signal: 130 for SIGINT, 143 for SIGTERM, 129 for
    SIGHUP (whose terminal may be gone: the line is then lost, the status still says it)."""
    if type(interruption) is KeyboardInterrupt and _received:  # re-raised plain by a library
        interruption = _received[-1]()
    line, code = ((HUNG_UP, 129) if isinstance(interruption, HungUp) else
                  (TERMINATED, 143) if isinstance(interruption, Terminated) else (INTERRUPTED, 130))
    try:
        print(line, file=sys.stderr)
    except OSError:
        pass
    return code


def _tell_unusable_records() -> None:
    """A record on disk that is unusable is read as absent, and said once, on one line (`records.tell`)."""
    import logging

    class OneLine(logging.Formatter):
        def format(self, record):
            return _error_line("mnist-lab: warning: ", record.getMessage())

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    logger = logging.getLogger("mnist_lab.records")
    logger.addHandler(handler)
    logger.propagate = False


def entry_point() -> None:
    """The `mnist-lab` command: a process of the project's own, so process-wide settings go here, once."""
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    _tell_unusable_records()
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # under nohup it stays ignored, as nohup means
        signal.signal(signal.SIGHUP, _on_sighup)
    try:
        args = build_parser().parse_args()  # first: --help and typos answer before torch is imported
        import os

        from .speed import memory

        memory.keep_freed_memory()  # this process trains on the CPU (train, bench's own runs)
        os.environ.update(memory.ENVIRONMENT)  # and so do the notebook kernels it starts
        code = main(args=args)
    except KeyboardInterrupt as interruption:  # during start-up (importing torch), before main's own handler
        code = _interrupted(interruption)
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
