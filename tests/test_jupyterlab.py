"""JupyterLab beside the runner, in a real browser: a notebook opened, run and saved in Lab leaves
`git diff notebooks/` empty and the report's files alone."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_lab import paths

from test_html import HAVE_BROWSER

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_BROWSER, reason="chromium/chromedriver not installed: "
                                                                             "run `make browser`")]
NOTEBOOK = "q1_losses"  # trains nothing: seconds in a kernel


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def _until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def lab_run_and_save(notebooks: Path, name: str, environment: dict, browser) -> None:
    """Open `name` in a JupyterLab serving `notebooks`, check opening leaves it unmodified, Run All,
    wait for every cell, save, and stop Lab."""
    port = _free_port()
    lab = subprocess.Popen(
        [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ip=127.0.0.1",
         f"--ServerApp.root_dir={notebooks}", "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 120, "JupyterLab to listen")
        browser.get(f"http://127.0.0.1:{port}/lab/tree/{name}.ipynb")
        idle = ("return !!document.querySelector('.jp-Notebook') && "
                "[...document.querySelectorAll('.jp-Notebook-ExecutionIndicator')].some(e => e.dataset.status === 'idle')")
        _until(lambda: browser.execute_script(idle), 180, "the notebook to open and its kernel to be idle")
        dirty = "return !!document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')"
        time.sleep(2)  # what Lab does to the notebook's metadata, it does once its kernel is up
        assert not browser.execute_script(dirty), "opening the notebook marked it modified"
        for menu, command in (("Run", "runmenu:run-all"), ("File", "docmanager:save")):
            if command == "docmanager:save":
                done = ("const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                        ".map(p => p.textContent); return prompts.length > 0 && prompts.every(t => /\\[\\d+\\]/.test(t))")
                _until(lambda: browser.execute_script(done), 300, "every cell to run")  # noqa: B023 (called at once)
            _click_menu(browser, menu, command)
        _until(lambda: '"outputs": [\n' in (notebooks / f"{name}.ipynb").read_text() and '"output_type"'
               in (notebooks / f"{name}.ipynb").read_text(), 60, "Lab to save the outputs")
    finally:
        os.killpg(lab.pid, 15)
        lab.wait(timeout=60)


def _click_menu(browser, menu: str, command: str) -> None:
    """Menu → item, clicked as a reader would (Lumino opens its menus on a real mouse press)."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.XPATH, f"//li[contains(@class, 'lm-MenuBar-item')][normalize-space()='{menu}']").click()
    entry = f"li.lm-Menu-item[data-command='{command}']"
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, entry), 30, f"the {menu} menu")
    browser.find_element(By.CSS_SELECTOR, entry).click()


def test_a_notebook_run_and_saved_in_jupyterlab_leaves_git_and_the_report_alone(smoke_artifacts, tmp_path,
                                                                                 monkeypatch):
    clean = _git(paths.ROOT, "config", "--get", "filter.nbstripout.clean").strip() if shutil.which("git") else ""
    if not clean:
        pytest.skip("the nbstripout git filter is not set up here: run `make setup`")
    repo = tmp_path / "checkout"  # a repository of its own, with this checkout's notebooks and filter
    shutil.copytree(paths.ROOT / "notebooks", repo / "notebooks")
    shutil.copy(paths.ROOT / ".gitattributes", repo / ".gitattributes")
    shutil.copy(paths.ROOT / ".gitignore", repo / ".gitignore")
    _git(repo, "init", "-q")
    for key, value in (("filter.nbstripout.clean", clean), ("filter.nbstripout.smudge", "cat"),
                       ("filter.nbstripout.required", "true"), ("user.email", "t@example.com"), ("user.name", "t")):
        _git(repo, "config", key, value)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "notebooks")
    profile = smoke_artifacts
    monkeypatch.setattr(paths, "ARTIFACTS", profile.parent)
    before = {p: p.read_bytes() for p in profile.rglob("*") if p.is_file() and "scratch" not in p.parts}
    environment = {**os.environ, "MNIST_LAB_ARTIFACTS": str(profile.parent), "MNIST_LAB_NOTEBOOKS": str(repo / "notebooks")}
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        lab_run_and_save(repo / "notebooks", NOTEBOOK, environment, browser)
    finally:
        browser.quit()
    assert '"output_type"' in (repo / "notebooks" / f"{NOTEBOOK}.ipynb").read_text()  # Lab saved its outputs
    assert _git(repo, "diff", "--stat", "notebooks/") == ""  # and git sees none of them
    assert _git(repo, "ls-files", "--others", "--exclude-standard") == ""  # nor Lab's checkpoints
    # The hand run wrote its outputs apart, and nothing the report reads changed.
    assert any((profile / "scratch").rglob("*.pdf"))
    after = {p: p.read_bytes() for p in profile.rglob("*") if p.is_file() and "scratch" not in p.parts}
    assert after == before
    from mnist_lab.cli import main
    from mnist_lab.workbook import notebooks

    stale = {name: notebooks.stale_as_run(name, "smoke") for name in notebooks.available()}
    assert not any(stale.values()), stale
    if shutil.which("latexmk") and shutil.which("pdftotext"):
        assert main(["report", "--profile", "smoke"]) == 0  # not refused
