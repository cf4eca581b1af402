"""The report figures: labels read from the matplotlib figure objects before they are saved (not from pixels)."""
import json

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.image import imread

from mtl_ops.train import Trainer
from mtl_ops.train.curves import CURVES_FILE, run_curves_figure, series
from mtl_ops.train.figures import (figure_texts, policy_figure, predictions_figure, save_figure, similarity_figure,
                                   spread_figure)
from mtl_ops.train.report import prediction_grid
from train_helpers import one_thread, tiny_config  # noqa: F401


def image_axes(figure):
    return [ax for ax in figure.get_axes() if ax.images]


def test_prediction_grid_names_rows_and_columns_and_fills_every_tile():
    tasks = ("semseg", "depth", "normals", "edges", "attributes")
    trainers = {name: Trainer(tiny_config(method=name, tasks=tasks)) for name in ("single_task", "shared")}
    first = trainers["single_task"]
    figure = prediction_grid(trainers, first.val_set, tasks, first.num_classes)
    texts = figure_texts(figure)
    for label in ("ground truth", "single_task", "shared", "input", "semseg", "depth", "normals", "edges",
                  "validation image 0", "validation image 1"):
        assert label in texts
    assert "attributes" not in texts  # not a dense task: no column
    rows, columns, blocks = 3, 5, 2
    tiles = image_axes(figure)
    assert len(tiles) == rows * columns * blocks
    for ax in tiles:  # no black (empty) tile: the model rows show the input image too
        assert np.asarray(ax.images[0].get_array()).max() > 0
    # each row label is written once, at the left of the first block
    assert texts.count("shared") == 1 and texts.count("semseg") == blocks


def test_predictions_figure_refuses_a_missing_tile():
    tile = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="row 'shared': expected 2 RGB"):
        predictions_figure([("image 0", [("ground truth", [tile, tile]), ("shared", [tile, None])])],
                           ["input", "semseg"])
    with pytest.raises(ValueError, match="same non-empty row names"):
        predictions_figure([("a", [("x", [tile])]), ("b", [("y", [tile])])], ["input"])


def test_similarity_heat_map_has_task_names_values_and_a_colour_bar(tmp_path):
    tasks = ["semseg", "depth", "normals"]
    matrix = np.array([[1.0, 0.25, -0.125], [0.25, 1.0, 0.5], [-0.125, 0.5, 1.0]])
    figure = similarity_figure(matrix, tasks, "PDF decoder stage 0")
    texts = figure_texts(figure)
    for label in tasks + ["PDF decoder stage 0", "debiased linear CKA", "1.00", "0.25", "0.50", "-0.12"]:
        assert label in texts
    assert len(figure.get_axes()) == 2  # the map and its colour bar
    image = figure.get_axes()[0].images[0]
    assert image.get_clim() == (-0.125, 1.0)  # widened to a negative debiased estimate
    path = save_figure(figure, tmp_path / "s.png")
    assert imread(path).ndim == 3
    with pytest.raises(ValueError, match=r"expected a \(3, 3\) matrix"):
        similarity_figure(np.eye(2), tasks, "x")


def test_policy_figure_shows_probabilities_beside_the_sampled_policy():
    tasks = ["semseg", "depth"]
    sampled = [[1, 0, 1], [0, 0, 1]]
    probabilities = [[0.9, 0.2, 0.61], [0.35, 0.125, 0.75]]
    texts = figure_texts(policy_figure(tasks, sampled, probabilities))
    for label in tasks + ["learned execute probability", "sampled policy", "P(execute)", "residual block",
                          "0.90", "0.61", "0.12", "1", "2", "3"]:
        assert label in texts
    assert texts.count("run") == 3 and texts.count("skip") == 3
    alone = figure_texts(policy_figure(tasks, sampled))
    assert "sampled policy" in alone and "learned execute probability" not in alone
    with pytest.raises(ValueError, match="probabilities must have the sampled policy's shape"):
        policy_figure(tasks, sampled, [[0.5, 0.5]])


def test_curves_of_a_run_are_written_and_labelled(tmp_path):
    trainer = Trainer(tiny_config(tasks=("semseg", "depth"), epochs=2, out_dir=str(tmp_path)))
    trainer.fit()
    assert imread(tmp_path / CURVES_FILE).ndim == 3
    texts = figure_texts(run_curves_figure(trainer.history, "shared"))
    for label in ("training loss", "total", "semseg", "depth", "validation semseg", "validation depth",
                  "semseg mIoU (higher is better)", "depth rmse (lower is better)", "epoch", "shared"):
        assert label in texts


def test_curves_mark_each_phase_where_it_first_starts():
    rows = [{"phase": phase, "epoch": epoch, "train_loss": {"total": 1.0 / epoch, "semseg": 0.5 / epoch}}
            for epoch, phase in enumerate(["warmup", "weights", "policy", "weights", "policy", "retrain"], 1)]
    rows[-1]["val"] = {"semseg": {"mIoU": 12.0, "pixel_acc": 50.0}}
    rows.append({"phase": "report", "epoch": 6, "comparison": {}})  # neither a loss nor a metric
    rows.append({"phase": "evaluation", "epoch": 7, "val": {"semseg": {"mIoU": 14.0, "pixel_acc": 55.0}}})
    loss, metrics, phases = series(rows)
    assert phases == [(0, "warmup"), (1, "weights"), (2, "policy"), (5, "retrain")]
    assert list(loss) == ["total", "semseg"] and len(loss["total"]) == 6
    assert metrics == {"semseg": [(6, 12.0), (7, 14.0)]}
    texts = figure_texts(run_curves_figure(rows))
    assert {"warmup", "weights", "policy", "retrain"} <= set(texts)


def test_spread_figure_names_methods_and_panels():
    figure = spread_figure([("semseg mIoU", "semseg mIoU (higher is better)", {"shared": [1.0, 2.0], "ctal": [3.0]}),
                            ("Δm key vs shared", "Δm key (%)", {"shared": [0.5, -0.5], "ctal": [4.0]})], "2 seeds")
    texts = figure_texts(figure)
    for label in ("semseg mIoU", "Δm key vs shared", "shared", "ctal", "2 seeds", "Δm key (%)"):
        assert label in texts
    dots = [c for ax in figure.get_axes() for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(len(c.get_offsets()) for c in dots) == [1, 1, 2, 2]  # one dot per seed
    with pytest.raises(ValueError, match="at least one panel"):
        spread_figure([])


def test_pdf_heat_map_from_the_schedule_is_labelled(tmp_path, monkeypatch):
    import mtl_ops.train.pdf_schedule as pdf

    drawn = []
    monkeypatch.setattr(pdf, "save_figure", lambda figure, path: drawn.append((figure_texts(figure), path)))
    tasks = ("semseg", "depth", "normals")
    Trainer(tiny_config(method="pdf", tasks=tasks, out_dir=str(tmp_path),
                        schedule_options={"threshold": -1.0, "cka_images": 8, "step_epochs": 1,
                                          "max_fusions": 1})).fit()
    (texts, path), = drawn
    assert path.name == "pdf_similarity_stage0.png"
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    _, metrics, _ = series(rows)  # the final metrics the trainer logged for this schedule are on the curves
    assert set(metrics) == set(tasks) and (tmp_path / CURVES_FILE).is_file()
    assert set(tasks) <= set(texts) and "debiased linear CKA" in texts and "1.00" in texts
    assert any(t.startswith("PDF decoder stage 0") for t in texts)
