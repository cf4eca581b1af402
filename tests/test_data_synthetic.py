"""Synthetic scenes: determinism, label consistency, class coverage and the on-disk cache."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtl_ops.data import (SYNTHETIC_CLASSES, SYNTHETIC_TASKS, SyntheticScenes, backproject,
                          default_cache_dir)
from mtl_ops.data import synthetic as synthetic_module
from mtl_ops.data.render import EDGE_REL_JUMP
from mtl_ops.data.scenes import FLOOR

SIZE = (24, 32)
N = 24
SEED = 3


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic_cache")


@pytest.fixture(scope="module")
def scenes(cache_root):
    return SyntheticScenes("train", n=N, size=SIZE, seed=SEED, cache_dir=cache_root)


@pytest.fixture(scope="module")
def samples(scenes):
    return [scenes[i] for i in range(len(scenes))]


def assert_samples_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sample_keys_shapes_dtypes(scenes, samples):
    h, w = SIZE
    expected = {"image": ((3, h, w), torch.float32), "valid": ((1, h, w), torch.bool),
                "semseg": ((h, w), torch.int64), "depth": ((1, h, w), torch.float32),
                "normals": ((3, h, w), torch.float32), "edges": ((1, h, w), torch.float32),
                "attributes": ((len(SYNTHETIC_CLASSES),), torch.float32)}
    assert len(scenes) == N and scenes.num_classes == len(SYNTHETIC_CLASSES) >= 10
    for sample in samples:
        assert {k: (tuple(v.shape), v.dtype) for k, v in sample.items()} == expected
        assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
        labels = sample["semseg"].unique()
        assert bool(((labels < scenes.num_classes) | (labels == 255)).all())
        assert set(sample["edges"].unique().tolist()) <= {0.0, 1.0}


def test_valid_mask_convention(samples):
    for sample in samples:
        valid = sample["valid"][0]
        assert bool((sample["depth"][0][valid] > 0).all())
        assert bool((sample["depth"][0][~valid] == 0).all())
        assert bool((sample["normals"][:, ~valid] == 0).all())
        assert bool((sample["semseg"][~valid] == 255).all())
        assert bool((sample["semseg"][valid] != 255).all())
        norms = sample["normals"][:, valid].norm(dim=0)
        torch.testing.assert_close(norms, torch.ones_like(norms))


def test_same_seed_identical_different_seed_differs():
    a = SyntheticScenes("train", n=3, size=SIZE, seed=11, cache=False)
    b = SyntheticScenes("train", n=3, size=SIZE, seed=11, cache=False)
    c = SyntheticScenes("train", n=3, size=SIZE, seed=12, cache=False)
    for i in range(3):
        assert_samples_equal(a[i], b[i])
        assert not torch.equal(a[i]["image"], c[i]["image"])
        assert not torch.equal(a[i]["depth"], c[i]["depth"])


def test_train_and_val_are_disjoint(samples, cache_root):
    val = SyntheticScenes("val", n=8, size=SIZE, seed=SEED, cache_dir=cache_root)
    for j in range(len(val)):
        v = val[j]
        for t in samples:
            assert not torch.equal(v["image"], t["image"])
            assert not torch.equal(v["depth"], t["depth"])


def test_normals_agree_with_depth_gradients_on_floor(scenes, samples):
    checked = 0
    for sample in samples:
        points = backproject(sample["depth"], scenes.intrinsics)  # (3, H, W)
        d_du = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
        d_dv = points[:, 2:, 1:-1] - points[:, :-2, 1:-1]
        from_depth = torch.linalg.cross(d_dv, d_du, dim=0)
        from_depth = from_depth / from_depth.norm(dim=0, keepdim=True).clamp_min(1e-12)
        floor = (sample["semseg"] == FLOOR).float()[None, None]
        interior = torch.nn.functional.avg_pool2d(floor, 3, stride=1)[0, 0] == 1.0
        cosine = (from_depth * sample["normals"][:, 1:-1, 1:-1]).sum(0)[interior]
        assert bool((cosine > 0.999).all()), cosine.min()
        checked += int(interior.sum())
    assert checked > 200


def test_normals_face_the_camera(scenes, samples):
    for sample in samples:
        points = backproject(sample["depth"], scenes.intrinsics)
        valid = sample["valid"][0]
        assert bool(((points * sample["normals"]).sum(0)[valid] < 0).all())


def _neighbours(t, fill):
    """The 4-neighbours of every pixel of ``t (H, W)`` (``fill`` outside), stacked ``(4, H, W)``."""
    padded = torch.nn.functional.pad(t[None, None].double(), (1, 1, 1, 1), value=fill)[0, 0]
    return torch.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])


def test_edges_lie_on_label_boundaries_or_depth_discontinuities(samples):
    edge_count = 0
    for sample in samples:
        semseg, depth, edges = sample["semseg"], sample["depth"][0], sample["edges"][0] > 0
        labels_n, depth_n = _neighbours(semseg, 255), _neighbours(depth, 0)
        semantic = ((labels_n != semseg) & (labels_n != 255) & (semseg != 255)).any(0)
        jump = ((depth_n > 0) & (depth > 0)
                & ((depth_n - depth).abs() > EDGE_REL_JUMP * torch.minimum(depth_n, depth.double()))).any(0)
        assert bool((semantic | jump)[edges].all())
        assert bool(edges[semantic].all())
        edge_count += int(edges.sum())
    assert edge_count > 0


def test_attributes_are_the_classes_present(scenes, samples):
    for sample in samples:
        present = torch.zeros(scenes.num_classes)
        labels = sample["semseg"].unique()
        present[labels[labels != 255]] = 1.0
        assert torch.equal(sample["attributes"], present)


def test_at_least_ten_classes_appear(samples):
    total = torch.stack([s["attributes"] for s in samples]).sum(0)
    assert int((total > 0).sum()) >= 10, total


def test_cache_hit_returns_same_data_without_generating(scenes, samples, cache_root, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("cache hit expected, but the generator ran")

    monkeypatch.setattr(synthetic_module, "generate_synthetic", fail)
    again = SyntheticScenes("train", n=N, size=SIZE, seed=SEED, cache_dir=cache_root)
    assert again.cache_path == scenes.cache_path
    for i in (0, N - 1):
        assert_samples_equal(again[i], samples[i])


def test_cached_data_equals_fresh_generation(samples):
    fresh = SyntheticScenes("train", n=N, size=SIZE, seed=SEED, cache=False)
    for i in (0, 5, N - 1):
        assert_samples_equal(fresh[i], samples[i])


def test_changed_key_regenerates(tmp_path, monkeypatch):
    calls = []
    real = synthetic_module.generate_synthetic

    def counting(*args, **kwargs):
        calls.append(args[:2])
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic_module, "generate_synthetic", counting)
    base = dict(split="train", n=2, size=(16, 16), seed=0, cache_dir=tmp_path)
    first = SyntheticScenes(**base)
    SyntheticScenes(**base)
    assert len(calls) == 1
    for change in ({"n": 3}, {"size": (16, 24)}, {"seed": 1}, {"split": "val"}):
        SyntheticScenes(**{**base, **change})
    assert len(calls) == 5
    monkeypatch.setattr(synthetic_module, "GENERATOR_VERSION", synthetic_module.GENERATOR_VERSION + 1)
    bumped = SyntheticScenes(**base)
    assert len(calls) == 6 and bumped.cache_path != first.cache_path
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 6


def test_corrupt_cache_entry_is_regenerated(tmp_path):
    first = SyntheticScenes("train", n=2, size=(16, 16), seed=0, cache_dir=tmp_path)
    reference = first[1]
    (first.cache_path / "depth.npy").write_bytes(b"garbage")
    again = SyntheticScenes("train", n=2, size=(16, 16), seed=0, cache_dir=tmp_path)
    assert_samples_equal(again[1], reference)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_OPS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "synthetic"
    ds = SyntheticScenes("val", n=1, size=(16, 16), seed=0)
    assert ds.cache_path.parent == tmp_path / "synthetic"
    monkeypatch.delenv("MTL_OPS_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "mtl_ops", "synthetic")


def test_task_selection(cache_root, samples):
    ds = SyntheticScenes("train", n=N, size=SIZE, seed=SEED, tasks=("depth",), cache_dir=cache_root)
    sample = ds[2]
    assert set(sample) == {"image", "valid", "depth"}
    assert torch.equal(sample["depth"], samples[2]["depth"])
    assert set(SYNTHETIC_TASKS) == {"semseg", "depth", "normals", "edges", "attributes"}


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "test"}, "split"),
    ({"n": 0}, "n: expected"),
    ({"seed": -1}, "seed"),
    ({"size": (4, 32)}, "size"),
    ({"tasks": ("semseg", "flow")}, "tasks"),
])
def test_bad_arguments(kwargs, match, tmp_path):
    args = {"split": "train", "n": 2, "size": (16, 16), "seed": 0, "cache_dir": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=match):
        SyntheticScenes(**args)


def test_index_out_of_range(scenes):
    with pytest.raises(IndexError, match="out of range"):
        scenes[N]


def test_dataloader_and_pickling(scenes, samples):
    batch = next(iter(DataLoader(scenes, batch_size=4)))
    assert batch["image"].shape == (4, 3, *SIZE) and batch["semseg"].dtype == torch.int64
    clone = pickle.loads(pickle.dumps(scenes))
    assert clone._arrays is None  # memory maps are re-opened, not pickled
    assert_samples_equal(clone[7], samples[7])


def test_generated_arrays_layout():
    threads = torch.get_num_threads()
    arrays = synthetic_module.generate_synthetic(2, (16, 20), seed=5, split="val")
    assert torch.get_num_threads() == threads  # restored after rendering single-threaded
    assert arrays["image"].shape == (2, 3, 16, 20) and arrays["image"].dtype == np.uint8
    assert arrays["depth"].dtype == np.float32 and arrays["normals"].dtype == np.int8
