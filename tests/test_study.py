"""mtl-ops study at a tiny budget (2 seeds x 2 methods x 1 epoch): mean ± standard deviation per metric and Δm
against both baselines, the per-seed spread figure, and resuming per (method, seed)."""
import json
import statistics

import pytest
from matplotlib.image import imread

from mtl_ops.cli import main
from mtl_ops.train.figures import figure_texts, spread_figure
from mtl_ops.train.report import delta_m
from mtl_ops.train.study import run_study
from mtl_ops.train.study_report import mean_metrics, spread_panels
from train_helpers import CACHE, one_thread  # noqa: F401

TASKS = ["semseg", "depth"]
TINY = ["--size", "32", "40", "--num-threads", "1", "--n-train", "16", "--n-val", "8", "--width", "8", "--batch-size", "8",
        "--cache-dir", CACHE, "--quiet", "--tasks"] + TASKS
STUDY = ["--seeds", "2", "--methods", "single_task", "shared", "--epochs", "1"] + TINY


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert main(["study", "--out-dir", str(out)] + STUDY) == 0
    return out, json.loads((out / "study.json").read_text())


def test_study_writes_mean_and_spread_over_seeds(study):
    out, data = study
    assert data["seeds"] == [0, 1] and data["methods"] == ["single_task", "shared"]
    assert data["config"]["epochs"] == 1 and data["command"].startswith("mtl-ops study")
    assert len(data["runs"]) == 4
    for method in ("single_task", "shared"):
        runs = [r for r in data["runs"] if r["method"] == method]
        assert sorted(r["seed"] for r in runs) == [0, 1]
        assert runs[0]["metrics"] != runs[1]["metrics"]  # the seed changes the run
        s = data["summary"][method]["metrics"]["semseg"]["mIoU"]
        values = [r["metrics"]["semseg"]["mIoU"] for r in runs]
        assert s["n"] == 2 and s["values"] == values
        assert s["mean"] == pytest.approx(statistics.fmean(values))
        assert s["std"] == pytest.approx(statistics.stdev(values))
        # Δm of each run against the mean of the baseline's runs, for both baselines
        for baseline in ("single_task", "shared"):
            base = mean_metrics([r for r in data["runs"] if r["method"] == baseline])
            expected = [delta_m(r["metrics"], base, TASKS, key=True) for r in runs]
            assert data["summary"][method]["delta_m"][baseline]["key"]["values"] == pytest.approx(expected)
    assert imread(out / "study_spread.png").ndim == 3
    for method in ("single_task", "shared"):
        for seed in (0, 1):
            assert (out / method / f"seed{seed}" / "result.json").is_file()
            assert (out / method / f"seed{seed}" / "curves.png").is_file()


def test_study_markdown(study):
    out, data = study
    md = (out / "study.md").read_text()
    for fact in ("# mtl-ops study", "date:", "commit:", "machine:", "command: `mtl-ops study", "## Budget",
                 "from scratch on 16 synthetic training images of 32×40 pixels", "## Validation metrics (mean ± standard "
                 "deviation over the seeds)", "| trivial |", "Δm key vs single_task | Δm all vs single_task | "
                 "Δm key vs shared | Δm all vs shared", "![per-seed spread](study_spread.png)"):
        assert fact in md
    mean = data["summary"]["shared"]["metrics"]["semseg"]["mIoU"]
    assert f"{mean['mean']:.3f} ± {mean['std']:.3f}" in md


def test_spread_figure_of_the_study_is_labelled(study):
    _, data = study
    figure = spread_figure(spread_panels(data["summary"], TASKS, data["trivial"]), "2 seeds")
    texts = figure_texts(figure)
    for label in ("semseg mIoU", "depth rmse", "Δm key vs single_task", "Δm key vs shared", "single_task", "shared",
                  "semseg mIoU (higher is better)", "depth rmse (lower is better)", "trivial predictor"):
        assert label in texts


def test_study_resumes_per_method_and_seed(study, capsys):
    out, data = study
    stopped = out / "shared" / "seed1"
    (stopped / "result.json").unlink()  # as if the study had stopped during this run
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/last.pt") if p.parent != stopped}
    capsys.readouterr()
    assert main(["study", "--out-dir", str(out)] + [a for a in STUDY if a != "--quiet"]) == 0  # with its log lines
    printed = capsys.readouterr().out
    assert printed.count("finished before, read back") == 3 and "shared seed 1: trained" in printed
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished runs were not trained again
    again = json.loads((out / "study.json").read_text())
    retrained = next(r for r in again["runs"] if r["method"] == "shared" and r["seed"] == 1)
    before = next(r for r in data["runs"] if r["method"] == "shared" and r["seed"] == 1)
    assert retrained["metrics"] == before["metrics"]  # the same seed trains the same run again


def test_study_refuses_another_budget_in_its_folder(study, capsys):
    out, _ = study
    assert main(["study", "--out-dir", str(out), "--seeds", "2", "--methods", "shared", "--epochs", "2"] + TINY) == 2
    err = capsys.readouterr().err
    assert "holds a study with another budget: epochs = 2 (the study's: 1)" in err and "--overwrite" in err


@pytest.mark.parametrize("seeds", [0, -2, True])
def test_bad_seed_count(tmp_path, seeds):
    with pytest.raises(ValueError, match="study: seeds must be a positive int"):
        run_study(tmp_path, seeds=seeds)
