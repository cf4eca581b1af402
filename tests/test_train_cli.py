"""mtl-ops train / eval / predict / demo on tiny settings, and their errors."""
import json

import numpy as np
import pytest

from PIL import Image

from mtl_ops.cli import main
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
    Image.fromarray(image).save(tmp_path / "img.png")
    assert main(["predict", str(out / "last.pt"), str(tmp_path / "img.png"), "--out-dir", str(tmp_path / "p")]) == 0
    for task in ("semseg", "depth", "normals", "edges"):
        with Image.open(tmp_path / "p" / f"img_{task}.png") as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (40, 32))
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
    with Image.open(out / "predictions.png") as im:
        width, height = im.size
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
    (["train", "--backbone", "timm:test_resnet", "--width", "8"],
     "config.width: the base width of the built-in ResNets (resnet10, resnet18, resnet34) only; backbone "
     "timm:test_resnet has its own widths, so leave width out (got 8)"),
    (["train", "--pretrained", "/no/such/weights.pt"] + TINY, "pretrained: no file at /no/such/weights.pt"),
])
def test_cli_errors_are_clear(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


@pytest.fixture(scope="module")
def semseg_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("semseg_run")
    assert main(["train", "--epochs", "1", "--out-dir", str(out), "--tasks", "semseg", "depth"] + TINY) == 0
    return out / "last.pt"


def _predict(checkpoint, image, out_dir):
    return main(["predict", str(checkpoint), str(image), "--out-dir", str(out_dir)])


def test_predict_bad_image(semseg_checkpoint, tmp_path, capsys):
    assert _predict(semseg_checkpoint, tmp_path / "missing.png", tmp_path) == 2
    assert "IMAGE: no file" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("x")
    assert _predict(semseg_checkpoint, tmp_path / "x.txt", tmp_path) == 2
    assert "is neither a .npy array nor an image format Pillow reads" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["photo.jpg", "PHOTO.JPG"])
def test_predict_a_jpeg(semseg_checkpoint, tmp_path, capsys, name):
    image = (np.random.default_rng(1).random((32, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / name)
    assert _predict(semseg_checkpoint, tmp_path / name, tmp_path / "p") == 0
    stem = name.split(".")[0]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [f"{stem}_depth.png", f"{stem}_semseg.png"]
    with Image.open(tmp_path / "p" / f"{stem}_semseg.png") as im:
        assert im.size == (40, 32)


def test_predict_refuses_non_finite_pixels_before_the_model_runs(semseg_checkpoint, tmp_path, capsys, monkeypatch):
    from mtl_ops.train import inference

    image = np.random.default_rng(2).random((32, 40, 3)).astype(np.float32)
    image[3, 5, 1] = np.nan
    np.save(tmp_path / "nan.npy", image)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for an image with NaN pixels")
    monkeypatch.setattr(inference, "load_trained", no_model)
    assert _predict(semseg_checkpoint, tmp_path / "nan.npy", tmp_path / "p") == 2
    err = capsys.readouterr().err
    assert "mtl-ops predict: error: IMAGE: expected finite pixel values, got 1 NaN or infinite value(s) (the first " \
           "at row 3, column 5: nan)" in err
    assert not (tmp_path / "p").exists()


def test_predict_scales_uint16_by_its_range(semseg_checkpoint, tmp_path, capsys):
    levels = np.random.default_rng(3).integers(0, 65536, (32, 40, 3)).astype(np.uint16)
    np.save(tmp_path / "a16.npy", levels)
    np.save(tmp_path / "unit.npy", levels.astype(np.float32) / np.float32(65535))
    assert _predict(semseg_checkpoint, tmp_path / "a16.npy", tmp_path / "p") == 0
    assert _predict(semseg_checkpoint, tmp_path / "unit.npy", tmp_path / "p") == 0
    for task in ("semseg", "depth"):
        with Image.open(tmp_path / "p" / f"a16_{task}.png") as a, Image.open(tmp_path / "p" / f"unit_{task}.png") as b:
            assert np.array_equal(np.asarray(a), np.asarray(b)), task
    # the same levels divided by 255 (as before) would be refused: the range is the dtype's, not the values'
    np.save(tmp_path / "wide.npy", levels.astype(np.float32))
    assert _predict(semseg_checkpoint, tmp_path / "wide.npy", tmp_path / "p") == 2
    assert "IMAGE: expected float pixels in [0, 1] (or 8-bit levels in [0, 255])" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["medusa", "etr_nlp", "pdf"])
def test_train_a_timm_backbone_from_a_weights_file(method, tmp_path, capsys):
    """The methods that failed on timm backbones (width injected, 5 maps for PDF), with local weights; eval
    rebuilds the network from the checkpoint without reading the weights file again."""
    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    weights = tmp_path / "w.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()},
                                str(weights))
    out = tmp_path / "run"
    tiny = [a for a in TINY if a != "--quiet"]
    tiny = tiny[:tiny.index("--width")] + tiny[tiny.index("--width") + 2:]
    assert main(["train", "--method", method, "--backbone", "timm:test_resnet", "--pretrained", str(weights),
                 "--epochs", "1", "--max-steps-per-epoch", "1", "--out-dir", str(out), "--tasks", "semseg",
                 "depth"] + tiny) == 0
    printed = capsys.readouterr().out
    assert f"pretrained: loaded" in printed and f"from {weights}" in printed
    assert json.loads((out / "config.json").read_text())["pretrained"] == str(weights)
    weights.unlink()
    assert main(["eval", str(out / "last.pt")]) == 0
