"""The run is the unit: nameless specs, one content-addressed cache, a plan before the notebooks,
one decision function for the calibration studies, and edits that retrain only what they touch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mnist_lab import paths
from mnist_lab.errors import LabError
from mnist_lab.experiments import EXPERIMENTS, describe, describe_augmentation, get_experiment
from mnist_lab.profiles import get_profile
from mnist_lab.results import calibration
from mnist_lab.results.reference import REPORT_TABLES
from mnist_lab.runs import Run, RunCache
from mnist_lab.runs.cache import staleness
from mnist_lab.spec import RunSpec
from mnist_lab.workbook import notebooks

from conftest import train_run

# ---- specs and the cache ------------------------------------------------------------------------------


def test_a_name_is_a_label_two_spellings_of_one_recipe_are_one_run():
    spelled_out = get_experiment("vit[batch_size=64,hflip=false,max_rotation=10.0]")
    assert spelled_out.name != "vit"
    assert RunSpec.of(spelled_out, 0, device="cpu").key == RunSpec.of(get_experiment("vit"), 0, device="cpu").key
    assert RunSpec.of(get_experiment("vit"), 1, device="cpu").key != RunSpec.of(get_experiment("vit"), 0, device="cpu").key
    spec = RunSpec.of(spelled_out, 0, device="cpu", limit_train=100)
    assert "name" not in spec.value()["recipe"] and RunSpec.from_value(spec.value()) == spec


def test_the_cache_hands_out_only_the_run_it_holds_whole(mnist, small_mnist, tmp_path):
    cache = RunCache(tmp_path / "runs")
    experiment = get_experiment("basic_cnn").replace(epochs=1)
    spec = RunSpec.of(experiment, 0, device="cpu", limit_train=200, limit_test=100)
    assert cache.get(spec) is None and cache.problems(spec) == ["not trained yet"]
    run = cache.put(train_run(experiment, data=mnist, limit_train=200, limit_test=100))
    assert run.directory == cache.directory(spec) and cache.get(spec).metrics == run.metrics
    (run.directory / "metrics.json").write_text('{"test_accuracy": 100}')
    assert cache.get(spec) is None and cache.problems(spec) == ["metrics.json changed since the run"]
    # A run trained on other images than its spec names is never put under the spec's key.
    with pytest.raises(LabError, match="only runs on the spec's own data go into the run cache"):
        cache.put(train_run(experiment, data=small_mnist))


def test_the_plan_reads_each_spec_once_and_stages_a_screened_study():
    plan = notebooks.plan_runs(notebooks.available(), profile="smoke", shared={"device": "cpu"})
    runs, later = plan.runs, plan.later
    assert later == ["the vit study's confirmation, after its screen"]  # no screen run is cached yet
    keys = {run.spec.key for run in runs}
    assert len(runs) > len(keys)  # names read twice (cnn in Q2 and Q3, basic_cnn as batch 128) ...
    assert not (paths.ARTIFACTS / "smoke" / "runs").exists()  # ... and planning trains nothing


def test_the_full_plan_before_any_run_is_the_report_and_the_screens():
    plan = notebooks.plan_runs(notebooks.available(), profile="full", shared={"device": "cpu"})
    runs, later = plan.runs, plan.later
    assert later == ["the vit study's confirmation, after its screen"]
    labels = {run.label for run in runs}
    assert {"basic_cnn", "cnn", "cnn_flip", "mobilenet", "vit"} <= labels
    # 5 report runs, the 8 Table 1 candidates' runs that are not basic_cnn seed 0, 12 ViT screens.
    assert len({run.spec.key for run in runs}) == 5 + 8 + 12


# ---- one decision ------------------------------------------------------------------------------------


def _runs(offsets: list[float], model: str = "vit", final: list[float] | None = None) -> list[Run]:
    """Runs whose every column is the report's plus an offset (one run per offset); `final`, if
    given, sets each run's last test accuracy that far from the report's instead."""
    table = np.array(REPORT_TABLES[model])
    runs = []
    for index, offset in enumerate(offsets):
        history = pd.DataFrame(table + offset, columns=["train_loss", "train_accuracy", "test_accuracy"])
        if final is not None:
            history.loc[len(history) - 1, "test_accuracy"] = table[-1, 2] + final[index]
        runs.append(Run(directory=None, config={}, history=history, metrics={}, predictions=None, environment={}))
    return runs


def test_one_function_decides_both_studies_by_the_headline():
    vit = calibration.STUDIES["vit"]
    baseline, flip, wider = "rotation ±10°", "flip + rotation ±10°", "rotation ±20°"
    # flip + rotation follows every epoch but the last exactly and ends a point below the report's
    # final test accuracy; rotation ±10° is off everywhere by a tenth: the headline decides.
    confirmed = {flip: _runs([0, 0, 0], final=[-1.0, -1.1, -0.9]), baseline: _runs([0.1, 0.12, 0.08]),
                 wider: _runs([0.5, 0.55, 0.45])}
    decision = calibration.decide(vit, confirmed)
    assert calibration.ranked(confirmed, "vit")[0] == flip  # the curves' score would pick flip + rotation
    assert (decision.closest, decision.other, decision.clearly, decision.winner) == (baseline, wider, True, baseline)
    assert decision.ranking == [baseline, wider, flip] and decision.closest_curves == flip
    assert decision.in_use == baseline and decision.settled  # `vit` trains rotation ±10°
    assert decision.sentence(vit) == ("Closest to Table 4's final test accuracy (98.90%): rotation ±10°, clearly "
                                      "closer than rotation ±20° (closest by the curves: flip + rotation ±10°). "
                                      "The vit experiment trains it.")
    # A candidate closer to the headline beyond the seeds' spread wins over the baseline, and the
    # experiment (rotation ±10°) is then not the winner: the notebook says so in bold.
    decision = calibration.decide(vit, {baseline: _runs([0.5, 0.6, 0.4]), wider: _runs([0.1, -0.1, 0.05])})
    assert (decision.closest, decision.other, decision.clearly, decision.winner) == (wider, baseline, True, wider)
    assert not decision.settled and "not the winner rotation ±20°" in decision.sentence(vit)
    # Within the seeds' spread: not clearly closer, so the baseline keeps its place.
    decision = calibration.decide(vit, {baseline: _runs([0.2, 0.5, 0.1]), wider: _runs([0.1, 0.3, 0.2])})
    assert (decision.closest, decision.clearly, decision.winner, decision.settled) == (wider, False, baseline, True)
    # Table 1 names no baseline: the closest must beat the runner-up, or there is no winner.
    table1 = calibration.STUDIES["basic_cnn"]
    decision = calibration.decide(table1, {"batch 64": _runs([1, 1.2, 0.8], "basic_cnn"),
                                           "batch 128": _runs([0.1, 0.2, 0.1], "basic_cnn"),
                                           "batch 256": _runs([0.3, 0.5, 0.4], "basic_cnn")})
    assert (decision.closest, decision.other, decision.clearly, decision.winner) == \
        ("batch 128", "batch 256", True, "batch 128")
    assert decision.in_use == "batch 128" and decision.settled
    decision = calibration.decide(table1, {"batch 64": _runs([0.2, 0.5, 0.1], "basic_cnn"),
                                           "batch 128": _runs([0.1, 0.4, 0.3], "basic_cnn")})
    assert (decision.clearly, decision.winner, decision.settled) == (False, None, False)
    assert "so the study names no winner" in decision.sentence(table1)


def test_the_confirmed_table_puts_the_headline_first():
    frame = calibration.table({"rotation ±10°": _runs([0.1, 0.3], final=[-0.1, -0.3])}, "vit", headline=True)
    assert list(frame.columns[3:6]) == ["Final Test Acc.", "Headline Gap", "RMS Loss"]
    assert frame.loc[0, "Final Test Acc."] == "98.70 ± 0.14" and frame.loc[0, "Headline Gap"] == "0.20 ± 0.14"
    assert "Final Test Acc." not in calibration.table({"rotation ±10°": _runs([0.1])}, "vit")  # a screen's


def test_a_screen_passes_the_closest_and_the_baseline_on():
    vit = calibration.STUDIES["vit"]
    screen = lambda offsets: {label: _runs([offset] * 3) for label, offset in zip(vit.names, offsets)}  # noqa: E731
    # The baseline (rotation ±10°) farthest off: the closest three, and the baseline too.
    assert calibration.finalists(vit, screen([3.0, 0.5, 0.1, 2.0])) == [
        "rotation ±20°", "flip + rotation ±10°", "rotation ±10°, batch 128", "rotation ±10°"]
    # The baseline among the closest three: the one farthest off stays behind.
    assert calibration.finalists(vit, screen([0.3, 0.5, 0.1, 2.0])) == [
        "rotation ±20°", "rotation ±10°", "flip + rotation ±10°"]


def test_recipe_words_come_from_the_recipe():
    assert describe_augmentation(EXPERIMENTS["cnn"].augmentation) == "random rotations of up to ±10°"
    assert describe_augmentation(EXPERIMENTS["mobilenet"].augmentation) == "no augmentation"
    assert describe(EXPERIMENTS["vit"]).endswith("in batches of 64, random rotations of up to ±10°")


# ---- on the smoke build (one papermill run of every notebook per session) ------------------------------


def test_each_distinct_spec_trained_once_and_the_notebooks_trained_nothing(smoke_artifacts):
    cache = RunCache(smoke_artifacts / "runs")
    values = [json.dumps(record["inputs"], sort_keys=True) for _, record in cache.runs()]
    assert len(values) == len(set(values))  # no two cached runs of one spec
    printed = (smoke_artifacts.parent / "run-output.txt").read_text()
    first = next(line for line in printed.splitlines() if line.startswith("runs:"))
    distinct = int(first.split(" distinct")[0].split(", ")[-1])
    assert distinct == len(values) and f"{len(values)} to train" in first
    assert "seed 0: epoch" not in "".join(  # no kernel trained: no progress in any executed notebook
        "".join(output.get("text", "")) for name in notebooks.available()
        for cell in json.loads((smoke_artifacts / "notebooks" / f"{name}.ipynb").read_text())["cells"]
        for output in cell.get("outputs", []))


def test_no_calibrated_recipe_is_stated_other_than_the_one_trained(smoke_artifacts):
    profile = get_profile("smoke")
    text = {name: (smoke_artifacts / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8")
            for name in ("q2_cnn", "q3_comparison")}
    macros = "".join(p.read_text(encoding="utf-8") for p in (smoke_artifacts / "macros").glob("*.tex"))
    for name, notebook in (("basic_cnn", "q2_cnn"), ("cnn", "q2_cnn"), ("vit", "q3_comparison")):
        recipe = profile.apply(EXPERIMENTS[name])
        assert json.dumps(describe(recipe), ensure_ascii=False)[1:-1] in text[notebook], name
        prefix = "".join(part.capitalize() for part in name.split("_"))
        assert f"\\newcommand{{\\{prefix}Augmentation}}{{{describe_augmentation(recipe.augmentation)}}}" in macros
        assert f"\\newcommand{{\\{prefix}BatchSize}}{{{recipe.batch_size}}}" in macros
    in_use = calibration.STUDIES["vit"].in_use()
    assert f"\\newcommand{{\\VitRecipe}}{{{in_use}}}" in macros


@pytest.fixture
def edited_checkout(smoke_artifacts, tmp_path, monkeypatch):
    """The package copied beside the smoke build, for a test to edit: what is stale then?"""
    shutil.copytree(paths.ROOT / "mnist_lab", tmp_path / "mnist_lab", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(paths, "ARTIFACTS", smoke_artifacts.parent)
    return tmp_path / "mnist_lab"


def _stale_runs(smoke_artifacts) -> dict[str, list[str]]:
    cache = RunCache(smoke_artifacts / "runs")
    names = cache.names()
    return {", ".join(names.get(record["fingerprint"], [directory.name])): staleness(directory)
            for directory, record in cache.runs()}


def _stale_notebooks() -> dict[str, list[str]]:
    return {name: notebooks.stale_as_run(name, "smoke") for name in notebooks.available()}


def test_a_comment_in_a_model_stales_nothing(smoke_artifacts, edited_checkout):
    vit = edited_checkout / "models" / "vit.py"
    vit.write_text(vit.read_text() + "\n# a comment\n")
    assert not any(_stale_runs(smoke_artifacts).values())
    assert not any(_stale_notebooks().values())


def test_a_code_change_in_a_model_stales_its_runs_alone_studies_included(smoke_artifacts, edited_checkout):
    vit = edited_checkout / "models" / "vit.py"
    vit.write_text(vit.read_text() + "\n_EDITED = True\n")
    runs = _stale_runs(smoke_artifacts)
    stale = {name for name, reasons in runs.items() if reasons}
    assert stale == {name for name in runs if name.startswith("vit")}
    assert any(name.startswith("vit[") for name in stale)  # the study's candidates too
    assert all("mnist_lab/models/vit.py changed" in reasons[0] for name, reasons in runs.items() if reasons)
    notebook_reasons = _stale_notebooks()
    assert notebook_reasons["q1_convolution"] == [] and notebook_reasons["q1_losses"] == []
    assert notebook_reasons["q3_comparison"]


def test_a_plotting_change_stales_the_notebooks_that_plot_with_it_and_no_run(smoke_artifacts, edited_checkout):
    figures = edited_checkout / "results" / "figures.py"
    source = figures.read_text()
    assert "def loss_curve(" in source
    figures.write_text(source.replace("def loss_curve(", "def _unused():\n    return 1\n\n\ndef loss_curve(", 1))
    assert not any(_stale_runs(smoke_artifacts).values())
    stale = _stale_notebooks()
    assert stale["q1_losses"] == []
    for name in ("q2_cnn", "q3_comparison"):
        assert stale[name] == ["mnist_lab/results/figures.py changed"], stale[name]
