"""The workbook where people read it: the offline pages in a real browser, the changes listed,
and the training progress on the terminal."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from mnist_lab.workbook import notebooks, provenance
from mnist_lab.cli import main

HAVE_BROWSER = shutil.which("chromium") is not None and shutil.which("chromedriver") is not None
needs_browser = pytest.mark.skipif(not HAVE_BROWSER, reason="chromium/chromedriver not installed: run `make browser`")
# What the smoke profile trains, notebook by notebook (basic_cnn trains once, in q1_convolution).
TRAINED = {"basic_cnn", "cnn", "cnn_flip", "mobilenet", "vit"}


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def _open(browser, page: Path) -> dict:
    """Load `page` from file:// and report what a reader would see, and every request it made."""
    browser.get_log("performance")  # drop what earlier pages logged
    browser.get(page.as_uri())
    images = browser.execute_script(
        "return [...document.images].map(i => [i.getAttribute('src').slice(0, 60), i.complete && i.naturalWidth > 0])")
    links = browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")
    requests = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    return {"images": images, "links": links, "urls": urls, "errors": errors, "text": browser.find_element("tag name", "body").text,
            "math": browser.execute_script("return document.querySelectorAll('math').length")}


@needs_browser
def test_the_index_and_every_notebook_page_read_offline(smoke_artifacts, browser):
    index = smoke_artifacts / "index.html"
    pages = [index, *sorted((smoke_artifacts / "html").glob("*.html"))]
    assert [p.stem for p in pages[1:]] == notebooks.available()
    for page in pages:
        seen = _open(browser, page)
        assert seen["images"] and all(loaded for _, loaded in seen["images"]), (page.name, seen["images"])
        assert seen["errors"] == [], (page.name, seen["errors"])
        outside = [url for url in seen["urls"] if not url.startswith(("file:", "data:"))]
        assert outside == [], (page.name, outside)  # nothing leaves the machine
        for link in seen["links"]:
            target = urlparse(link)
            assert target.scheme == "file" and Path(unquote(target.path)).is_file(), (page.name, link)
    losses = _open(browser, smoke_artifacts / "html" / "q1_losses.html")
    assert losses["math"] >= 20 and "$$" not in losses["text"] and "\\frac" not in losses["text"]
    index_text = _open(browser, index)["text"]
    assert all(name in index_text for name in notebooks.available()) and "fresh" in index_text


@needs_browser
def test_the_index_opens_with_the_headline_and_its_captions_land_on_their_figures(smoke_artifacts, browser):
    from mnist_lab.results.reference import REPORT_TABLES

    from conftest import run_folder

    seen = _open(browser, smoke_artifacts / "index.html")
    text = seen["text"]
    assert text.index("The headline") < text.index("Notebooks")  # the point of the workbook, first
    rows = browser.execute_script(
        "return [...document.querySelector('table').rows].slice(1).map(r => [...r.cells].map(c => c.textContent))")
    by_name = {row[0].split()[0]: row for row in rows}
    assert set(by_name) == TRAINED
    for name, row in by_name.items():  # one seed under smoke: ours is the run's own number
        metrics = json.loads((run_folder(smoke_artifacts, name) / "metrics.json").read_text())
        model = "cnn" if name == "cnn_flip" else name
        assert (row[1], row[2], row[3]) == (f"{metrics['test_accuracy']:.2f}%", f"{REPORT_TABLES[model][-1][2]:.2f}%", "1")
    assert "First build: every number and table of the report is new." in text
    assert re.search(r"\d{1,2} [A-Z][a-z]{2} \d\d:\d\d UTC", text) and "because never run" in text
    figures = browser.execute_script("return [...document.querySelectorAll('.gallery figure')].map("
                                     "f => [f.querySelector('a').href, f.querySelector('figcaption').textContent])")
    assert len(figures) >= 10 and all(caption for _, caption in figures)
    for href, caption in figures:
        browser.get(href)
        landed = browser.execute_script(
            "const cell = document.getElementById(decodeURIComponent(location.hash.slice(1)));"
            "return cell ? [cell.querySelectorAll('img').length, cell.textContent] : null")
        assert landed and landed[0] >= 1 and (f'"{caption}"' in landed[1] or "wb.study(" in landed[1]), (caption, href)


