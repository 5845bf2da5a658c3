"""The LaTeX report, built from one profile's artifacts: `mnist-lab report --profile full|smoke`.

    report/main.tex, report/sections/*.tex   the source, one for both profiles
    artifacts/<profile>/report_info.tex       commit, profile, device and date, written here
    artifacts/<profile>/latex/                latexmk's working folder (aux, log, fdb_latexmk)
    artifacts/<profile>/report.pdf            the report

The profile's artifact folder goes on TEXINPUTS, so `figures/x.pdf`, `tables/x.tex` and
`macros/x.tex` in the source resolve to that profile's files. latexmk decides what to rebuild
(it compares file contents), and report_info.tex is only rewritten when its text changes, so
building twice with nothing changed does nothing the second time.

Everything under artifacts/ may come from another machine (`mnist-lab unpack`), so nothing
read from there is trusted: records and runs are checked field by field before they are
quoted, every value is escaped for LaTeX, the generated TeX files LaTeX reads are checked
against an allow-list before latexmk runs (`check_latex_inputs`), and TeX itself runs with no
shell escape and may open only files below its working folders (openin_any/openout_any=p).
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
            defined.update(_DEFINED.findall(_read_tex(directory / path)))
    undefined = sorted(required_values() - defined)
    if undefined:
        files = ", ".join(sorted(p for p in needed if p.startswith("macros/")))
        raise LabError(
            f"the report quotes result(s) no notebook defined: {', '.join(undefined)}; "
            f"looked in {directory} ({files}): re-run the notebooks, or fix the name in report/"
        )


# ---- report_info.tex: where this build came from ------------------------------------------


def _latex_escape(text: str) -> str:
    """Text from a record as LaTeX prints it: special characters escaped, control characters
    (a line break would end \\newcommand's argument) as spaces."""
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(replacements.get(char, " " if _is_control(char) else char) for char in str(text))


def _typewriter(text: str) -> str:
    """Names and paths as typed: \\detokenize keeps `_` a real underscore (it reads and searches as written).

    \\detokenize's argument is still read by TeX first, so what could end it early or spell
    another character is dropped: braces, backslash, `%`, `#` and `^` (`^^7d` is a `}`)."""
    return "\\texttt{\\detokenize{" + "".join(c for c in str(text) if c not in "{}\\%#^" and not _is_control(c)) + "}}"


def _is_control(char: str) -> bool:
    return ord(char) < 32 or ord(char) == 127


def _thousands(number: int) -> str:
    return f"{number:,}"


# ---- reading what the runs recorded (untrusted: it may come from another machine) ----------

# What the report reads from each JSON file, as (what it must be, the check); anything else in
# a file is never read. A file that does not match is refused with one line naming it.
STRING = ("a string", lambda value: isinstance(value, str))
NUMBER = ("a number", lambda value: isinstance(value, (int, float)) and not isinstance(value, bool))
INTEGER = ("an integer", lambda value: isinstance(value, int) and not isinstance(value, bool))
OBJECT = ("an object", lambda value: isinstance(value, dict))
OPTIONAL_STRING = ("a string or null", lambda value: value is None or isinstance(value, str))
OPTIONAL_FLAG = ("true, false or null", lambda value: value is None or isinstance(value, bool))
RECORD_FIELDS = {"notebook": STRING, "started": STRING, "wall_seconds": NUMBER, "git": OBJECT}
GIT_FIELDS = {"commit": OPTIONAL_STRING, "dirty": OPTIONAL_FLAG}
CONFIG_FIELDS = {"experiment": OBJECT, "seed": INTEGER}
METRICS_FIELDS = {"epochs": INTEGER, "test_accuracy": NUMBER, "train_seconds": NUMBER}


def _json_kind(value) -> str:
    """A value's JSON type, for the error message."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(type(value), "a value")


def shape_problem(data, fields: dict) -> str | None:
    """What is wrong with `data` as an object holding `fields` (see RECORD_FIELDS), or None."""
    if not isinstance(data, dict):
        return f"it is {_json_kind(data)}, not an object"
    for key, (wanted, check) in fields.items():
        if key not in data:
            return f"it has no {key!r}"
        if not check(data[key]):
            return f"its {key!r} is {_json_kind(data[key])}, not {wanted}"
    return None


def _read_json(path: Path, what: str, fields: dict | None = None, *, fix: str):
    """A JSON file the report quotes, refused with one line when unreadable or not of `fields`' shape."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise LabError(f"{path} is not {what} mnist-lab can read ({error}); {fix}") from None
    problem = shape_problem(data, fields or {})
    if problem:
        raise LabError(f"{path} is not {what} mnist-lab can read ({problem}); {fix}")
    return data


def _environments(directory: Path) -> list[dict]:
    return [_read_json(path, "a training run's environment", fix=f"remove {path.parent} or train it again")
            for path in sorted(directory.glob("runs/*/environment.json"))]


def _records(directory: Path) -> list[dict]:
    """The notebooks' provenance records (written by the runner after each successful execution)."""
    records = []
    for path in sorted(directory.glob("provenance/*.json")):
        fix = f"run the notebook again: `mnist-lab run --profile {directory.name} {path.stem}`"
        record = _read_json(path, "a notebook's provenance record", RECORD_FIELDS, fix=fix)
        problem = shape_problem(record["git"], GIT_FIELDS)
        if problem:
            raise LabError(f"{path} is not a notebook's provenance record mnist-lab can read (its 'git': "
                           f"{problem.removeprefix('it ')}); {fix}")
        records.append(record)
    return records


def _training_runs(directory: Path) -> list[tuple[str, dict, dict]]:
    """Each training run's names (from the run cache's index), config and metrics, by name."""
    from ..runs import RunCache

    names = RunCache(directory / "runs").names()  # an index of another shape names nothing
    runs = []
    for config_path in sorted(directory.glob("runs/*/config.json")):
        fix = f"remove {config_path.parent} or train it again"
        config = _read_json(config_path, "a training run's config", CONFIG_FIELDS, fix=fix)
        if not isinstance(config["experiment"].get("model"), str) or not OPTIONAL_STRING[1](config.get("fingerprint")):
            raise LabError(f"{config_path} is not a training run's config mnist-lab can read (its model "
                           f"or its fingerprint is not a string); {fix}")
        metrics = _read_json(config_path.parent / "metrics.json", "a training run's metrics", METRICS_FIELDS, fix=fix)
        # A run may go by several names (`vit`, and a study's spelled-out variant): the shortest,
        # and how many more; a run no index names, by its model.
        called = sorted({label.rpartition(" seed ")[0] for label in names.get(config.get("fingerprint") or "", [])},
                        key=lambda label: (len(label), label))
        name = (called[0] + (f" (+{len(called) - 1})" if len(called) > 1 else "")) if called else \
            config["experiment"]["model"]
        runs.append((name, config, metrics))
    return sorted(runs, key=lambda run: (run[0], run[1]["seed"]))


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
                times.append(_parse_time(json.loads(path.read_bytes())["metadata"]["papermill"]["end_time"]))
            except (OSError, KeyError, TypeError, ValueError):
                continue
    if not any(times):
        times = [datetime.fromtimestamp(p.stat().st_mtime, timezone.utc) for p in directory.glob("runs/*/metrics.json")]
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


def notebooks_frozen_line(profile: str) -> str:
    """The line on the calibration studies' frozen runs in use ("" if none): read from the notebooks'
    records and the repository's frozen/, checked against the code now."""
    from . import notebooks

    return notebooks.frozen_line(profile)


def stale_notebooks(profile: str) -> dict[str, list[str]]:
    """The notebooks whose artifacts no longer match their inputs, with the reasons."""
    from . import notebooks

    reasons = {name: notebooks.stale_as_run(name, profile) for name in notebooks.available()}
    return {name: why for name, why in reasons.items() if why}


def info_tex(profile: str, stale: dict[str, list[str]] | None = None) -> str:
    values = info(profile)
    lines = [f"% Written by `mnist-lab report --profile {profile}` (mnist_lab/workbook/report.py); do not edit."]
    lines.append(r"\SmokeProfiletrue" if profile == "smoke" else r"\SmokeProfilefalse")
    lines.append(r"\StaleArtifactstrue" if stale else r"\StaleArtifactsfalse")
    values["ReportStale"] = "; ".join(f"{_typewriter(name)}: {_typewriter(', '.join(why))}"
                                      for name, why in (stale or {}).items())
    frozen = notebooks_frozen_line(profile)
    lines.append(r"\FrozenStudiestrue" if frozen else r"\FrozenStudiesfalse")
    values["ReportFrozen"] = _latex_escape(frozen)
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
    for record in _records(directory):  # each field checked by _records; every one escaped here
        lines.append(
            f"{_typewriter(record['notebook'])} & {_latex_escape(record['started'].replace('T', ' ')[:16])} & "
            f"{_commit_text(record['git'].get('commit'), record['git'].get('dirty'))} & "
            f"{record['wall_seconds']:.0f} s & {_latex_escape(str(record.get('device')))} \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}}\end{center}", "",
              r"\begin{center}\adjustbox{max width=\linewidth}{%", r"\begin{tabular}{@{}llrrrl@{}}", r"\toprule",
              r"Experiment & Seed & Epochs & Test accuracy & Training time & Fingerprint \\", r"\midrule"]
    for name, config, metrics in _training_runs(directory):  # numbers checked to be numbers, text escaped
        lines.append(
            f"{_typewriter(name)} & {config['seed']:d} & {metrics['epochs']:d} & "
            f"{metrics['test_accuracy']:.2f}\\,\\% & {metrics['train_seconds']:.0f} s & "
            f"{_typewriter((config.get('fingerprint') or 'none')[:12])} \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}}\end{center}"]
    return "\n".join(lines) + "\n"


# ---- what LaTeX may read from the profile folder -------------------------------------------
#
# A TeX file can read any file, write one, or run a command, and the files LaTeX reads from
# artifacts/<profile>/ may come from another machine. Those files are data: the tables pandas
# writes (Workbook.table), the macros (Workbook.macro) and the three files written above. So
# before latexmk runs, each is checked against an allow-list of what those writers produce;
# anything else (\input, \openin, \write18, \csname, \catcode, ^^5c, ...) is refused with one
# line, whatever its hash in the provenance record says.

# Control words: booktabs tables; \newcommand (macros, report_info.tex); LaTeX's escapes of
# special characters (pandas' and _latex_escape's); names typed as written (_typewriter); the
# flags of report_info.tex; the math of recipes_table.tex; provenance_table.tex's box.
ALLOWED_WORDS = frozenset({
    "begin", "end", "toprule", "midrule", "bottomrule",
    "newcommand",
    "textbackslash", "textasciitilde", "textasciicircum", "space",
    "texttt", "detokenize",
    "SmokeProfiletrue", "SmokeProfilefalse", "StaleArtifactstrue", "StaleArtifactsfalse", "FrozenStudiestrue",
    "FrozenStudiesfalse",
    "times", "pm", "circ",
    "adjustbox", "linewidth",
})
# Control symbols: \\ (end of row), the escaped specials, and \, (a thin space).
ALLOWED_SYMBOLS = frozenset("\\&%$#_{},")
# The only environments (\begin{filecontents} would write a file).
ALLOWED_ENVIRONMENTS = frozenset({"tabular", "center"})
# Why the usual suspects are refused (anything not allowed is refused; these say what it could do).
_DANGER = {
    **dict.fromkeys(("input", "include", "InputIfFileExists", "IfFileExists", "openin", "read", "readline",
                     "lstinputlisting", "verbatiminput", "includegraphics", "includepdf", "pdfximage",
                     "pdffiledump", "pdfmdfivesum", "pdffilesize", "pdffilemoddate", "scantokens",
                     "@input", "@@input", "usepackage", "RequirePackage", "documentclass"), "it reads a file"),
    **dict.fromkeys(("openout", "write", "immediate", "closeout", "shipout"), "it writes a file or runs a command"),
    **dict.fromkeys(("special", "pdfliteral", "pdfobj", "pdfannot"), "it puts raw code into the output"),
    **dict.fromkeys(("csname", "expandafter"), "it can build any command"),
    **dict.fromkeys(("catcode", "makeatletter", "uccode", "lccode", "lowercase", "uppercase", "def", "gdef", "edef",
                     "xdef", "let", "renewcommand", "providecommand"), "it can hide or redefine commands"),
}
_CONTROL = re.compile(r"\\([A-Za-z@]+|.?)", re.DOTALL)  # `@` as a letter: \@input is one word to refuse
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DEFINITION = re.compile(r"\{\\[A-Za-z]+\}\{")  # \newcommand{\Name}{...}: the name is the one new word
_ENVIRONMENT = re.compile(r"\{([A-Za-z*]*)\}")
_BOX = "{max width=\\linewidth}"  # \adjustbox's keys could run code: only the one it is given here

# What the project keeps at the top of a profile folder. TEXINPUTS puts that folder before
# TeX's own search path, so anything else there (sections/, a .sty, main.aux, main.bbl) would
# be read in place of the file LaTeX meant: the build refuses it. (Names starting with a dot,
# such as .lock, .staging and atomic writes' temporary files, TeX never opens under openin_any=p.)
PROFILE_ENTRIES = frozenset({
    "figures", "tables", "macros", "runs", "notebooks", "html", "provenance", "latex", "latex.partial",
    "report_info.tex", "recipes_table.tex", "provenance_table.tex", "report.pdf", "index.html", "latex-failed.log",
    "scratch",  # what a notebook explored by hand writes (workbook/book.py); never read into the PDF
})
GENERATED_TEX = ("report_info.tex", "recipes_table.tex", "provenance_table.tex")


def forbidden_tex(text: str) -> str | None:
    """The first thing in `text` a generated TeX file may not hold, as the error names it; None if clean."""
    if "^^" in text:
        return "^^ (it can spell any character, a backslash too)"
    control = _CONTROL_CHARACTER.search(text)
    if control:
        return f"the control character {ord(control.group()):#04x}"
    position = 0
    while match := _CONTROL.search(text, position):
        name, position = match.group(1), match.end()
        if len(name) <= 1 and not name.isalpha():
            if name in ALLOWED_SYMBOLS and name:
                continue
            return f"\\{name}" if name.isprintable() and name.strip() else f"\\ followed by {name!r}"
        if name not in ALLOWED_WORDS:
            return f"\\{name}" + (f" ({_DANGER[name]})" if name in _DANGER else "")
        if name in ("begin", "end"):
            environment = _ENVIRONMENT.match(text, position)
            if not environment or environment.group(1) not in ALLOWED_ENVIRONMENTS:
                shown = f"{{{environment.group(1)}}}" if environment else " without {tabular} or {center}"
                return f"\\{name}{shown}"
        elif name == "newcommand":
            definition = _DEFINITION.match(text, position)
            if not definition:
                return "\\newcommand not of the form \\newcommand{\\Name}{value}"
            position = definition.end()
        elif name == "adjustbox" and not text.startswith(_BOX, position):
            return f"\\adjustbox with keys other than {_BOX}"
    return None


def _read_tex(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise LabError(f"{path} is not UTF-8 text, so the report is not built; "
                       "re-run the notebook that makes it") from None
    except OSError as error:
        raise LabError(f"cannot read {path} ({error.strerror})") from None


def _plain_file(path: Path, directory: Path) -> None:
    """Refuse a link anywhere below `directory` on the way to `path`: LaTeX would read what it points at."""
    current = path
    while current != directory:
        if current.is_symlink():
            raise LabError(f"{current} is a symbolic link; LaTeX reads only files the build wrote in {directory}: "
                           "replace it with the file itself")
        current = current.parent
    if not path.is_file():
        raise LabError(f"{path} is not a file; re-run the notebook that makes it")


def latex_reads(profile: str) -> list[str]:
    """Every file LaTeX reads from the profile folder, relative to it (the generated TeX files first)."""
    directory = paths.profile_dir(profile)
    tex = sorted(str(path.relative_to(directory)) for kind in ("tables", "macros")
                 for path in directory.glob(f"{kind}/*.tex"))
    figures = sorted(name for name in required_artifacts() if name.startswith("figures/"))
    return [*GENERATED_TEX, *tex, *figures]


def check_latex_inputs(profile: str) -> None:
    """Refuse, before LaTeX runs, anything in the profile folder that LaTeX would read and should not."""
    directory = paths.profile_dir(profile)
    unexpected = sorted(entry.name for entry in directory.iterdir()
                        if entry.name not in PROFILE_ENTRIES and not entry.name.startswith("."))
    if unexpected:
        raise LabError(f"{directory} holds {', '.join(unexpected)}, which mnist-lab does not make; LaTeX searches that "
                       "folder, so the report is not built: remove it")
    for relative in latex_reads(profile):
        path = directory / relative
        _plain_file(path, directory)
        if relative.endswith(".pdf"):
            with open(path, "rb") as handle:
                if handle.read(5) != b"%PDF-":
                    raise LabError(f"{path} is not a PDF, so the report is not built; "
                                   "re-run the notebook that makes it")
            continue
        found = forbidden_tex(_read_tex(path))
        if found:
            raise LabError(f"{path} holds {found}: a generated file may hold only text, tables, LaTeX's escapes and "
                           f"\\newcommand, so the report is not built; re-make it with "
                           f"`mnist-lab run --profile {profile} --force`")


def _search_path(directory: Path) -> str:
    """TEXINPUTS: the profile's artifacts first, then the package (the appendix lists mnist_lab/models/*.py),
    then the rest of the search path (the trailing separator keeps TeX's defaults, "." i.e. report/ included).

    kpathsea splits the variable on ':' and expands '$' and braces, so a folder holding one
    would be read as other folders: refused with one line rather than built from the wrong place.
    """
    entries = [directory, paths.REPORT.parent / "mnist_lab"]
    for entry in entries:
        special = sorted({char for char in str(entry) if char in f"{os.pathsep}${{}}" or _is_control(char)})
        if special:
            raise LabError(f"{entry} holds {' '.join(map(repr, special))}, which TeX's search path (TEXINPUTS) cannot "
                           "carry; use a folder without them (MNIST_LAB_ARTIFACTS sets where the artifacts go)")
    inherited = os.environ.get("TEXINPUTS", "")
    path = os.pathsep.join([*map(str, entries), inherited])
    return path if path.endswith(os.pathsep) else path + os.pathsep


# ---- the build ----------------------------------------------------------------------------


def latex_environment(directory: Path) -> dict[str, str]:
    """latexmk's environment: the search path, and TeX confined to its own folders.

    openin_any/openout_any=p (kpathsea reads them from the environment): no absolute path, no
    `..` and no dot file is opened, so even TeX code that got past check_latex_inputs reads
    only report/, the search path and TeX's own files, and writes only into the build folder.
    """
    env = dict(os.environ)
    env["TEXINPUTS"] = _search_path(directory)
    env.update(openin_any="p", openout_any="p")
    env["max_print_line"] = "1000"  # unwrapped log lines: error messages and paths stay whole
    return env


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
    check_latex_inputs(profile)  # after write_info: its three files are read by LaTeX too

    directory = paths.profile_dir(profile)
    # latexmk works in a copy of the last good build folder (so it still rebuilds only what
    # changed); the copy replaces it only after a clean build. An interrupted or failed build
    # leaves the good folder as it was, and its state never poisons the next build.
    out, work = build_dir(profile), build_dir(profile).with_name("latex.partial")
    shutil.rmtree(work, ignore_errors=True)
    if out.is_dir():
        shutil.copytree(out, work)
    work.mkdir(parents=True, exist_ok=True)
    env = latex_environment(directory)
    date = _run_date(directory)
    if date is not None and date.year >= 1970:  # the PDF's own timestamp: the run's, so a rebuild is byte-identical
        env["SOURCE_DATE_EPOCH"] = str(int(datetime(date.year, date.month, date.day, tzinfo=timezone.utc).timestamp()))
    command = [latexmk, "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error", "-no-shell-escape",
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
