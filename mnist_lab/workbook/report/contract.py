"""The report's artifact contract: what its source needs from a profile's folder, and what LaTeX
may read from there.

Everything under artifacts/ may come from another machine (`mnist-lab unpack`), so the generated
TeX files LaTeX reads are checked against an allow-list before latexmk runs
(`check_latex_inputs`): no file or shell primitive, nothing but what this project's writers put
there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ... import paths
from ...errors import LabError

MAIN = "main.tex"

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



# ---- what LaTeX may read from the profile folder -------------------------------------------
#
# A TeX file can read any file, write one, or run a command, and the files LaTeX reads from
# artifacts/<profile>/ may come from another machine. Those files are data: the tables pandas
# writes (Workbook.table), the macros (Workbook.macro) and the three files report/title.py writes
# (report_info.tex, recipes_table.tex, provenance_table.tex). So
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

def _is_control(char: str) -> bool:
    return ord(char) < 32 or ord(char) == 127
