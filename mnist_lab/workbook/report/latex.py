"""Building the PDF with latexmk: `mnist-lab report --profile full|smoke`.

    report/main.tex, report/sections/*.tex   the source, one for both profiles
    artifacts/<profile>/latex/                latexmk's working folder (aux, log, fdb_latexmk)
    artifacts/<profile>/report.pdf            the report

The profile's artifact folder goes on TEXINPUTS, so `figures/x.pdf`, `tables/x.tex` and
`macros/x.tex` in the source resolve to that profile's files. latexmk decides what to rebuild
(it compares file contents). TeX runs with no shell escape and may open only files below its
working folders (openin_any/openout_any=p), after `contract.check_latex_inputs`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from ... import paths
from ...errors import LabError, printable
from ...files import atomic_path
from ...profiles import get_profile
from ..lock import profile_lock
from . import contract
from .contract import MAIN, _search_path, check_artifacts
from .title import _run_date, stale_notebooks, write_info

LATEX_TIMEOUT = 600  # seconds; a healthy build takes well under a minute
INSTALL_HINT = "run `make tex` (on Debian/Ubuntu it installs the packages listed in report/install-tex.sh)"

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
        from ..html import write_site

        write_site(profile)  # the index links the PDF
        return built


def _build(profile: str, latexmk: str, *, force: bool, verbose: bool, allow_stale: bool) -> tuple[Path, bool]:
    check_artifacts(profile)
    stale = stale_notebooks(profile)
    if stale and not allow_stale:
        # One short line however much changed: each notebook's count of reasons, the first one named.
        counts = "; ".join(f"{name}: {len(reasons)}" for name, reasons in stale.items())
        first = printable(next(iter(stale.values()))[0], 70)
        raise LabError(f"the {profile} artifacts are stale (reasons: {counts}; first: {first}); run `mnist-lab run "
                       f"--profile {profile}` first (or --allow-stale); `mnist-lab status --profile {profile}` says why")
    write_info(profile, stale)
    contract.check_latex_inputs(profile)  # after write_info: its three files are read by LaTeX too

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

