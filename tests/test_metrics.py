"""Tests for mtl_ops.metrics: hand-computed values on tiny tensors, accumulation, ignore handling, Δm, errors."""
import math

import pytest
import torch

from mtl_ops.metrics import (
    DEFAULT_KEY_SPEC,
    DEFAULT_SPEC,
    AttributeMetric,
    DepthMetric,
    EdgeMetric,
    NormalsMetric,
    SegmentationMetric,
    average_precision,
    default_spec,
    delta_m,
    delta_m_report,
    make_metric,
    relative_gains,
)

approx = pytest.approx
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --------------------------------------------------------------------------------------------- segmentation
# target / pred (2×3, 3 classes, one ignored pixel):
#   target [[0, 0, 1], [1, 2, 255]]     pred [[0, 1, 1], [2, 2, 0]]
# confusion (rows target, cols pred) = [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
#   IoU0 = 1/(1+1+0) = 1/2, IoU1 = 1/(1+1+1) = 1/3, IoU2 = 1/(1+0+1) = 1/2
#   mIoU = (1/2 + 1/3 + 1/2) / 3 = 4/9, pixel acc = 3/5
SEG_TARGET = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
SEG_PRED = torch.tensor([[[0, 1, 1], [2, 2, 0]]])


def test_segmentation_hand_computed():
    m = SegmentationMetric(num_classes=3)
    m.update(SEG_PRED, SEG_TARGET)
    assert m.confusion_matrix.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    out = m.compute()
    assert out["mIoU"] == approx(400 / 9)
    assert out["pixel_acc"] == approx(60.0)
    assert m.iou_per_class().tolist() == approx([50.0, 100 / 3, 50.0])


def test_segmentation_logits_match_labels_and_low_precision():
    logits = torch.nn.functional.one_hot(SEG_PRED, 3).permute(0, 3, 1, 2).float() * 5 - 1
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        m = SegmentationMetric(3)
        m.update(logits.to(dtype), SEG_TARGET.unsqueeze(1))  # (B, 1, H, W) target accepted
        assert m.compute()["mIoU"] == approx(400 / 9)


def test_segmentation_absent_class_excluded_present_class_counted():
    m = SegmentationMetric(num_classes=4)  # class 3 absent from both: left out of the mean
    m.update(SEG_PRED, SEG_TARGET)
    assert m.compute()["mIoU"] == approx(400 / 9)
    assert math.isnan(m.iou_per_class()[3])
    # class 3 predicted once (where target is 0): IoU3 = 0 enters; IoU0 = 1/(1+2) now
    m = SegmentationMetric(num_classes=4)
    m.update(torch.tensor([[[3, 1, 1], [2, 2, 0]]]), SEG_TARGET)
    # confusion rows: t0 -> p3, p1; t1 -> p1, p2; t2 -> p2 ; IoU0 = 0/2, IoU1 = 1/3, IoU2 = 1/2, IoU3 = 0/1
    assert m.compute()["mIoU"] == approx(100 * (0 + 1 / 3 + 1 / 2 + 0) / 4)
    assert m.compute()["pixel_acc"] == approx(40.0)


def test_segmentation_ignore_index_configurable():
    target = SEG_TARGET.clone()
    target[target == 255] = -1
    m = SegmentationMetric(3, ignore_index=-1)
    m.update(SEG_PRED, target)
    assert m.compute()["mIoU"] == approx(400 / 9)
    # whatever is predicted on ignored pixels does not matter
    pred = SEG_PRED.clone()
    pred[0, 1, 2] = 2
    m2 = SegmentationMetric(3, ignore_index=-1)
    m2.update(pred, target)
    assert m2.compute() == m.compute()


def test_segmentation_accumulation_equals_one_update():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 7, 9), generator=g)
    target[torch.rand(6, 7, 9, generator=g) < 0.1] = 255
    logits = torch.randn(6, 5, 7, 9, generator=g)
    whole = SegmentationMetric(5)
    whole.update(logits, target)
    parts = SegmentationMetric(5)
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        parts.update(logits[sl], target[sl])
    assert torch.equal(parts.confusion_matrix, whole.confusion_matrix)
    assert parts.compute() == approx(whole.compute())
    parts.reset()
    with pytest.raises(RuntimeError, match="no valid"):
        parts.compute()


