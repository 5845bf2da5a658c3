"""The title page's provenance and the appendix's tables: where a build's numbers came from.

    artifacts/<profile>/report_info.tex       commits, profile, device, torch and date; stale and frozen marks
    artifacts/<profile>/recipes_table.tex     the recipes as this profile trains them
    artifacts/<profile>/provenance_table.tex  each notebook's last run, and each training run

Records and runs are read from artifacts/, which may come from another machine: each is checked
field by field before it is quoted, and every value is escaped for LaTeX. The files are
rewritten only when their text changes, so latexmk rebuilds nothing when nothing changed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ... import names, paths, records
from ...errors import shortlist
from ...files import write_text
from ...profiles import get_profile
from ..provenance import git_state
from .contract import _is_control

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




def _thousands(number: int) -> str:
    return f"{number:,}"


# ---- reading what the runs recorded (untrusted: it may come from another machine) ----------


def _environments(directory: Path) -> list[dict]:
    return [records.read(path, records.RUN_ENVIRONMENT, fix=f"remove {path.parent} or train it again")
            for path in sorted(directory.glob("runs/*/environment.json"))]


def _records(directory: Path) -> list[dict]:
    """The notebooks' provenance records (written by the runner after each successful execution)."""
    found = []
    for path in sorted(directory.glob("provenance/*.json")):
        fix = f"run the notebook again: `mnist-lab run --profile {directory.name} {path.stem}`"
        found.append(records.read(path, records.NOTEBOOK_RECORD, fix=fix))
    return found


def _training_runs(directory: Path) -> list[tuple[str, dict, dict]]:
    """Each verified training run's names (from the run cache's index), config and metrics, by name.

    Only runs the run cache would hand out are listed (`runs.cache.verified`): a folder of config.json and
    metrics.json claiming any accuracy, planted or cut, is not a run, and the appendix lists runs.
    A file that is not of a run's shape is still one line naming it, as before."""
    from ...runs import RunCache
    from ...runs.cache import verified

    names = RunCache(directory / "runs").names()  # an index of another shape names nothing
    runs = []
    for config_path in sorted(directory.glob("runs/*/config.json")):
        fix = f"remove {config_path.parent} or train it again"
        config = records.read(config_path, records.RUN_CONFIG, fix=fix)
        metrics = records.read(config_path.parent / "metrics.json", records.RUN_METRICS, fix=fix)
        if not verified(config_path.parent):
            continue  # as if absent: `mnist-lab status --runs` names what is wrong with it
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
            executed, _ = records.inspect(path, records.EXECUTED_NOTEBOOK)
            try:
                times.append(_parse_time(executed["metadata"]["papermill"]["end_time"]))
            except (KeyError, TypeError):
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
    from .. import status

    return status.frozen_line(profile)


def stale_notebooks(profile: str) -> dict[str, list[str]]:
    """The notebooks whose artifacts no longer match their inputs, with the reasons."""
    from .. import status
    from ..parameters import available

    reasons = {name: status.stale_as_run(name, profile) for name in available()}
    return {name: why for name, why in reasons.items() if why}


def info_tex(profile: str, stale: dict[str, list[str]] | None = None) -> str:
    values = info(profile)
    lines = [f"% Written by `mnist-lab report --profile {profile}` (mnist_lab/workbook/report/title.py); do not edit."]
    lines.append(r"\SmokeProfiletrue" if profile == "smoke" else r"\SmokeProfilefalse")
    lines.append(r"\StaleArtifactstrue" if stale else r"\StaleArtifactsfalse")
    values["ReportStale"] = "; ".join(f"{_typewriter(name)}: {_typewriter(', '.join(shortlist(why, 2)))}"
                                      for name, why in (stale or {}).items())  # a few lines, not a page
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
    from ...experiments import EXPERIMENTS, augmentation_parts

    settings = get_profile(profile)
    lines = [f"% Written by `mnist-lab report --profile {profile}` from mnist_lab/experiments.py; do not edit.",
             r"\begin{tabular}{@{}llllrrll@{}}", r"\toprule",
             r"Experiment & Model & Optimizer & Learning rate & Epochs & Batch & Schedule & Augmentation \\",
             r"\midrule"]
    for experiment in EXPERIMENTS.values():
        experiment = settings.apply(experiment)
        optimizer = names.OPTIMIZERS[experiment.optimizer]
        if experiment.weight_decay:
            optimizer += f", weight decay {experiment.weight_decay:g}"
        schedule = (f"$\\times{experiment.lr_gamma:g}$ every {experiment.lr_step} epochs" if experiment.lr_step
                    else "constant")
        parts = augmentation_parts(experiment.augmentation)  # ± and ° print in text mode (main.tex)
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


