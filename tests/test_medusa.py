"""Medusa modules and network: the head equals a plain PyTorch composition of its layers; add_task and the
freezing helper leave every existing task bit-identical and train only the new head."""
import copy

import pytest
import torch
import torch.nn.functional as F

from mtl_ops.models import Medusa
from mtl_ops.nn import MedusaHead, MultiScaleAttentionHead, SharedFeatureAttention

CHANNELS = [4, 8, 8, 16]
OPTIONS = {
    "default": {},
    "channel-mask": dict(sfa_mask="channel"),
    "residual-mask": dict(sfa_residual=True),
    "msa-features": dict(msa_mode="features", msa_width=12),
    "no-refine": dict(refine=False),
}


def make_features(B=2, size=(12, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, c, size[0] >> s, size[1] >> s, generator=g) for s, c in enumerate(CHANNELS)]


def plain_head(head: MedusaHead, features):
    """The same layers composed with plain PyTorch ops (no mtl_ops ops)."""
    masked = []
    for sfa, f in zip(head.sfa, features):
        m = torch.sigmoid(sfa.attention(f))
        masked.append((1 + m) * f if sfa.residual else m * f)
    refined = [block(g) for block, g in zip(head.refine, masked)]
    size = refined[0].shape[-2:]
    up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    values = [up(conv(d)) for conv, d in zip(head.msa.values, refined)]
    weights = torch.softmax(torch.cat([up(conv(d)) for conv, d in zip(head.msa.logits, refined)], 1), 1)
    mixed = sum(weights[:, s:s + 1] * v for s, v in enumerate(values))
    return mixed if head.msa.final is None else head.msa.final(mixed)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("options", list(OPTIONS))
def test_head_equals_plain_composition(options, backend):
    torch.manual_seed(0)
    head = MedusaHead(CHANNELS, 5, backend=backend, **OPTIONS[options]).double()
    features = [f.double().requires_grad_() for f in make_features()]
    for mode in ("eval", "train"):
        getattr(head, mode)()
        out = head(features)
        want = plain_head(head, features)
        assert out.shape == (2, 5, 12, 16)
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(out.square().sum(), features + list(head.parameters()))
    grads_plain = torch.autograd.grad(want.square().sum(), features + list(head.parameters()))
    for a, b in zip(grads, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_msa_return_aux_gives_per_scale_predictions():
    msa = MultiScaleAttentionHead(CHANNELS, 3)
    out, per_scale = msa(make_features(), return_aux=True)
    assert out.shape == (2, 3, 12, 16)
    assert [tuple(p.shape[-2:]) for p in per_scale] == [(12, 16), (6, 8), (3, 4), (1, 2)]


def test_sfa_module_spatial_mask_is_shared_over_channels():
    sfa = SharedFeatureAttention(8)
    f = torch.randn(2, 8, 5, 6)
    ratio = sfa(f) / f
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert bool(((ratio > 0) & (ratio < 1)).all())


def test_bad_options():
    with pytest.raises(ValueError, match=r"mask must be one of \('spatial', 'channel'\), got 'both'"):
        SharedFeatureAttention(8, mask="both")
    with pytest.raises(ValueError, match=r"mode must be one of \('predictions', 'features'\), got 'x'"):
        MultiScaleAttentionHead(CHANNELS, 3, mode="x")
    with pytest.raises(ValueError, match=r"expected 4 feature maps, got 3"):
        MedusaHead(CHANNELS, 3)(make_features()[:3])


def small_model(**options):
    torch.manual_seed(0)
    return Medusa({"semseg": 5, "depth": 1}, backbone="resnet10", width=8, **options)


def images(B=2, seed=1):
    return torch.randn(B, 3, 32, 48, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("options", ["default", "channel-mask"])
def test_network_outputs_and_batched_sfa_equal_head_by_head(options):
    model = small_model(**OPTIONS[options]).eval()
    x = images()
    preds, aux = model(x, return_aux=True)
    assert set(preds) == {"semseg", "depth"}
    assert preds["semseg"].shape == (2, 5, 32, 48) and preds["depth"].shape == (2, 1, 32, 48)
    assert len(aux) == 4 and all(set(a) == {"semseg", "depth"} for a in aux)  # one set per scale
    features = model.backbone(x)
    up = lambda t: F.interpolate(t, size=(32, 48), mode="bilinear", align_corners=False)  # noqa: E731
    for name, head in model.heads.items():
        alone, per_scale = head(features, return_aux=True)
        torch.testing.assert_close(preds[name], up(alone), rtol=1e-6, atol=1e-6)
        assert per_scale[0].shape[-2:] == (8, 12)  # the head predicts each scale at the finest map's size
        for s, value in enumerate(per_scale):
            torch.testing.assert_close(aux[s][name], up(value), rtol=1e-6, atol=1e-6)


def test_network_has_no_aux_predictions_in_feature_mode():
    model = small_model(**OPTIONS["msa-features"]).eval()
    preds, aux = model(images(), return_aux=True)
    assert aux == [] and preds["semseg"].shape == (2, 5, 32, 48)


def test_add_task_leaves_existing_outputs_bit_identical():
    model = small_model()
    x = images()
    for mode in ("eval", "train"):
        getattr(model, mode)()
        before = {k: v.detach().clone() for k, v in model(x).items()}
        grown = copy.deepcopy(model)
        grown.add_task("normals", 3)
        after = grown(x)
        assert set(after) == {"semseg", "depth", "normals"} and after["normals"].shape == (2, 3, 32, 48)
        for name in before:
            assert torch.equal(before[name], after[name]), name
    with pytest.raises(ValueError, match=r"task 'depth' already exists"):
        model.add_task("depth", 1)


def test_freeze_except_trains_only_the_new_head():
    model = small_model()
    x = images()
    model.eval()
    before_out = {k: v.detach().clone() for k, v in model(x).items()}
    model.add_task("normals", 3)
    trainable = model.freeze_except("normals")
    assert {id(p) for p in trainable} == {id(p) for p in model.heads["normals"].parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in trainable}
    model.train()
    assert not model.backbone.training and not model.heads["semseg"].training and model.heads["normals"].training
    frozen_state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("heads.normals.")}
    new_state = {k: v.clone() for k, v in model.heads["normals"].state_dict().items()}
    opt = torch.optim.SGD(trainable, lr=0.1)
    for step in range(2):
        preds = model(images(seed=10 + step))
        loss = sum(p.square().mean() for p in preds.values())  # every task's loss: only the new head may move
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in model.state_dict().items():
        if not k.startswith("heads.normals."):
            assert torch.equal(v, frozen_state[k]), f"{k} changed"  # parameters and BN statistics
    changed = [k for k, v in model.heads["normals"].state_dict().items() if not torch.equal(v, new_state[k])]
    assert any("weight" in k for k in changed)
    model.eval()
    after_out = model(x)
    for name in before_out:
        assert torch.equal(before_out[name], after_out[name]), name
    model.unfreeze()
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert model.backbone.training


def test_freeze_except_unknown_task():
    with pytest.raises(ValueError, match=r"unknown tasks \['edges'\]"):
        small_model().freeze_except("edges")