def test_segmentation_bad_input():
    m = SegmentationMetric(3)
    with pytest.raises(ValueError, match=r"logits of shape \(B, K=3, H, W\)"):
        m.update(torch.randn(1, 4, 2, 3), SEG_TARGET)
    with pytest.raises(ValueError, match="target must be an integer"):
        m.update(SEG_PRED, SEG_TARGET.float())
    with pytest.raises(ValueError, match=r"target contains label 7 outside \[0, 3\)"):
        m.update(SEG_PRED, torch.tensor([[[0, 7, 1], [1, 2, 255]]]))
    with pytest.raises(ValueError, match=r"pred contains label 5"):
        m.update(torch.tensor([[[0, 5, 1], [1, 2, 0]]]), SEG_TARGET)
    with pytest.raises(ValueError, match="batch and spatial sizes must match"):
        m.update(SEG_PRED[:, :, :2], SEG_TARGET)
    with pytest.raises(ValueError, match=r"target must have shape \(B, H, W\)"):
        m.update(SEG_PRED, SEG_TARGET[0])
    with pytest.raises(ValueError, match="collides"):
        SegmentationMetric(3, ignore_index=1)
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetric(0)


# --------------------------------------------------------------------------------------------- depth
# pred [[1, 2], [3, 4]], target [[2, 2], [0, 5]] → valid (target > 0): errors 1, 0, 1 with g = 2, 2, 5
#   abs = 2/3, rel = (1/2 + 0 + 1/5)/3 = 0.7/3, rmse = sqrt(2/3)
DEPTH_PRED = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
DEPTH_TARGET = torch.tensor([[[2.0, 2.0], [0.0, 5.0]]])


def test_depth_hand_computed_and_dtypes():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        m = DepthMetric()
        m.update(DEPTH_PRED.to(dtype).unsqueeze(1), DEPTH_TARGET.to(dtype).unsqueeze(1))
        out = m.compute()
        assert out["abs_err"] == approx(2 / 3)
        assert out["rel_err"] == approx(0.7 / 3)
        assert out["rmse"] == approx(math.sqrt(2 / 3))


