"""NYUv2 / Cityscapes loaders on tiny fixtures written in the MTAN/LibMTL ``.npy`` layout."""
import re
import shutil

import numpy as np
import pytest
import torch

from mtl_ops.data import CITYSCAPES_CLASSES, NYUV2_CLASSES, Cityscapes, NYUv2, hflip, scale_crop

SMALL = (8, 12)


def write_split(root, split, n, size, num_classes, normals=True, seed=0):
    """Write ``n`` random samples; returns the arrays written, per folder."""
    rng = np.random.default_rng(seed)
    h, w = size
    arrays = {"image": [], "label": [], "depth": [], "normal": []}
    for i in range(n):
        label = rng.integers(-1, num_classes, size=(h, w)).astype(np.float32)
        depth = rng.uniform(0.5, 9.0, size=(h, w, 1)).astype(np.float32)
        depth[0, :2] = 0.0  # missing measurements
        normal = rng.standard_normal((h, w, 3)).astype(np.float32)
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
        normal[depth[..., 0] == 0] = 0.0
        fields = {"image": rng.random((h, w, 3)).astype(np.float32), "label": label, "depth": depth}
        if normals:
            fields["normal"] = normal
        for folder, array in fields.items():
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            np.save(root / split / folder / f"{i}.npy", array)
            arrays[folder].append(array)
    return arrays


@pytest.fixture
def nyu_root(tmp_path):
    root = tmp_path / "nyuv2"
    arrays = write_split(root, "train", 3, SMALL, len(NYUV2_CLASSES))
    write_split(root, "val", 2, SMALL, len(NYUV2_CLASSES), seed=1)
    return root, arrays


def test_nyuv2_round_trip(nyu_root):
    root, arrays = nyu_root
    ds = NYUv2(root, "train", size=SMALL)
    assert len(ds) == 3 and ds.num_classes == 13
    for i in range(3):
        sample = ds[i]
        assert set(sample) == {"image", "valid", "semseg", "depth", "normals"}
        assert sample["image"].dtype == sample["depth"].dtype == sample["normals"].dtype == torch.float32
        assert sample["semseg"].dtype == torch.int64 and sample["valid"].dtype == torch.bool
        np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), arrays["image"][i])
        label = arrays["label"][i].astype(np.int64)
        np.testing.assert_array_equal(sample["semseg"].numpy(), np.where(label == -1, 255, label))
        np.testing.assert_array_equal(sample["depth"].permute(1, 2, 0).numpy(), arrays["depth"][i])
        np.testing.assert_array_equal(sample["normals"].permute(1, 2, 0).numpy(), arrays["normal"][i])
        assert torch.equal(sample["valid"], sample["depth"] > 0)
    assert len(NYUv2(root, "val", size=SMALL)) == 2


def test_default_sizes_load(tmp_path):
    write_split(tmp_path / "nyu", "train", 1, (288, 384), 13)
    sample = NYUv2(tmp_path / "nyu")[0]
    assert sample["image"].shape == (3, 288, 384) and sample["normals"].shape == (3, 288, 384)
    write_split(tmp_path / "city", "val", 1, (128, 256), 7, normals=False)
    city = Cityscapes(tmp_path / "city", "val")
    sample = city[0]
    assert set(sample) == {"image", "valid", "semseg", "depth"} and sample["depth"].shape == (1, 128, 256)
    assert city.classes == CITYSCAPES_CLASSES and int(sample["semseg"][sample["semseg"] != 255].max()) < 7


def test_cityscapes_has_no_normals(tmp_path):
    write_split(tmp_path, "train", 1, SMALL, 7, normals=False)
    with pytest.raises(ValueError, match="normals"):
        Cityscapes(tmp_path, tasks=("semseg", "normals"), size=SMALL)


