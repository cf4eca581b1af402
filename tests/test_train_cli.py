"""mtl-ops train / eval / predict / demo on tiny settings, and their errors."""
import json

import numpy as np
import pytest
from matplotlib.image import imread

from mtl_ops.cli import main
from mtl_ops.utils.png import read_png, read_png_header, write_png
from train_helpers import one_thread, CACHE

TINY = ["--size", "32", "40", "--num-threads", "1", "--n-train", "16", "--n-val", "8", "--width", "8", "--batch-size", "8",
        "--cache-dir", CACHE, "--quiet"]


def test_train_eval_predict(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "shared", "--epochs", "1", "--out-dir", str(out),
                 "--tasks", "semseg", "depth", "normals", "edges", "attributes"] + TINY) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["method"] == "shared" and trained["learnable_parameters"] > 0
    assert (out / "last.pt").is_file() and (out / "metrics.jsonl").is_file() and (out / "metrics.csv").is_file()

    assert main(["eval", str(out / "last.pt"), "--json", str(tmp_path / "m.json")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["val"] == trained["val"]
    assert json.loads((tmp_path / "m.json").read_text()) == evaluated

    image = (np.random.default_rng(0).random((32, 40, 3)) * 255).astype(np.uint8)
    write_png(tmp_path / "img.png", image)
    assert np.array_equal(read_png(tmp_path / "img.png"), image)
    assert main(["predict", str(out / "last.pt"), str(tmp_path / "img.png"), "--out-dir", str(tmp_path / "p")]) == 0
    for task in ("semseg", "depth", "normals", "edges"):
        assert read_png_header(tmp_path / "p" / f"img_{task}.png") == (40, 32, 3)
    assert "attributes (classes present)" in capsys.readouterr().out


def test_train_resume_from_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out-dir", str(out), "--tasks", "semseg"] + TINY) == 0
    assert main(["train", "--epochs", "2", "--out-dir", str(out), "--tasks", "semseg", "--resume",
                 str(out / "last.pt")] + TINY) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), "--methods", "single_task", "shared", "--epochs", "1",
                 "--tasks", "semseg", "depth", "edges", "--timing-steps", "1"] + TINY) == 0
    report = (out / "report.md").read_text()
    for row in ("| trivial |", "| single_task |", "| shared |", "Δm key vs single_task", "Δm key vs shared",
                "No fused op in the training step", "Edges F: the boundary F-measure",
                "within 0.011 × the image diagonal (0.56 px at 32×40)"):
        assert row in report
    assert "reference / fused" not in report  # neither model calls a fused op: no ratio table
    height, width, _ = imread(out / "predictions.png").shape
    assert height > 2 * 32 and width > 3 * 40
    results = json.loads((out / "metrics.json").read_text())
    assert set(results["methods"]) == {"trivial", "single_task", "shared"}
    assert results["methods"]["shared"]["timing"]["step_seconds"] > 0


@pytest.mark.parametrize("argv,match", [
    (["train", "--method", "nope"], "config.method: unknown method 'nope'"),
    (["train", "--dataset", "nyuv2", "--data-root", "/no/such/folder"], "/no/such/folder"),
    (["train", "--schedule-options", "{bad"], "--schedule-options: not valid JSON"),
    (["train", "--config", "/no/such/config.json"], "config: no file"),
    (["eval", "/no/such/ckpt.pt"], "checkpoint: no file at /no/such/ckpt.pt"),
    (["demo", "--methods", "nope"], "unknown method"),
])
def test_cli_errors_are_clear(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_predict_bad_image(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--out-dir", str(tmp_path), "--tasks", "semseg"] + TINY) == 0
    assert main(["predict", str(tmp_path / "last.pt"), str(tmp_path / "missing.png")]) == 2
    assert "IMAGE: no file" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("x")
    assert main(["predict", str(tmp_path / "last.pt"), str(tmp_path / "x.txt")]) == 2
    assert "expected a .png or .npy" in capsys.readouterr().err
