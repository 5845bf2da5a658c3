"""The workbook where people read it: offline HTML of every executed notebook, and an index.

    artifacts/<profile>/html/<notebook>.html   one page per executed notebook (nbconvert, lab template)
    artifacts/<profile>/index.html             the PDF, every notebook with its parameters, status,
                                               run time and device, every figure as a thumbnail,
                                               and what changed in the last run of each notebook

Every page opens from file:// with no network: images are embedded, formulas are turned into
MathML when the page is written (`latex2mathml`; browsers draw MathML themselves), widget
outputs keep their text, and the template loads no script from another host. A page is
rewritten only when its executed notebook changed; the index only when its text did.

The records the pages quote may come from another machine (`mnist-lab unpack`): every value
taken from one is escaped (the template's `| e`, `html.escape` here), and a record that is not
of the shape the runner writes is shown as an unreadable record, never a traceback.
The executed notebooks may come from another machine too: their HTML (outputs and rendered
Markdown) is cleaned by bleach to an allowlist (`clean_html`), and the CSP is a second wall.
No page is ever unpacked (archive.PAGES): each one here was written by this export.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from urllib.parse import quote

from .. import paths, records
from ..errors import LabError, shortlist
from ..files import write_text
from . import provenance, status
from .commit import executed_path
from .parameters import available

TEMPLATES = Path(__file__).with_name("templates")
_MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$(?!\$)(.+?)(?<!\\)\$", re.DOTALL)
_WIDGET = "application/vnd.jupyter.widget-view+json"
_PLACEHOLDER = "MNISTLABFORMULA{:05d}X"
# The pages need no script at all: this policy, in each page's head, has the browser run none,
# inline or not, whatever an executed notebook from another machine carries in its outputs.
CONTENT_SECURITY_POLICY = ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
                           'img-src data: file:; style-src \'unsafe-inline\' data:; font-src data:">')
_THUMBNAIL = re.compile(r"figures/[^/\\.][^/\\]*\.png")  # a figure's image, in figures/ itself
# What a page keeps of a notebook's HTML (its outputs and its rendered prose), cleaned by bleach (the
# library nbconvert's SanitizeHTML uses): what pandas tables, Markdown and MathML need, nothing that
# runs, navigates, submits or re-bases a link (script, meta, base, form, iframe, object, style are
# removed, and every attribute not listed, on* handlers included). The CSP stays as a second wall:
# an executed notebook may come from another machine (`mnist-lab unpack`), and a browser bug or a
# sanitiser bug alone should not be enough.
SAFE_TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del", "details", "div", "dl",
    "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p",
    "pre", "s", "samp", "small", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "u", "ul", "var",
})
_HIDDEN = re.compile(r"(?is)<(script|style)\b.*?</\1\s*>")
_SAFE_ATTRIBUTES = {"class", "id", "title", "style", "align", "colspan", "rowspan", "scope"}


def _safe_attribute(tag: str, name: str, value: str) -> bool:
    """bleach's attribute filter: links to a place on the page or the web, images embedded as data."""
    if name in _SAFE_ATTRIBUTES:
        return True
    if tag == "a" and name == "href":
        return value.startswith("#") or re.match(r"(?i)(https?:|mailto:)", value) is not None
    if tag == "img" and name in ("alt", "width", "height"):
        return True
    return tag == "img" and name == "src" and re.match(r"(?i)data:image/(png|jpeg|gif);base64,", value) is not None


def clean_html(text: str) -> str:
    """A notebook's HTML with only SAFE_TAGS and safe attributes left (the rest removed, not escaped)."""
    import bleach
    from bleach.css_sanitizer import CSSSanitizer

    text = _HIDDEN.sub("", text)  # bleach removes a tag but keeps its text: no script or CSS shown as prose
    return bleach.clean(text, tags=SAFE_TAGS, attributes=_safe_attribute, protocols={"http", "https", "mailto", "data"},
                        strip=True, strip_comments=True, css_sanitizer=CSSSanitizer())


def html_dir(profile: str) -> Path:
    return paths.profile_dir(profile) / "html"


