"""The LaTeX report, built from one profile's artifacts: `mnist-lab report --profile full|smoke`.

    report/main.tex, report/sections/*.tex   the source, one for both profiles
    artifacts/<profile>/report_info.tex       commit, profile, device and date, written here
    artifacts/<profile>/latex/                latexmk's working folder (aux, log, fdb_latexmk)
    artifacts/<profile>/report.pdf            the report

The profile's artifact folder goes on TEXINPUTS, so `figures/x.pdf`, `tables/x.tex` and
`macros/x.tex` in the source resolve to that profile's files. latexmk decides what to rebuild
(it compares file contents), and report_info.tex is only rewritten when its text changes, so
building twice with nothing changed does nothing the second time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from .. import paths
from ..errors import LabError
from ..files import atomic_path, write_text
from ..profiles import get_profile
from .lock import profile_lock
from .provenance import git_state

MAIN = "main.tex"
LATEX_TIMEOUT = 600  # seconds; a healthy build takes well under a minute
INSTALL_HINT = "run `make tex` (on Debian/Ubuntu it installs the packages listed in report/install-tex.sh)"

_COMMENT = re.compile(r"(?<!\\)%.*$", re.MULTILINE)
_FIGURE = re.compile(r"\\resultfigure(?:\[[^\]]*\])?\{([^}]+)\}\{([^}]+)\}")
_TABLE = re.compile(r"\\resulttable\{([^}]+)\}\{([^}]+)\}")
_MACRO_FILE = re.compile(r"\\input\{macros/([^}]+?)(?:\.tex)?\}")
_VALUE = re.compile(r"\\(?:val|pct|ifbelowone)\{([A-Za-z]+)\}|\\ifless\{([A-Za-z]+)\}\{([A-Za-z]+)\}")
_DEFINED = re.compile(r"\\newcommand\{?\\([A-Za-z]+)\}?")


# ---- what the report needs ---------------------------------------------------------------


def sources() -> list[Path]:
    return [paths.REPORT / MAIN, *sorted((paths.REPORT / "sections").glob("*.tex"))]


def _source_text() -> str:
    return "\n".join(_COMMENT.sub("", path.read_text()) for path in sources())


def required_artifacts() -> dict[str, str]:
    """Each artifact the LaTeX source reads (relative to artifacts/<profile>/), with the notebook that makes it."""
    text = _source_text()
    needed = {f"figures/{name}.pdf": notebook for name, notebook in _FIGURE.findall(text)}
    needed.update({f"tables/{name}.tex": notebook for name, notebook in _TABLE.findall(text)})
    needed.update({f"macros/{notebook}.tex": notebook for notebook in _MACRO_FILE.findall(text)})
    return needed


def required_values() -> set[str]:
    """The generated macros the prose quotes (\\val{Name}, \\pct{Name}, \\ifless{A}{B}...)."""
    return {name for match in _VALUE.findall(_source_text()) for name in match if name}


def check_artifacts(profile: str) -> None:
    """Say which artifacts are missing and which notebook makes them, before LaTeX gets to fail."""
    directory = paths.profile_dir(profile)
    needed = required_artifacts()
    missing = {path: notebook for path, notebook in needed.items() if not (directory / path).is_file()}
    if missing:
        lines = [f"  {path} (made by notebooks/{notebook}.ipynb)" for path, notebook in sorted(missing.items())]
        notebooks = sorted(set(missing.values()))
        raise LabError(
            f"the report needs {len(missing)} artifact(s) missing from {directory}:\n" + "\n".join(lines)
            + f"\nrun `mnist-lab run --profile {profile} {' '.join(notebooks)}` first"
        )
    defined = set()
    for path in needed:
        if path.startswith("macros/"):
            defined.update(_DEFINED.findall((directory / path).read_text()))
    undefined = sorted(required_values() - defined)
    if undefined:
        files = ", ".join(sorted(p for p in needed if p.startswith("macros/")))
        raise LabError(
            f"the report quotes result(s) no notebook defined: {', '.join(undefined)}; "
            f"looked in {directory} ({files}): re-run the notebooks, or fix the name in report/"
        )


# ---- report_info.tex: where this build came from ------------------------------------------


def _latex_escape(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(replacements.get(char, char) for char in text)


def _typewriter(text: str) -> str:
    """Names and paths as typed: \\detokenize keeps `_` a real underscore (it reads and searches as written)."""
    return "\\texttt{\\detokenize{" + "".join(c for c in text if c not in "{}\\%#") + "}}"


def _thousands(number: int) -> str:
    return f"{number:,}"


def _environments(directory: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("runs/*/*/environment.json"))]


def _records(directory: Path) -> list[dict]:
    """The notebooks' provenance records (written by the runner after each successful execution)."""
    records = []
    for path in sorted(directory.glob("provenance/*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return records


def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _run_date(directory: Path) -> datetime | None:
    """When the notebooks last ran: their provenance records, else papermill's metadata, else the runs."""
    times = [_parse_time(record.get("started", "")) for record in _records(directory)]
    if not any(times):
        for path in directory.glob("notebooks/*.ipynb"):
            try:
                times.append(_parse_time(json.loads(path.read_text())["metadata"]["papermill"]["end_time"]))
            except (KeyError, TypeError, ValueError):
                continue
    if not any(times):
        times = [datetime.fromtimestamp(p.stat().st_mtime, timezone.utc) for p in directory.glob("runs/*/*/metrics.json")]
    times = [t for t in times if t is not None]
    return max(times) if times else None


def _commit_text(commit: str | None, dirty: bool | None) -> str:
    if not commit:
        return "unknown (not a git checkout)"
    state = "with uncommitted changes" if dirty else "clean"
    return f"\\texttt{{{_latex_escape(commit[:7])}}} ({state})"


def info(profile: str) -> dict[str, str]:
    """The title page's provenance, as LaTeX-ready text."""
    settings = get_profile(profile)
    directory = paths.profile_dir(profile)
    state = git_state()
    built = _commit_text(state["commit"], state["dirty"])
    states = {(r["git"].get("commit"), r["git"].get("dirty")) for r in _records(directory) if r.get("git")}
    ran = "; ".join(_commit_text(commit, dirty) for commit, dirty in sorted(states, key=str)) or "unknown"
    environments = _environments(directory)
    devices = sorted({f"{env.get('device_name') or '?'} ({env.get('device', '?')})" for env in environments})
    torch_versions = sorted({str(env.get("torch", "?")) for env in environments})
    date = _run_date(directory)
    if settings.limit_train is None and settings.max_epochs is None:
        profile_text = "the report's schedule on all of MNIST"
    else:
        profile_text = (f"the first {_thousands(settings.limit_train)} training and {_thousands(settings.limit_test)} "
                        f"test images, at most {settings.max_epochs} epochs")
    return {
        "ReportRunCommit": ran,  # the commit(s) the notebooks ran at
        "ReportBuildCommit": built,  # the commit this PDF was built at
        "ReportProfile": _latex_escape(settings.name),
        "ReportProfileText": profile_text,
        "ReportTrainImages": _thousands(settings.limit_train or 60000),
        "ReportTestImages": _thousands(settings.limit_test or 10000),
        "ReportEpochCap": str(settings.max_epochs or "the report's"),
        "ReportDevice": _latex_escape("; ".join(devices)) if devices else "no training runs found",
        "ReportTorch": _latex_escape(", ".join(torch_versions)) if torch_versions else "unknown",
        "ReportDate": date.strftime("%Y-%m-%d") if date else "unknown",
    }


def stale_notebooks(profile: str) -> dict[str, list[str]]:
    """The notebooks whose artifacts no longer match their inputs, with the reasons."""
    from . import notebooks

    reasons = {name: notebooks.stale_as_run(name, profile) for name in notebooks.available()}
    return {name: why for name, why in reasons.items() if why}


def info_tex(profile: str, stale: dict[str, list[str]] | None = None) -> str:
    values = info(profile)
    lines = [f"% Written by `mnist-lab report --profile {profile}` (mnist_lab/build/report.py); do not edit."]
    lines.append(r"\SmokeProfiletrue" if profile == "smoke" else r"\SmokeProfilefalse")
    lines.append(r"\StaleArtifactstrue" if stale else r"\StaleArtifactsfalse")
    values["ReportStale"] = "; ".join(f"{_typewriter(name)}: {_typewriter(', '.join(why))}"
                                      for name, why in (stale or {}).items())
    lines += [f"\\newcommand{{\\{name}}}{{{text}}}" for name, text in values.items()]
    return "\n".join(lines) + "\n"


def write_info(profile: str, stale: dict[str, list[str]] | None = None) -> bool:
    """Write report_info.tex, recipes_table.tex and provenance_table.tex where their text changed;
    say whether any did."""
    directory = paths.profile_dir(profile)
    changed = False
    for name, text in (("report_info.tex", info_tex(profile, stale)), ("recipes_table.tex", recipes_tex(profile)),
                       ("provenance_table.tex", provenance_tex(profile))):
        target = directory / name
        if not (target.is_file() and target.read_text() == text):
            write_text(target, text)
            changed = True
    return changed


def recipes_tex(profile: str) -> str:
    """The appendix's table of recipes, one row per experiment of `EXPERIMENTS` as this profile trains it."""
    from ..experiments import EXPERIMENTS

    settings = get_profile(profile)
    lines = [f"% Written by `mnist-lab report --profile {profile}` from mnist_lab/experiments.py; do not edit.",
             r"\begin{tabular}{@{}llllrrll@{}}", r"\toprule",
             r"Experiment & Model & Optimizer & Learning rate & Epochs & Batch & Schedule & Augmentation \\",
             r"\midrule"]
    for experiment in EXPERIMENTS.values():
        experiment = settings.apply(experiment)
        optimizer = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[experiment.optimizer]
        if experiment.weight_decay:
            optimizer += f", weight decay {experiment.weight_decay:g}"
        schedule = (f"$\\times{experiment.lr_gamma:g}$ every {experiment.lr_step} epochs" if experiment.lr_step
                    else "constant")
        augmentation = experiment.augmentation
        parts = (["flip"] if augmentation.hflip else []) + (
            [f"rotation $\\pm{augmentation.max_rotation:g}^\\circ$"] if augmentation.max_rotation else [])
        lines.append(f"{_typewriter(experiment.name)} & {_typewriter(experiment.model)} & {optimizer} & "
                     f"{experiment.lr:g} & {experiment.epochs} & {experiment.batch_size} & {schedule} & "
                     f"{' + '.join(parts) or 'none'} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def provenance_tex(profile: str) -> str:
    """The appendix's table of what made the artifacts: one row per notebook run and per training run."""
    directory = paths.profile_dir(profile)
    # Two tables, one above the other, each scaled to the text width on its own.
    lines = [f"% Written by `mnist-lab report --profile {profile}` from artifacts/{profile}/provenance/; do not edit.",
             r"\begin{center}\adjustbox{max width=\linewidth}{%", r"\begin{tabular}{@{}lllrl@{}}", r"\toprule",
             r"Notebook & Ran (UTC) & Commit & Wall time & Device \\", r"\midrule"]
    for record in _records(directory):
        lines.append(
            f"{_typewriter(record['notebook'])} & {_latex_escape(record['started'].replace('T', ' ')[:16])} & "
            f"{_commit_text(record['git'].get('commit'), record['git'].get('dirty'))} & "
            f"{record['wall_seconds']:.0f} s & {_latex_escape(str(record.get('device')))} \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}}\end{center}", "",
              r"\begin{center}\adjustbox{max width=\linewidth}{%", r"\begin{tabular}{@{}llrrrl@{}}", r"\toprule",
              r"Experiment & Seed & Epochs & Test accuracy & Training time & Fingerprint \\", r"\midrule"]
    for config_path in sorted(directory.glob("runs/*/*/config.json")):
        config = json.loads(config_path.read_text())
        metrics = json.loads((config_path.parent / "metrics.json").read_text())
        lines.append(
            f"{_typewriter(config['experiment']['name'])} & {config['seed']} & {metrics['epochs']} & "
            f"{metrics['test_accuracy']:.2f}\\,\\% & {metrics['train_seconds']:.0f} s & "
            f"\\texttt{{{str(config.get('fingerprint') or 'none')[:12]}}} \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}}\end{center}"]
    return "\n".join(lines) + "\n"


# ---- the build ----------------------------------------------------------------------------


def build_dir(profile: str) -> Path:
    return paths.profile_dir(profile) / "latex"


def pdf_path(profile: str) -> Path:
    return paths.profile_dir(profile) / "report.pdf"


def first_error(log: str, context: int = 6) -> str | None:
    """The first error in a LaTeX log (-file-line-error style, or `! ...`), with its `l.N` context line."""
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^(?:\S.*?):\d+: ", line) or line.startswith("! "):
            found = [line.strip()]
            for following in lines[index + 1: index + 1 + context]:
                if following.strip():
                    found.append(following.strip())
                if re.match(r"^l\.\d+", following):
                    break
            return "\n".join(found)
    return None


def _latex_error(profile: str, work: Path, output: str) -> LabError:
    log_path = work / MAIN.replace(".tex", ".log")
    error = first_error(log_path.read_text(errors="replace")) if log_path.is_file() else None
    if error:
        error = error.replace("./sections/", "report/sections/").replace(f"./{MAIN}", f"report/{MAIN}")
        return LabError(f"LaTeX failed on the {profile} report: {error}\n(full log: {_keep_log(profile, log_path)})")
    blg = log_path.with_suffix(".blg")
    if blg.is_file() and "error message" in blg.read_text(errors="replace"):
        return LabError(f"BibTeX failed on report/references.bib; see {_keep_log(profile, blg)}")
    tail = "\n".join(output.strip().splitlines()[-15:])
    return LabError(f"latexmk failed on the {profile} report:\n{tail}")


# Warnings after which the PDF is broken, not just untidy: LaTeX carries on with `??` for a
# reference, drops a figure, or closes an unbalanced group at the end of the document.
_BROKEN = re.compile(
    r"^(?:LaTeX Warning: (?:Reference|Citation) .* undefined.*"
    r"|LaTeX Warning: File .* not found.*"
    r"|\(\\end occurred (?:inside a group|when .* was incomplete).*"
    r"|! .*)$", re.MULTILINE)


def broken_warnings(log: str) -> list[str]:
    return list(dict.fromkeys(match.group(0).strip() for match in _BROKEN.finditer(log)))


def build(profile: str, *, force: bool = False, verbose: bool = False, allow_stale: bool = False) -> tuple[Path, bool]:
    """Build artifacts/<profile>/report.pdf; return its path and whether it changed.

    A report from stale artifacts is refused, or with `allow_stale` built with a warning
    on its title page naming what changed. One build at a time per profile, and none while
    `mnist-lab run` writes the same artifacts.
    """
    get_profile(profile)
    latexmk = shutil.which("latexmk")
    if latexmk is None:
        raise LabError(f"latexmk not found, so the report cannot be built: {INSTALL_HINT}")
    with profile_lock(profile, "report"):
        built = _build(profile, latexmk, force=force, verbose=verbose, allow_stale=allow_stale)
        from .html import write_site

        write_site(profile)  # the index links the PDF
        return built


def _build(profile: str, latexmk: str, *, force: bool, verbose: bool, allow_stale: bool) -> tuple[Path, bool]:
    check_artifacts(profile)
    stale = stale_notebooks(profile)
    if stale and not allow_stale:
        why = "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in stale.items())
        raise LabError(f"the {profile} artifacts are stale ({why}); run `mnist-lab run --profile {profile}` first, "
                       "or pass --allow-stale to build a report marked as stale")
    write_info(profile, stale)

    directory = paths.profile_dir(profile)
    # latexmk works in a copy of the last good build folder (so it still rebuilds only what
    # changed); the copy replaces it only after a clean build. An interrupted or failed build
    # leaves the good folder as it was, and its state never poisons the next build.
    out, work = build_dir(profile), build_dir(profile).with_name("latex.partial")
    shutil.rmtree(work, ignore_errors=True)
    if out.is_dir():
        shutil.copytree(out, work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # The profile's artifacts first, then the rest of the search path (the trailing separator
    # keeps TeX's defaults, "." i.e. report/ included).
    env["TEXINPUTS"] = f"{directory}{os.pathsep}{env.get('TEXINPUTS', '')}"
    if not env["TEXINPUTS"].endswith(os.pathsep):
        env["TEXINPUTS"] += os.pathsep
    env["max_print_line"] = "1000"  # unwrapped log lines: error messages and paths stay whole
    date = _run_date(directory)
    if date is not None:  # the PDF's own timestamp: the run's, so a rebuild of the same run is byte-identical
        env["SOURCE_DATE_EPOCH"] = str(int(datetime(date.year, date.month, date.day, tzinfo=timezone.utc).timestamp()))
    command = [latexmk, "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error",
               f"-outdir={work}", *(["-g"] if force else []), *([] if verbose else ["-silent"]), MAIN]
    try:
        done = subprocess.run(command, cwd=paths.REPORT, env=env, stdin=subprocess.DEVNULL, text=True,
                              stdout=None if verbose else subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=LATEX_TIMEOUT)
        log_path = work / MAIN.replace(".tex", ".log")
        if done.returncode != 0:
            raise _latex_error(profile, work, done.stdout or "")
        broken = broken_warnings(log_path.read_text(errors="replace")) if log_path.is_file() else []
        if broken:
            raise LabError(f"LaTeX built the {profile} report with a broken document: {broken[0]}"
                           + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else "")
                           + f"\n(full log: {_keep_log(profile, log_path)})")
    except subprocess.TimeoutExpired:
        shutil.rmtree(work, ignore_errors=True)
        raise LabError(f"latexmk took over {LATEX_TIMEOUT} s on the {profile} report") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)

    built = out / MAIN.replace(".tex", ".pdf")
    target = pdf_path(profile)
    if target.is_file() and target.read_bytes() == built.read_bytes():
        return target, False
    with atomic_path(target) as temporary:
        shutil.copyfile(built, temporary)
    return target, True


def _keep_log(profile: str, log_path: Path) -> Path:
    """Keep a failed build's log beside the artifacts (its build folder is discarded)."""
    kept = paths.profile_dir(profile) / "latex-failed.log"
    shutil.copyfile(log_path, kept)
    return kept