def test_derived_edges_and_attributes(tmp_path):
    root = tmp_path / "nyu"
    write_split(root, "train", 1, SMALL, 13)
    label = np.full(SMALL, 4, dtype=np.float32)
    label[:, 6:] = 11
    label[0, 0] = -1
    np.save(root / "train" / "label" / "0.npy", label)
    sample = NYUv2(root, tasks=("edges", "attributes"), size=SMALL)[0]
    assert set(sample) == {"image", "valid", "edges", "attributes"}
    expected_edges = torch.zeros(1, *SMALL)
    expected_edges[..., 5:7] = 1.0
    assert torch.equal(sample["edges"], expected_edges)
    expected_attributes = torch.zeros(13)
    expected_attributes[[4, 11]] = 1.0
    assert torch.equal(sample["attributes"], expected_attributes)


def test_flip_augmentation_negates_normal_x(nyu_root):
    root, _ = nyu_root
    plain = NYUv2(root, size=SMALL, tasks=("semseg", "depth", "normals", "edges"))
    augmented = NYUv2(root, size=SMALL, tasks=("semseg", "depth", "normals", "edges"),
                      augment=True, scales=(1.0,))
    reference = plain[1]
    flipped = {k: v.flip(-1) for k, v in reference.items()}
    flipped["normals"] = flipped["normals"] * torch.tensor([-1.0, 1.0, 1.0])[:, None, None]
    seen = set()
    for seed in range(16):
        torch.manual_seed(seed)
        sample = augmented[1]
        kind = "flipped" if torch.equal(sample["image"], flipped["image"]) else "plain"
        target = flipped if kind == "flipped" else reference
        for key in reference:
            assert torch.equal(sample[key], target[key]), (kind, key)
        seen.add(kind)
    assert seen == {"flipped", "plain"}


def test_hflip_of_a_batch_mirrors_the_chosen_samples_as_the_sample_form_does(nyu_root):
    """One flip for loaders (a sample) and the trainer (a batch with a per-sample choice): dense entries
    (valid and edges too) mirror, normals' x changes sign, image-level attributes stay."""
    root, _ = nyu_root
    data = NYUv2(root, size=SMALL, tasks=("semseg", "depth", "normals", "edges", "attributes"))
    samples = [data[i] for i in range(3)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    flip = torch.tensor([True, False, True])
    out = hflip(batch, flip=flip)
    for i, sample in enumerate(samples):
        expect = hflip(sample) if flip[i] else sample
        for key in sample:
            assert torch.equal(out[key][i], expect[key]), (i, key)
    mirrored = hflip(samples[0])
    assert torch.equal(mirrored["valid"], samples[0]["valid"].flip(-1))
    assert torch.equal(mirrored["normals"][0], -samples[0]["normals"][0].flip(-1))
    assert torch.equal(mirrored["attributes"], samples[0]["attributes"])
    assert hflip(batch, flip=torch.zeros(3, dtype=torch.bool)) is batch
    with pytest.raises(ValueError, match=r"flip must be a bool tensor of shape \(B,\) = \(3,\), got torch.int64"):
        hflip(batch, flip=torch.ones(3, dtype=torch.long))


def test_scale_crop_zooms_labels_and_divides_depth():
    image = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(3, 4, 4)
    semseg = torch.arange(16).reshape(4, 4)
    depth = torch.arange(1, 17, dtype=torch.float32).reshape(1, 4, 4)
    normals = torch.randn(3, 4, 4)
    out = scale_crop({"image": image, "semseg": semseg, "depth": depth, "normals": normals}, 2.0, 1, 2)
    assert out["image"].shape == (3, 4, 4) and out["semseg"].dtype == torch.int64

    def up(t):
        return t.repeat_interleave(2, -2).repeat_interleave(2, -1)

    assert torch.equal(out["semseg"], up(semseg[1:3, 2:4]))
    assert torch.equal(out["depth"], up(depth[:, 1:3, 2:4]) / 2)
    assert torch.equal(out["normals"], up(normals[:, 1:3, 2:4]))


def test_random_scale_crop_keeps_shapes_and_consistency(nyu_root):
    root, _ = nyu_root
    ds = NYUv2(root, size=SMALL, augment=True, scales=(1.5,))
    torch.manual_seed(0)
    sample = ds[0]
    assert sample["image"].shape == (3, *SMALL) and sample["semseg"].shape == SMALL
    assert torch.equal(sample["valid"], sample["depth"] > 0)


def test_augmented_view_without_flip(nyu_root):
    root, _ = nyu_root
    plain = NYUv2(root, size=SMALL)
    view = plain.augmented(scales=(1.0,), flip_prob=0.0)
    assert view.augment and not plain.augment and view.indices is plain.indices  # no second scan
    for seed in range(8):  # scale 1 and no flip: the samples as stored
        torch.manual_seed(seed)
        sample, reference = view[1], plain[1]
        assert all(torch.equal(sample[k], reference[k]) for k in reference)
    always = plain.augmented(scales=(1.0,), flip_prob=1.0)
    assert torch.equal(always[1]["image"], plain[1]["image"].flip(-1))


# ---- errors ---------------------------------------------------------------------------------------

def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        NYUv2(missing)


def test_missing_split_folder(nyu_root):
    root, _ = nyu_root
    shutil.rmtree(root / "val")
    with pytest.raises(FileNotFoundError, match=r"split folder .*val"):
        NYUv2(root, "val", size=SMALL)


def test_missing_task_folder(nyu_root):
    root, _ = nyu_root
    shutil.rmtree(root / "train" / "normal")
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "train" / "normal"))):
        NYUv2(root, size=SMALL)
    assert len(NYUv2(root, size=SMALL, tasks=("semseg", "depth"))) == 3  # not needed, not required