def test_depth_explicit_mask():
    m = DepthMetric()
    mask = torch.tensor([[[False, True], [False, True]]])
    m.update(DEPTH_PRED, DEPTH_TARGET, mask=mask)  # errors 0 (g=2), 1 (g=5)
    assert m.compute() == approx({"abs_err": 0.5, "rel_err": 0.1, "rmse": math.sqrt(0.5)})
    with pytest.raises(ValueError, match="<= 0 .* inside mask"):
        m.update(DEPTH_PRED, DEPTH_TARGET, mask=torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool"):
        m.update(DEPTH_PRED, DEPTH_TARGET, mask=torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="mask has spatial shape"):
        m.update(DEPTH_PRED, DEPTH_TARGET, mask=torch.ones(1, 3, 2, dtype=torch.bool))


def test_depth_pixel_pooling_not_per_image():
    # image A: 1 valid pixel with error 3; image B: 3 valid pixels with error 1 each
    pred_a, tgt_a = torch.tensor([[[4.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    pred_b, tgt_b = torch.tensor([[[2.0, 2.0], [2.0, 9.0]]]), torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    m = DepthMetric()
    m.update(pred_a, tgt_a)
    m.update(pred_b, tgt_b)
    out = m.compute()
    assert out["abs_err"] == approx(6 / 4)  # pooled; per-image averaging would give (3 + 1) / 2 = 2
    assert out["rel_err"] == approx(6 / 4)
    assert out["rmse"] == approx(math.sqrt(12 / 4))
    one = DepthMetric()
    one.update(torch.cat([pred_a, pred_b]), torch.cat([tgt_a, tgt_b]))
    assert one.compute() == approx(out)


def test_depth_bad_input():
    m = DepthMetric()
    with pytest.raises(ValueError, match=r"pred has shape \(1, 2, 3\) but target has shape \(1, 2, 2\)"):
        m.update(torch.zeros(1, 2, 3), DEPTH_TARGET)
    with pytest.raises(ValueError, match=r"pred must have shape \(B, H, W\) or \(B, 1, H, W\)"):
        m.update(torch.zeros(1, 2, 2, 2), DEPTH_TARGET)
    with pytest.raises(ValueError, match="target must be a floating-point"):
        m.update(DEPTH_PRED, DEPTH_TARGET.long())
    with pytest.raises(ValueError, match="pred must be a torch.Tensor"):
        m.update([1.0], DEPTH_TARGET)
    with pytest.raises(RuntimeError, match="no valid pixels"):
        m.compute()


# --------------------------------------------------------------------------------------------- normals
def _normals_at(angles_deg, pred_scale=1.0, target_scale=1.0):
    """(1, 3, 1, N): target along z, prediction rotated by each angle in the x-z plane."""
    a = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    pred = torch.stack([torch.sin(a), torch.zeros_like(a), torch.cos(a)]) * pred_scale
    target = torch.stack([torch.zeros_like(a), torch.zeros_like(a), torch.ones_like(a)]) * target_scale
    return pred.view(1, 3, 1, -1).float(), target.view(1, 3, 1, -1).float()


def test_normals_hand_computed():
    # angles 5, 15, 25, 60, 100 and one invalid (zero-norm target) pixel
    pred, target = _normals_at([5.0, 15.0, 25.0, 60.0, 100.0, 40.0], pred_scale=2.5, target_scale=3.0)
    target[..., 5] = 0.0
    for keep in (False, True):
        m = NormalsMetric(keep_angles=keep)
        m.update(pred, target)
        out = m.compute()
        assert out["mean"] == approx(41.0, abs=1e-4)  # (5 + 15 + 25 + 60 + 100) / 5
        assert out["rmse"] == approx(math.sqrt(2895.0), abs=1e-4)  # (25 + 225 + 625 + 3600 + 10000) / 5
        assert out["11.25"] == approx(20.0)
        assert out["22.5"] == approx(40.0)
        assert out["30"] == approx(60.0)
        assert out["median"] == approx(25.0, abs=1e-4 if keep else 6e-4)  # histogram: within bin_width / 2


def test_normals_even_count_median_mask_and_zero_prediction():
    pred, target = _normals_at([5.0, 15.0, 25.0, 35.0, 60.0, 100.0, 7.0])
    mask = torch.tensor([[[True] * 6 + [False]]])
    exact = NormalsMetric(keep_angles=True)
    hist = NormalsMetric()
    for m in (exact, hist):
        m.update(pred, target, mask=mask)
    assert exact.compute()["median"] == approx(30.0, abs=1e-4)  # (25 + 35) / 2
    assert hist.compute()["median"] == approx(30.0, abs=6e-4)
    # a zero prediction vector is 90° from any target
    m = NormalsMetric()
    m.update(torch.zeros(1, 3, 1, 1), torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1))
    assert m.compute()["mean"] == approx(90.0)


def test_normals_accumulation_equals_one_update_and_low_precision():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(5, 3, 4, 6, generator=g)
    target = torch.nn.functional.normalize(torch.randn(5, 3, 4, 6, generator=g), dim=1)
    target[:, :, 0, 0] = 0.0
    whole, parts = NormalsMetric(keep_angles=True), NormalsMetric(keep_angles=True)
    whole.update(pred, target)
    for i in range(5):
        parts.update(pred[i : i + 1], target[i : i + 1])
    assert parts.compute() == approx(whole.compute())
    hist = NormalsMetric()
    hist.update(pred, target)
    assert hist.compute()["median"] == approx(whole.compute()["median"], abs=5e-4)
    half = NormalsMetric()
    half.update(pred.half(), target.half())
    assert half.compute()["mean"] == approx(whole.compute()["mean"], abs=0.1)


def test_normals_bad_input():
    m = NormalsMetric()
    with pytest.raises(ValueError, match=r"pred must have shape \(B, 3, H, W\)"):
        m.update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="pred has shape .* but target has shape"):
        m.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3))
    with pytest.raises(ValueError, match="thresholds"):
        NormalsMetric(thresholds=(0.0,))
    with pytest.raises(RuntimeError, match="no valid pixels"):
        m.compute()


# --------------------------------------------------------------------------------------------- attributes
def test_attributes_accuracy_hand_computed():
    # positive iff logit ≥ 0: predictions [[1, 0, 1], [0, 1, 0]] vs targets [[1, 1, 0], [0, 1, 0]]
    logits = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 0.5, -0.2]])
    target = torch.tensor([[1, 1, 0], [0, 1, 0]])
    m = AttributeMetric()
    m.update(logits[:1], target[:1])
    m.update(logits[1:], target[1:])
    assert m.compute() == approx({"accuracy": 400 / 6})
    assert m.accuracy_per_attribute().tolist() == approx([100.0, 50.0, 50.0])
    # tiny negative logits stay negative even in half precision
    m = AttributeMetric()
    m.update(torch.tensor([[-1e-4]], dtype=torch.float16), torch.tensor([[0]]))
    assert m.compute()["accuracy"] == approx(100.0)