def page_record(profile: str, name: str) -> tuple[dict | None, str | None]:
    """The notebook's record if the pages can show it; else None and why ("never run", or what
    makes it unreadable)."""
    # The pages read the record as the runner and `status` do (`device` is printed as text whatever it is).
    record, problem = records.inspect(provenance.record_path(profile, name), records.NOTEBOOK_RECORD)
    if problem:
        return None, f"unreadable record (provenance/{name}.json: {problem})"
    return (record, None) if record is not None else (None, "never run")


def _mathml(match: re.Match) -> str:
    from latex2mathml.converter import convert

    display, inline = match.group(1), match.group(2)
    latex = (display or inline).strip()
    try:
        return convert(latex, display="block" if display is not None else "inline")
    except Exception:  # a macro latex2mathml does not know: show the source rather than break the page
        return f"<code>{html.escape(latex)}</code>"


def _prepare(notebook) -> list[str]:
    """Widget outputs to their text, the injected parameters out of the cells, the prompts numbered
    again, and each formula replaced by a placeholder; returns the formulas as MathML, in
    placeholder order. (The
    Markdown renderer takes MathML apart, so it goes into the page after rendering.)"""
    notebook.metadata.pop("widgets", None)
    formulas: list[str] = []

    def placeholder(match: re.Match) -> str:
        formulas.append(_mathml(match))
        return _PLACEHOLDER.format(len(formulas) - 1)

    kept = []
    for cell in notebook.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue  # shown in the page's header instead
        if cell.cell_type == "markdown":
            cell.source = _MATH.sub(placeholder, cell.source)
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(_WIDGET, None)
        kept.append(cell)
    notebook.cells = kept
    # Prompts numbered as the reader sees the cells: papermill's injected cell took a number.
    numbered = [cell for cell in kept if cell.cell_type == "code" and cell.get("execution_count") is not None]
    for number, cell in enumerate(numbered, 1):
        cell.execution_count = number
        for output in cell.get("outputs", []):
            if "execution_count" in output:
                output["execution_count"] = number
    return formulas


def _heading(notebook, name: str) -> str:
    """The notebook's first Markdown heading, as a reader would name the page; else its file's name."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip() or name
    return name


def _exporter():
    """nbconvert's HTML exporter with every notebook HTML cleaned: outputs by its SanitizeHTML
    preprocessor (which also drops output kinds that run, such as application/javascript and SVG),
    and rendered Markdown through the same `clean_html`."""
    from nbconvert import HTMLExporter
    from jinja2 import pass_context
    from nbconvert.preprocessors.sanitize import SanitizeHTML

    class Sanitise(SanitizeHTML):
        def sanitize_html_tags(self, html_str):  # the project's allowlist and attribute filter
            return clean_html(html_str)

        def preprocess_cell(self, cell, resources, index):
            if cell.cell_type == "markdown":  # cleaned once rendered, below: bleach on Markdown source
                return cell, resources        # would escape its quotes' `>` and its code's `<`
            return super().preprocess_cell(cell, resources, index)

    class Exporter(HTMLExporter):
        @pass_context  # as nbconvert's own: the filter reads the cell's attachments from the context
        def markdown2html(self, context, source):
            return clean_html(super().markdown2html(context, source))

    exporter = Exporter(template_name="offline", extra_template_basedirs=[str(TEMPLATES)], embed_images=True)
    exporter.register_preprocessor(Sanitise(), enabled=True)
    return exporter


def export(name: str, profile: str) -> Path | None:
    """Write html/<name>.html from the executed notebook, unless it is already newer than it."""
    import nbformat

    source = executed_path(name, profile)
    target = html_dir(profile) / f"{name}.html"
    if not source.is_file():
        return None
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    notebook = nbformat.read(source, as_version=4)
    notebook.metadata["title"] = _heading(notebook, name)  # the page's <title> (the template escapes it)
    formulas = _prepare(notebook)
    exporter = _exporter()
    body, _ = exporter.from_notebook_node(notebook, resources={"mnist_lab": _header(name, *page_record(profile, name)),
                                                               "content_security_policy": CONTENT_SECURITY_POLICY})
    body = re.sub(r"MNISTLABFORMULA(\d{5})X", lambda match: formulas[int(match.group(1))], body)
    write_text(target, body)
    return target


def _header(name: str, record: dict | None, why: str | None) -> dict:
    """What the page's header prints, every value a string (the template escapes each one)."""
    if record is None:
        return {"notebook": name, "problem": "no provenance record" if why == "never run" else why}
    from ..runs.executor import human_seconds

    return {"notebook": name, "problem": None, "when": _when(record["started"]),
            "seconds": human_seconds(record["wall_seconds"]), "device": str(record.get("device") or "?"),
            "parameters": [(str(key), str(value)) for key, value in record["parameters"].items()]}


