"""mtl_ops.nn.CTAL and mtl_ops.models.CTALNet: shapes, backends agree, errors."""
import pytest
import torch
from harness import backend_params

from mtl_ops.models import CTALNet
from mtl_ops.nn import CTAL

TASKS = ["semseg", "depth", "normals"]


def _features(B=2, C_in=6, H=5, W=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {t: torch.randn(B, C_in, H, W, generator=g) for t in TASKS}


@pytest.mark.parametrize("per_task", [False, True], ids=["shared", "per_task"])
def test_ctal_shapes_and_parameters(per_task):
    m = CTAL(TASKS, 6, (5, 7), channels=8, per_task_fusion=per_task)
    out = m(_features())
    assert list(out) == TASKS and all(o.shape == (2, 8, 10, 14) for o in out.values())
    N = 35
    assert m.fusion_weight.shape == ((3, N, 3, 3, 3) if per_task else (N, 3, 3, 3))
    assert m.fusion_bias.shape == ((3, N) if per_task else (N,))
    assert m.gamma == 0.05 and m.kernel_size == 3 and CTAL(TASKS, 6, (5, 7)).channels == 128


@pytest.mark.parametrize("backend", backend_params("ctal_affinity", "cpu", ("cpp",)))
@pytest.mark.parametrize("per_task", [False, True], ids=["shared", "per_task"])
def test_ctal_fused_backend_matches_reference(backend, per_task):
    torch.manual_seed(0)
    m = CTAL(TASKS, 6, (5, 7), channels=8, kernel_size=5, gamma=0.3, per_task_fusion=per_task).double()
    feats = {t: f.double() for t, f in _features().items()}
    results = []
    for b in ("reference", backend):
        m.backend = b
        m.zero_grad()
        out = m(feats)
        sum((o * (i + 1)).sum() for i, o in enumerate(out.values())).backward()
        results.append(([o.detach() for o in out.values()], [p.grad.clone() for p in m.parameters()]))
    for got, want in zip(results[1][0] + results[1][1], results[0][0] + results[0][1]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_ctal_feature_size_mismatch_says_weights_are_tied_to_n():
    m = CTAL(TASKS, 6, (5, 7), channels=8)
    with pytest.raises(ValueError, match=r"built for \(5, 7\): the fusion weights are tied to N = H\*W = 35"):
        m(_features(H=6, W=7))


@pytest.mark.parametrize("make, match", [
    (lambda: CTAL(TASKS, 6, (5, 7), kernel_size=4), r"kernel_size must be odd, got 4"),
    (lambda: CTAL(["a", "a"], 6, (5, 7)), r"tasks must be distinct"),
    (lambda: CTAL(TASKS, {"semseg": 6}, (5, 7)), r"in_channels must have one entry per task"),
])
def test_ctal_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_ctal_wrong_task_keys():
    m = CTAL(TASKS, 6, (5, 7), channels=8)
    feats = _features()
    del feats["depth"]
    with pytest.raises(ValueError, match=r"expected features for tasks \['semseg', 'depth', 'normals'\]"):
        m(feats)


def _net(**kw):
    return CTALNet({"semseg": 5, "depth": 1}, "resnet10", image_size=(32, 48), width=8, itp_channels=16,
                   ctal_channels=8, **kw)


@pytest.mark.parametrize("per_task", [False, True], ids=["shared", "per_task"])
def test_ctalnet_predictions_and_aux(per_task):
    torch.manual_seed(0)
    net = _net(per_task_fusion=per_task)
    images = torch.randn(2, 3, 32, 48)
    preds = net(images)
    assert {t: p.shape for t, p in preds.items()} == {"semseg": (2, 5, 32, 48), "depth": (2, 1, 32, 48)}
    preds, aux = net(images, return_aux=True)
    assert len(aux) == 1  # the initial task predictions, one auxiliary set
    assert {t: a.shape for t, a in aux[0].items()} == {t: p.shape for t, p in preds.items()}
    loss = sum(p.square().mean() for p in preds.values()) + sum(a.square().mean() for a in aux[0].values())
    loss.backward()
    assert net.ctal.fusion_weight.grad is not None and net.backbone.stem[0].weight.grad.abs().sum() > 0


def test_ctalnet_wrong_image_size():
    with pytest.raises(ValueError, match=r"expected images \(B, C, 32, 48\) \(the CTAL fusion is tied"):
        _net()(torch.randn(1, 3, 64, 48))