def test_attributes_average_precision_hand_computed():
    # ranks 1..4 with labels 1, 0, 1, 0: AP = 1/2·1 + 1/2·2/3 = 5/6
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0])) == approx(5 / 6)
    # tie at 0.5 between a negative and a positive forms one step: P = 1/2 at R = 1/2, P = 2/3 at R = 1
    assert average_precision(torch.tensor([0.5, 0.5, 0.2]), torch.tensor([0, 1, 1])) == approx(0.25 + 1 / 3)
    m = AttributeMetric(compute_map=True)
    scores = torch.tensor([[0.9, 1.0, -1.0], [0.8, 2.0, -2.0], [0.7, 3.0, 0.5], [0.6, 4.0, 0.1]])
    labels = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    m.update(scores, labels)
    # attribute 0: 5/6; attribute 1: positives ranked 3rd and 4th → (1/2)(1/3) + (1/2)(2/4) = 5/12;
    # attribute 2: no positives → excluded
    assert m.compute()["mAP"] == approx(100 * (5 / 6 + 5 / 12) / 2)


def test_attributes_bad_input():
    m = AttributeMetric()
    with pytest.raises(ValueError, match=r"pred must have shape \(B, A\)"):
        m.update(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="target must contain only 0 and 1"):
        m.update(torch.zeros(2, 3), torch.full((2, 3), 2))
    with pytest.raises(ValueError, match=r"pred has shape \(2, 3\) but target has shape \(2, 4\)"):
        m.update(torch.zeros(2, 3), torch.zeros(2, 4))
    m.update(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="earlier updates had 3"):
        m.update(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(RuntimeError, match="no samples"):
        AttributeMetric().compute()


# --------------------------------------------------------------------------------------------- factory
def test_make_metric():
    assert isinstance(make_metric("semseg", num_classes=3), SegmentationMetric)
    assert isinstance(make_metric("depth"), DepthMetric)
    assert isinstance(make_metric("normals"), NormalsMetric)
    assert isinstance(make_metric("edges", max_dist=0.0075), EdgeMetric)
    assert isinstance(make_metric("attributes"), AttributeMetric)
    with pytest.raises(ValueError, match="unknown task 'sal'"):
        make_metric("sal")
    with pytest.raises(ValueError, match="needs num_classes"):
        make_metric("semseg")


# --------------------------------------------------------------------------------------------- Δm
BASE = {"semseg": {"mIoU": 40.0, "pixel_acc": 60.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2, "rmse": 1.0}}
# gains: mIoU 44 → +10, pixel_acc 57 → −5,
#        abs_err 0.45 → +10 (lower is better), rel_err 0.25 → −25, rmse 0.9 → +10
MTL = {"semseg": {"mIoU": 44.0, "pixel_acc": 57.0}, "depth": {"abs_err": 0.45, "rel_err": 0.25, "rmse": 0.9}}
SPEC = {"semseg": {"mIoU": True, "pixel_acc": True}, "depth": {"abs_err": False, "rel_err": False, "rmse": False}}


def test_delta_m_conventions_hand_computed():
    gains = relative_gains(MTL, BASE, SPEC)
    assert gains["semseg"] == approx({"mIoU": 10.0, "pixel_acc": -5.0})
    assert gains["depth"] == approx({"abs_err": 10.0, "rel_err": -25.0, "rmse": 10.0})
    # per task: semseg (10 − 5)/2 = 2.5, depth (10 − 25 + 10)/3 = −5/3 → (2.5 − 5/3)/2 = 5/12
    assert delta_m(MTL, BASE, SPEC) == approx(5 / 12)
    assert delta_m(MTL, BASE, SPEC, convention="per_task") == approx(5 / 12)
    # flat: (10 − 5 + 10 − 25 + 10)/5 = 0
    assert delta_m(MTL, BASE, SPEC, convention="flat") == approx(0.0, abs=1e-12)
    # key: mIoU and rmse → (10 + 10)/2 = 10
    key_spec = {"semseg": {"mIoU": True}, "depth": {"rmse": False}}
    assert delta_m(MTL, BASE, key_spec, convention="key") == approx(10.0)
    rep = delta_m_report(MTL, BASE, SPEC, convention="flat")
    assert rep["convention"] == "flat" and rep["num_metrics"] == 5
    assert rep["per_task"] == approx({"semseg": 2.5, "depth": -5 / 3})
    assert rep["spec"] == SPEC


def test_delta_m_sign_for_lower_is_better():
    spec = {"depth": {"abs_err": False}}
    base = {"depth": {"abs_err": 0.5}}
    assert delta_m({"depth": {"abs_err": 0.45}}, base, spec) == approx(10.0)  # lower error: a gain
    assert delta_m({"depth": {"abs_err": 0.55}}, base, spec) == approx(-10.0)
    assert delta_m({"depth": {"abs_err": torch.tensor(0.55)}}, base, {"depth": {"abs_err": True}}) == approx(10.0)


def test_delta_m_defaults():
    assert default_spec(["semseg", "depth", "normals"]) == {t: DEFAULT_SPEC[t] for t in ("semseg", "depth", "normals")}
    assert sum(len(v) for v in default_spec(["semseg", "depth", "normals"]).values()) == 9
    assert default_spec("depth", key=True) == {"depth": {"rmse": False}}
    assert DEFAULT_KEY_SPEC["normals"] == {"mean": False}
    assert DEFAULT_SPEC["edges"] == {"F": True} and DEFAULT_SPEC["attributes"] == {"accuracy": True}
    with pytest.raises(ValueError, match="no default spec for task 'sal'"):
        default_spec(["sal"])


def test_delta_m_errors():
    with pytest.raises(ValueError, match=r"results has no task 'depth'"):
        delta_m({"semseg": MTL["semseg"]}, BASE, SPEC)
    with pytest.raises(ValueError, match=r"baseline\['depth'\] has no metric 'rmse'"):
        delta_m(MTL, {"semseg": BASE["semseg"], "depth": {"abs_err": 0.5, "rel_err": 0.2}}, SPEC)
    with pytest.raises(ValueError, match=r"results has task\(s\) \['normals'\] that spec does not list"):
        delta_m({**MTL, "normals": {"mean": 20.0}}, BASE, SPEC)
    with pytest.raises(ValueError, match=r"baseline\['depth'\]\['rmse'\] is 0"):
        delta_m(MTL, {**BASE, "depth": {**BASE["depth"], "rmse": 0.0}}, SPEC)
    with pytest.raises(ValueError, match=r"results\['semseg'\]\['mIoU'\] is nan"):
        delta_m({**MTL, "semseg": {"mIoU": float("nan"), "pixel_acc": 1.0}}, BASE, SPEC)
    with pytest.raises(ValueError, match=r"convention='key' needs exactly one metric per task, but spec\['semseg'\]"):
        delta_m(MTL, BASE, SPEC, convention="key")
    with pytest.raises(ValueError, match="convention must be one of"):
        delta_m(MTL, BASE, SPEC, convention="mean")
    with pytest.raises(ValueError, match=r"spec\['depth'\]\['rmse'\] must be a bool"):
        delta_m(MTL, BASE, {"depth": {"rmse": 0}})
    with pytest.raises(ValueError, match="spec must be a non-empty mapping"):
        delta_m(MTL, BASE, {})


# --------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@needs_cuda
def test_metrics_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(3)
    seg = (torch.randn(3, 5, 6, 7, generator=g), torch.randint(0, 5, (3, 6, 7), generator=g))
    depth = (torch.rand(3, 1, 6, 7, generator=g) + 0.1, torch.rand(3, 1, 6, 7, generator=g))
    normals = (torch.randn(3, 3, 6, 7, generator=g), torch.randn(3, 3, 6, 7, generator=g))
    edges = (torch.randn(3, 1, 6, 7, generator=g), (torch.rand(3, 1, 6, 7, generator=g) < 0.3).long())
    attrs = (torch.randn(8, 4, generator=g), (torch.rand(8, 4, generator=g) < 0.5).long())
    cases = [
        (lambda: SegmentationMetric(5), seg),
        (DepthMetric, depth),
        (NormalsMetric, normals),
        (EdgeMetric, edges),
        (lambda: AttributeMetric(compute_map=True), attrs),
    ]
    for make, args in cases:
        cpu, gpu = make(), make()
        cpu.update(*args)
        gpu.update(*(a.cuda() for a in args))
        gpu.update(*(a.cuda().half() if a.is_floating_point() else a.cuda() for a in args))
        cpu.update(*(a.half() if a.is_floating_point() else a for a in args))
        assert gpu.compute() == approx(cpu.compute(), rel=1e-6, abs=1e-3)
