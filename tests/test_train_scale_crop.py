"""The trainer's use of the .npy loaders' random scale crop: on by default for the real datasets' training
steps only (never evaluation, never the synthetic scenes), seeded per epoch, switchable from config and CLI."""
import itertools

import pytest
import torch

from mtl_ops.cli import _train_config, build_parser
from mtl_ops.data import NYUV2_CLASSES, scale_crop
from mtl_ops.train import Trainer
from test_data_npy import write_split
from train_helpers import one_thread, tiny_config

SIZE = (32, 40)
TASKS = ("semseg", "depth", "normals")


@pytest.fixture
def nyu_root(tmp_path):
    write_split(tmp_path, "train", 8, SIZE, len(NYUV2_CLASSES))
    write_split(tmp_path, "val", 4, SIZE, len(NYUV2_CLASSES), seed=1)
    return tmp_path


def nyu_config(root, **overrides):
    base = dict(dataset="nyuv2", data_root=str(root), size=SIZE, tasks=TASKS, augment=True)
    base.update(overrides)
    return tiny_config(**base)


def test_training_steps_read_scale_cropped_samples_and_evaluation_does_not(nyu_root):
    trainer = Trainer(nyu_config(nyu_root, crop_scales=(1.5,)))
    view = trainer.train_view
    assert view is not trainer.train_set and view.augment and view.scales == (1.5,) and view.flip_prob == 0.0
    assert not trainer.train_set.augment and not trainer.val_set.augment

    plain = {k: v for k, v in trainer.train_set[3].items() if k in ("image", "semseg", "depth", "normals")}
    torch.manual_seed(0)
    cropped = view[3]
    assert not torch.equal(cropped["image"], plain["image"])
    crop_h, crop_w = int(SIZE[0] / 1.5), int(SIZE[1] / 1.5)
    matches = [(top, left) for top, left in itertools.product(range(SIZE[0] - crop_h + 1), range(SIZE[1] - crop_w + 1))
               if all(torch.equal(cropped[k], v) for k, v in scale_crop(plain, 1.5, top, left).items())]
    assert len(matches) == 1  # a zoom by 1.5 (depth divided by it) of one window, not mirrored: the trainer flips
    assert torch.equal(cropped["valid"], cropped["depth"] > 0)

    read = []
    loader = trainer.loader
    trainer.loader = lambda dataset, *args, **kwargs: read.append(dataset) or loader(dataset, *args, **kwargs)
    trainer.train_epoch(0)
    trainer.evaluate()
    assert read == [view, trainer.val_set]


def test_scale_crop_changes_training_and_is_seeded_per_epoch(nyu_root):
    def first_epoch(**overrides):
        return Trainer(nyu_config(nyu_root, crop_scales=(1.5,), **overrides)).train_epoch(0)

    cropped = first_epoch()
    assert first_epoch() == cropped  # the same crops again: reproducible (and so resumable)
    assert first_epoch(scale_crop=False) != cropped


@pytest.mark.parametrize("overrides,enabled", [
    ({}, True),
    ({"scale_crop": False}, False),
    ({"augment": False}, False),                      # --no-augment: no augmentation unless asked
    ({"augment": False, "scale_crop": True}, True),
])
def test_switch_for_nyuv2(nyu_root, overrides, enabled):
    trainer = Trainer(nyu_config(nyu_root, **overrides))
    assert (trainer.train_view is not trainer.train_set) == enabled
    assert not trainer.val_set.augment


def test_synthetic_has_no_scale_crop():
    trainer = Trainer(tiny_config(augment=True))
    assert trainer.train_view is trainer.train_set


@pytest.mark.parametrize("overrides,match", [
    ({"scale_crop": True}, r"config.scale_crop: expected false or null \(auto\) for dataset 'synthetic'"),
    ({"scale_crop": "yes"}, r"config.scale_crop: expected true, false or null \(auto\), got 'yes'"),
    ({"crop_scales": (0.5, 1.0)}, r"config.crop_scales: expected a non-empty list of zoom factors >= 1, got \(0.5, 1.0\)"),
    ({"crop_scales": ()}, r"config.crop_scales: expected a non-empty list"),
])
def test_bad_scale_crop_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


def test_scale_crop_asked_for_a_dataset_without_it(nyu_root):
    synthetic = Trainer(tiny_config()).train_set
    with pytest.raises(ValueError, match="config.scale_crop: True needs a training set with the scale-crop "
                                         "augmentation .* got SyntheticScenes"):
        Trainer(nyu_config(nyu_root, scale_crop=True), synthetic, synthetic, 13)


def test_cli_switches(nyu_root):
    parser = build_parser()
    args = parser.parse_args(["train", "--dataset", "nyuv2", "--data-root", str(nyu_root), "--no-scale-crop"])
    assert _train_config(args).scale_crop is False
    args = parser.parse_args(["train", "--dataset", "nyuv2", "--data-root", str(nyu_root), "--crop-scales", "1", "1.25"])
    config = _train_config(args)
    assert config.scale_crop is None and config.crop_scales == (1.0, 1.25)
    assert config.to_dict()["crop_scales"] == [1.0, 1.25]
    with pytest.raises(ValueError, match="config.scale_crop"):
        _train_config(parser.parse_args(["train", "--scale-crop"]))