@needs_browser
def test_batch_pages_are_titled_and_have_no_stderr_block_and_prompts_in_order(smoke_artifacts, browser):
    titles = {"q1_convolution": "Q1 (a)", "q1_losses": "Q1 (b)", "q2_cnn": "Q2: a basic CNN and an optimized CNN",
              "q3_comparison": "Q3: MobileNet and a Vision Transformer, compared"}
    for name in notebooks.available():
        _open(browser, smoke_artifacts / "html" / f"{name}.html")
        assert browser.title.startswith(titles[name]), (name, browser.title)  # its heading, not "Notebook"
        stderr = browser.execute_script(
            "return document.querySelectorAll('[data-mime-type=\"application/vnd.jupyter.stderr\"]').length")
        prompts = browser.execute_script(
            "return [...document.querySelectorAll('.jp-InputPrompt')].map(p => p.textContent.replace(/\\s+/g, ' ').trim())"
            ".filter(t => t)")
        assert stderr == 0, name
        assert prompts == [f"In [{number}]:" for number in range(1, len(prompts) + 1)], (name, prompts)


def test_the_index_marks_a_pdf_older_than_the_numbers(smoke_artifacts, tmp_path, monkeypatch):
    import os

    from mnist_lab import paths
    from mnist_lab.workbook import html

    shutil.copytree(smoke_artifacts, tmp_path / "smoke")
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path)
    pdf = tmp_path / "smoke" / "report.pdf"
    pdf.write_bytes(b"%PDF-1.5 a stand-in")
    os.utime(pdf, (1, 1))  # built before the notebooks last wrote their numbers
    assert "is older than the newest numbers" in html.index_html("smoke")
    os.utime(pdf)  # now newer than every macro, table and figure
    index = html.index_html("smoke")
    assert "is older than" not in index and "built from the numbers below" in index


def test_pages_show_parameters_as_a_header_and_no_training_progress(smoke_artifacts):
    page = (smoke_artifacts / "html" / "q2_cnn.html").read_text()
    assert 'class="mnist-lab-header"' in page and "seeds = [0]" in page
    assert "injected-parameters" not in page  # the injected cell is the header now
    # The runner trained every run before the kernel started: no progress bar in a batch page.
    assert "widget-view" not in page and "%|" not in page and "images/s" not in page
    assert not re.search(r"<script[^>]+src=\"https?:", page)


def test_the_terminal_shows_an_epoch_line_for_every_model_trained(smoke_artifacts):
    printed = (smoke_artifacts.parent / "run-output.txt").read_text()
    for experiment in TRAINED:
        lines = re.findall(rf"^\[\d+/\d+\] {re.escape(experiment)} seed 0: epoch (\d)/2, [\d,]+ images/s, "
                           r"loss [\d.]+, test accuracy [\d.]+%, (?:\d+ min )?\d+ s left$", printed, re.MULTILINE)
        assert lines == ["1", "2"], (experiment, printed)


def test_a_changed_result_is_listed_on_the_terminal_and_the_index(project, capsys):
    before = (project / "artifacts" / "smoke" / "macros" / "trains.tex").read_text()
    old = re.search(r"\\Accuracy\}\{([\d.]+)\}", before).group(1)
    assert main(["run", "--profile", "smoke", "--no-progress", "trains", "-p", "seeds", "[1]"]) == 0
    new = re.search(r"\\Accuracy\}\{([\d.]+)\}",
                    (project / "artifacts" / "smoke" / "macros" / "trains.tex").read_text()).group(1)
    assert new != old  # another seed, another accuracy
    printed = capsys.readouterr().out
    assert f"changed: Accuracy {old} → {new}" in printed
    assert provenance.read_record("smoke", "trains")["changes"]["macros"] == [["Accuracy", old, new]]
    index = (project / "artifacts" / "smoke" / "index.html").read_text()
    assert f"<code>Accuracy</code> {old} &rarr; {new}" in index


@needs_browser
def test_script_carried_by_an_executed_notebook_never_runs_on_its_page(tmp_path, monkeypatch, browser):
    """An executed notebook may come from another machine (`mnist-lab unpack`): whatever its
    outputs and prose carry, the page's content security policy runs no script."""
    import nbformat

    from mnist_lab import paths
    from mnist_lab.workbook import html

    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path)
    attack = "document.title = 'pwned'"
    cell = nbformat.v4.new_code_cell("1", outputs=[
        nbformat.v4.new_output("display_data", {"text/html": f"<script>{attack}</script>",
                                                "application/javascript": attack}),
        nbformat.v4.new_output("display_data", {"text/html": f'<img src="x" onerror="{attack}">'})])
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Hostile\n<script>{attack}</script>"),
                                               cell])
    executed = tmp_path / "smoke" / "notebooks" / "hostile.ipynb"
    executed.parent.mkdir(parents=True)
    nbformat.write(notebook, executed)
    page = html.export("hostile", "smoke")
    head = page.read_text().split("</head>")[0]
    assert 'http-equiv="Content-Security-Policy"' in head
    assert "<title>Hostile</title>" in head  # titled with its heading
    browser.get(page.as_uri())
    time.sleep(0.5)  # an onerror handler fires after the image fails
    assert browser.title != "pwned"