def test_missing_file(nyu_root):
    root, _ = nyu_root
    (root / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "train" / "depth" / "1.npy"))):
        NYUv2(root, size=SMALL)


def test_file_removed_after_scan(nyu_root):
    root, _ = nyu_root
    ds = NYUv2(root, size=SMALL)
    (root / "train" / "label" / "2.npy").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "train" / "label" / "2.npy"))):
        ds[2]


def test_empty_image_folder(tmp_path):
    (tmp_path / "train" / "image").mkdir(parents=True)
    for folder in ("label", "depth", "normal"):
        (tmp_path / "train" / folder).mkdir()
    with pytest.raises(FileNotFoundError, match="no <index>.npy files"):
        NYUv2(tmp_path)


@pytest.mark.parametrize("folder, array, match", [
    ("image", np.zeros((8, 12, 4), np.float32), r"expected shape \(8, 12, 3\) for 'image', got \(8, 12, 4\)"),
    ("depth", np.ones((8, 12), np.float32), r"expected shape \(8, 12, 1\) for 'depth'"),
    ("normal", np.zeros((12, 8, 3), np.float32), r"expected shape \(8, 12, 3\) for 'normal'"),
    ("image", np.zeros((8, 12, 3), np.uint8), "expected a floating dtype for 'image', got uint8"),
    ("label", np.full((8, 12), 13, np.int64), r"expected labels in \[0, 12\]"),
    ("label", np.full((8, 12), 0.5, np.float32), "integral"),
])
def test_malformed_arrays(nyu_root, folder, array, match):
    root, _ = nyu_root
    np.save(root / "train" / folder / "0.npy", array)
    ds = NYUv2(root, size=SMALL)
    with pytest.raises(ValueError, match=match):
        ds[0]
    ds[1]  # the other samples still load


def test_unreadable_file(nyu_root):
    root, _ = nyu_root
    (root / "train" / "image" / "0.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="not a readable .npy array"):
        NYUv2(root, size=SMALL)[0]


def test_wrong_default_size_is_reported(nyu_root):
    root, _ = nyu_root
    with pytest.raises(ValueError, match=r"expected shape \(288, 384, 3\)"):
        NYUv2(root)[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "test"}, "split"),
    ({"tasks": ("semseg", "flow")}, "tasks"),
    ({"scales": (0.5, 1.0)}, "scales"),
    ({"scales": "1.5"}, "scales"),
    ({"flip_prob": 1.5}, r"flip_prob: expected a probability in \[0, 1\], got 1.5"),
])
def test_bad_arguments(nyu_root, kwargs, match):
    root, _ = nyu_root
    with pytest.raises(ValueError, match=match):
        NYUv2(root, size=SMALL, **kwargs)