def write_site(profile: str) -> Path:
    """Every notebook's page (where stale or missing) and the index; returns the index's path."""
    for name in available():
        export(name, profile)
    index = paths.profile_dir(profile) / "index.html"
    text = index_html(profile)
    if not (index.is_file() and index.read_text() == text):
        write_text(index, text)
    return index


def index_html(profile: str) -> str:
    directory = paths.profile_dir(profile)
    rows, galleries, changes, records = [], [], [], []
    for name in available():
        record, why = page_record(profile, name)
        page = f"html/{name}.html"
        try:
            reasons = status.stale_as_run(name, profile)
        except Exception as error:  # an unreadable notebook: the index still lists the rest
            reasons = [str(error)]
        state = "fresh" if not reasons else "stale: " + "; ".join(shortlist([str(r) for r in reasons], 3)) + (
            f" (`mnist-lab status --profile {profile}` lists all)" if len(reasons) > 4 else "")
        title = html.escape(name)
        link = f'<a href="{html.escape(quote(page))}">{title}</a>' if (directory / page).is_file() else title
        if record is None:
            rows.append(f"<tr><td>{link}</td><td colspan=4>{html.escape(why)}</td><td>{html.escape(state)}</td></tr>")
            continue
        records.append(record)
        rows.append(_row(link, record, state, fresh=not reasons))
        gallery = _gallery(page, record, executed_path(name, profile))
        if gallery:
            galleries.append(f"<h3>{title}</h3><div class=gallery>{gallery}</div>")
        changed = _changed(record)
        if changed:
            changes.append(f"<h3>{title}</h3><ul>{changed}</ul>")
    first = bool(records) and all(record.get("first_run") is True for record in records)
    if first:
        changes = ["<p>First build: every number and table of the report is new.</p>"]
    frozen = status.frozen_line(profile)
    frozen = (f'<p class="{"stale" if "no longer match" in frozen else "fresh"}">Calibration studies: '
              f'{html.escape(frozen)} (<code>make report STUDIES=train</code> trains them here).</p>' if frozen else "")
    headline = _headline(profile)
    pdf = _pdf_line(profile, directory, records)
    profile = html.escape(profile)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{CONTENT_SECURITY_POLICY}<title>mnist-lab: the {profile} workbook</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #1f2328; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ border-bottom: 1px solid #d0d7de; padding: 0.4em; text-align: left; vertical-align: top; }}
td.number {{ text-align: right; white-space: nowrap; }} .when {{ white-space: nowrap; }}
.fresh, .within {{ color: #1a7f37; }} .stale, .outside {{ color: #bc4c00; }} .one-seed {{ color: #57606a; }}
.gallery {{ display: flex; flex-wrap: wrap; }} .gallery figure {{ margin: 0.3em; text-align: center; font-size: 0.8em; }}
.gallery img {{ height: 110px; border: 1px solid #d0d7de; }}
</style></head>
<body>
<h1>mnist-lab: the {profile} workbook</h1>
{headline}
{pdf}
{frozen}
<h2>Notebooks</h2>
<table><tr><th>notebook</th><th>parameters</th><th>ran</th><th>time</th><th>device</th><th>status</th></tr>
{''.join(rows)}
</table>
<h2>What changed in each notebook's last run</h2>
{''.join(changes) or '<p>No number or table of the report changed.</p>'}
<h2>Figures</h2>
{''.join(galleries) or '<p>No figures yet.</p>'}
</body></html>
"""


def _headline(profile: str) -> str:
    """The point of the workbook, first: each experiment's final test accuracy (mean ± std over the
    seeds in the run cache) beside the report's, and how far each of its curves is from the
    report's table (RMS over the epochs). A final accuracy is green within one standard deviation
    of the report's, orange outside it, grey with one seed (no spread to judge by)."""
    import numpy as np

    from ..experiments import EXPERIMENTS
    from ..results.calibration import distances
    from ..results.reference import REPORT_TABLE_NAMES, REPORT_TABLES
    from ..runs import for_profile, load_run
    from ..runs.cache import KEY_LENGTH, verified

    cache = for_profile(profile)
    names = cache.index()  # written by the runner; another machine's is checked run by run below
    rows = []
    for name, experiment in EXPERIMENTS.items():
        runs = []
        for _, key in sorted((names.get(name) or {}).items()):
            try:
                folder = paths.inside(cache.folder, str(key)[:KEY_LENGTH], "run")
                if verified(folder):  # a folder claiming any accuracy is not a result until it checks out
                    runs.append(load_run(folder))
            except (LabError, OSError, ValueError, KeyError):
                continue  # missing, damaged or not a run: not quoted
        if not runs or experiment.model not in REPORT_TABLES:
            continue
        finals = np.array([run.history["test_accuracy"].iloc[-1] for run in runs], dtype=float)
        mean, std = finals.mean(), finals.std(ddof=1) if len(finals) > 1 else None
        report = REPORT_TABLES[experiment.model][-1][2]
        spread = "one-seed" if std is None else "within" if abs(mean - report) <= std else "outside"
        rms = np.array([distances(run, experiment.model) for run in runs]).mean(axis=0)
        noise = _seed_spread(runs)  # per column: how far the seeds' own curves sit apart
        ours = f"{mean:.2f}%" + (f" ± {std:.2f}" if std is not None else "")
        cells = "".join(f"<td class=\"number {_spread_class(distance, spread_of)}\">{distance:.{digits}f}</td>"
                        for distance, spread_of, digits in zip(rms, noise, (3, 2, 2)))
        rows.append(f"<tr><td><code>{html.escape(name)}</code> ({REPORT_TABLE_NAMES[experiment.model]})</td>"
                    f"<td class=\"number {spread}\">{ours}</td><td class=number>{report:.2f}%</td>"
                    f"<td class=number>{len(runs)}</td>{cells}</tr>")
    if not rows:
        return ""
    return ("<h2>The headline: final test accuracy beside the report's</h2>"
            "<table><tr><th>experiment</th><th>ours (mean ± std)</th><th>the report</th><th>seeds</th>"
            "<th>RMS loss</th><th>RMS train acc.</th><th>RMS test acc.</th></tr>" + "".join(rows) + "</table>"
            "<p>RMS: the root mean square over the epochs of ours minus the report's table, per column "
            "(accuracies in points), mean over the seeds. Green: within the seeds' own spread (a final "
            "accuracy within one standard deviation over the seeds of the report's; a curve's RMS distance "
            "no larger than the RMS over the epochs of its standard deviation over the seeds); orange: "
            "outside it; grey: a single seed, no spread to judge by.</p>")


def _seed_spread(runs) -> list[float | None]:
    """Per column (loss, train accuracy, test accuracy): the RMS over the epochs of the standard
    deviation over the seeds; None with one seed."""
    import numpy as np

    from ..results.calibration import COLUMNS

    if len(runs) < 2:
        return [None, None, None]
    epochs = min(len(run.history) for run in runs)
    stack = np.array([run.history[list(COLUMNS)].to_numpy()[:epochs] for run in runs])  # seeds × epochs × columns
    return list(np.sqrt((stack.std(axis=0, ddof=1) ** 2).mean(axis=0)))


def _spread_class(distance: float, spread: float | None) -> str:
    return "one-seed" if spread is None else "within" if distance <= spread else "outside"


def _pdf_line(profile: str, directory: Path, records: list[dict]) -> str:
    """A link to the PDF, marked when it is older than the newest numbers it should show."""
    pdf = directory / "report.pdf"
    if not pdf.is_file():
        return f"<p>No PDF yet: <code>mnist-lab report --profile {html.escape(profile)}</code> builds it.</p>"
    newest = max([path.stat().st_mtime for folder in ("macros", "tables", "figures")
                  for path in (directory / folder).glob("*") if path.is_file()], default=0)
    if newest > pdf.stat().st_mtime:
        return (f'<p><a href="report.pdf">The report (PDF)</a> <strong class="stale">is older than the newest '
                f"numbers: <code>mnist-lab report --profile {html.escape(profile)}</code> rebuilds it.</strong></p>")
    return '<p><a href="report.pdf">The report (PDF)</a>, built from the numbers below.</p>'


def _when(text: str) -> str:
    """An ISO time as people read it: 3 Dec 17:31 UTC."""
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return text
    return f"{moment.day} {moment:%b %H:%M} UTC"


def _row(link: str, record: dict, status: str, *, fresh: bool) -> str:
    from ..runs.executor import human_seconds

    parameters = ", ".join(f"<code>{html.escape(key)} = {html.escape(repr(value))}</code>"
                           for key, value in record["parameters"].items())
    why = record.get("why")
    ran = f"<br>because {html.escape(why)}" if isinstance(why, str) and why else ""
    return (f"<tr><td>{link}</td><td>{parameters}</td><td class=when>{html.escape(_when(record['started']))}{ran}</td>"
            f"<td class=when>{html.escape(human_seconds(record['wall_seconds']))}</td>"
            f"<td>{html.escape(str(record.get('device')))}</td>"
            f"<td class=\"{'fresh' if fresh else 'stale'}\">{html.escape(status)}</td></tr>")


def _gallery(page: str, record: dict, executed: Path) -> str:
    """The notebook's figures as captioned thumbnails, each linking to the cell that drew it. Only
    names of images in figures/ itself (a record could name any path), quoted and escaped."""
    figures = sorted(output for output in record["outputs"] if _THUMBNAIL.fullmatch(output))
    cells = _figure_cells(executed, [Path(figure).stem for figure in figures])
    items = []
    for figure in figures:
        stem = Path(figure).stem
        target = page + (f"#cell-id={cells[stem]}" if stem in cells else "")
        items.append(f'<figure><a href="{html.escape(quote(target, safe="/#=-"))}"><img src="{html.escape(quote(figure))}" '
                     f'alt="{html.escape(stem)}"></a><figcaption>{html.escape(stem)}</figcaption></figure>')
    return "".join(items)


def _figure_cells(executed: Path, stems: list[str]) -> dict[str, str]:
    """Which cell of the executed notebook drew each figure: the one whose code saves it by name
    (`wb.figure(..., "name")`), or, for a calibration study's figure, calls `wb.study` with its
    name. Cell ids as the page's anchors."""
    notebook, _ = records.inspect(executed, records.EXECUTED_NOTEBOOK)
    cells = (notebook or {}).get("cells")
    found = {}
    for stem in stems:
        for cell in cells if isinstance(cells, list) else []:
            source = "".join(cell.get("source", "")) if isinstance(cell, dict) else ""
            study = stem.removesuffix("_calibration")
            if cell.get("cell_type") == "code" and isinstance(cell.get("id"), str) and (
                    (".figure(" in source and f'"{stem}"' in source) or f'wb.study("{study}"' in source):
                found[stem] = cell["id"]
                break
    return found


def _changed(record: dict) -> str:
    if record.get("first_run") is True:
        return "<li>its first run: every number and table it writes is new</li>"
    changed = record.get("changes") or {}
    items = [f"<li><code>{html.escape(m)}</code> {html.escape(old)} &rarr; {html.escape(new)}</li>"
             for m, old, new in changed.get("macros", [])]
    items += [f"<li>table <code>{html.escape(t)}</code>: rows changed</li>" for t in changed.get("tables", [])]
    return "".join(items)
