"""ETR-NLP modules: routing semantics, frozen primitives, the effective-kernel fast path against the general
path, conversion of a backbone, the complete network, bad input."""
import pytest
import torch
from harness import assert_close
from rpg_cases import make_case

from mtl_ops.models import ETRNLPNet
from mtl_ops.models.backbones import ResNetBackbone
from mtl_ops.nn import ETRNLPConv, RouteBatchNorm2d, convert_to_etr_nlp
from mtl_ops.ops import routed_primitive_gather, routed_primitive_gather_linear

T, B = 3, 2


def _block(**kw):
    torch.manual_seed(0)
    return ETRNLPConv(8, 10, T, **kw)


def test_shared_channels_identical_across_tasks_for_the_same_input():
    block = _block(primitives=("dw_conv", "max_pool", "noise"))
    x = torch.randn(B, 8, 9, 7).repeat(T, 1, 1, 1)
    y = block.routed(x).reshape(T, B, 10, 9, 7)
    c_sh = block.shared_channels
    assert c_sh == 9
    for t in range(1, T):
        assert torch.equal(y[t, :, :c_sh], y[0, :, :c_sh])
    assert not torch.allclose(y[1, :, c_sh:], y[0, :, c_sh:])  # each task's own branch differs


def test_task_channels_depend_only_on_their_own_branch():
    block = _block()
    x = torch.randn(T * B, 8, 6, 5)
    before = block.routed(x).detach()
    with torch.no_grad():
        block.w_task[1].add_(1.0)
    after = block.routed(x).detach().reshape(T, B, 10, 6, 5)
    before = before.reshape(T, B, 10, 6, 5)
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert torch.equal(after[1, :, :9], before[1, :, :9])
    assert not torch.allclose(after[1, :, 9:], before[1, :, 9:])


def test_task_loss_reaches_only_shared_and_own_parameters():
    block = _block()
    x = torch.randn(T * B, 8, 6, 5)
    loss = block(x).reshape(T, B, 10, 6, 5)[0].square().sum()  # task 0's loss
    loss.backward()
    assert block.w_shared.grad.abs().sum() > 0 and block.b_shared.grad.abs().sum() > 0
    assert block.w_task.grad[0].abs().sum() > 0
    assert torch.equal(block.w_task.grad[1:], torch.zeros_like(block.w_task.grad[1:]))
    assert torch.equal(block.b_task.grad[1:], torch.zeros_like(block.b_task.grad[1:]))
    assert block.bn.bns[0].weight.grad.abs().sum() > 0
    assert block.bn.bns[1].weight.grad is None or not block.bn.bns[1].weight.grad.any()
    assert all(not f.requires_grad and f.grad is None for f in block.frozen)


def test_primitives_are_frozen_buffers_in_state_dict_and_unchanged_by_training():
    block = _block(primitives=("dw_conv", "dense_conv", "noise", "max_pool"))
    names = {n for n, _ in block.named_parameters()}
    assert names.isdisjoint({f"primitive{p}" for p in range(4)})
    state = block.state_dict()
    assert {"primitive0", "primitive1", "primitive2", "primitive3"} <= set(state)
    saved = [f.clone() for f in block.frozen]
    opt = torch.optim.SGD(block.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    w0 = block.w_shared.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        block(torch.randn(T * B, 8, 6, 5)).square().mean().backward()
        opt.step()
    assert not torch.equal(block.w_shared, w0)
    for f, s in zip(block.frozen, saved):
        assert torch.equal(f, s)
    assert all(id(p) not in {id(f) for f in block.frozen} for g in opt.param_groups for p in g["params"])


def test_primitives_are_seeded():
    a, b, c = ETRNLPConv(4, 4, 2, seed=1), ETRNLPConv(4, 4, 2, seed=1), ETRNLPConv(4, 4, 2, seed=2)
    assert torch.equal(a.primitive0, b.primitive0) and not torch.equal(a.primitive0, c.primitive0)


def test_sharing_ratio_one_shares_every_channel():
    # no task-specific channel: the task weights are empty and the routes differ only in their BatchNorms
    block = ETRNLPConv(8, 10, T, sharing_ratio=1.0)
    assert (block.shared_channels, block.task_channels) == (10, 0) and block.w_task.numel() == 0
    x = torch.randn(B, 8, 9, 7).repeat(T, 1, 1, 1).requires_grad_()
    y = block.routed(x).reshape(T, B, 10, 9, 7)
    assert all(torch.equal(y[t], y[0]) for t in range(1, T))
    block(x).square().mean().backward()
    assert block.w_shared.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    net = ETRNLPNet({"a": 3, "b": 1}, "resnet10", width=8, sharing_ratio=1.0)
    assert net(torch.randn(2, 3, 32, 40))["a"].shape == (2, 3, 32, 40)


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5])
def test_bad_sharing_ratio(ratio):
    with pytest.raises(ValueError, match=r"sharing_ratio must be in \(0, 1\], got"):
        ETRNLPConv(8, 10, 2, sharing_ratio=ratio)


def test_indivisible_groups_say_what_would_work():
    with pytest.raises(ValueError, match=r"groups=4 must divide in_channels=8 and the 9 shared channels .* "
                                         r"groups in \[1\] would work"):
        ETRNLPConv(8, 10, 2, groups=4)
    with pytest.raises(ValueError, match=r"groups in \[1, 2, 4\] would work"):
        ETRNLPConv(8, 4, 2, sharing_ratio=1.0, groups=3)


def test_default_groups_is_gcd():
    assert ETRNLPConv(64, 64, 3).groups == 1  # C_sh = 57
    assert ETRNLPConv(16, 20, 3, sharing_ratio=0.8).groups == 16


# ---- the effective-kernel fast path ---------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("prims, groups", [("linear", 2), ("linear", 1), ("dense_conv_dilated", 4), ("shift", 2),
                                           ("noise", 1), ("avg_pool", 2)])
def test_effective_kernel_matches_general_path(prims, groups, stride):
    check_effective_kernel(*make_case(prims=prims, C=4, C_sh=4, H=9, W=8, groups=groups, stride=stride,
                                      dtype=torch.float64))


# found by the property tests: no shared channels made conv2d refuse the effective kernel (0 output channels)
@pytest.mark.parametrize("B, C_sp", [(1, 2), (1, 0), (0, 0)], ids=["task_channels_only", "no_channels", "empty"])
def test_effective_kernel_without_shared_channels(B, C_sp):
    check_effective_kernel(*make_case(prims="linear", B=B, C=2, C_sh=0, C_sp=C_sp, H=3, W=4, groups=1,
                                      dtype=torch.float64))


def check_effective_kernel(args, kwargs):
    diff = (0, 4, 5, 6, 7)
    results = []
    for fn in (lambda *a, **k: routed_primitive_gather(*a, backend="reference", **k), routed_primitive_gather_linear):
        leaves = list(args)
        for i in diff:
            leaves[i] = args[i].detach().requires_grad_()
        y = fn(*leaves, **kwargs)
        grads = torch.autograd.grad(y, [leaves[i] for i in diff], torch.ones_like(y) + y.detach(), allow_unused=True,
                                    materialize_grads=True)
        results.append((y, grads))
    (y0, g0), (y1, g1) = results
    assert_close(y1, y0, torch.float64, "reduction")
    for a, b in zip(g1, g0):
        assert_close(a, b, torch.float64, "reduction")


def test_effective_kernel_rejects_max_pool():
    args, kwargs = make_case(prims="default5")
    with pytest.raises(ValueError, match=r"primitive 4 is max_pool"):
        routed_primitive_gather_linear(*args, **kwargs)


# ---- conversion and the complete network ----------------------------------------------------------------

def test_convert_replaces_3x3_convs_except_the_stem():
    net = ResNetBackbone(10, width=8)
    replaced = convert_to_etr_nlp(net, 2)
    assert len(replaced) == 8 and not any(n.startswith("stem") for n in replaced)
    assert isinstance(net.stages[1][0].conv1, ETRNLPConv) and net.stages[1][0].conv1.stride == 2
    assert isinstance(net.stages[0][0].bn1, torch.nn.Identity)
    kept = ResNetBackbone(10, width=8)
    assert len(convert_to_etr_nlp(kept, 2, exclude=("stem", "stages.3"))) == 6


def test_route_batchnorm_is_one_batchnorm_per_route_pass():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5), plain.bias.uniform_(-1, 1)
    routed = RouteBatchNorm2d.from_batchnorm(plain, 3)
    assert set(routed.state_dict()) == set(plain.state_dict())
    x = torch.randn(3 * 4, 5, 6, 7) * torch.arange(1.0, 4.0).repeat_interleave(4)[:, None, None, None]
    y = routed(x)
    expected = torch.cat([plain(c) for c in x.chunk(3)])  # three passes, one route each
    assert_close(y, expected, torch.float32, "reduction")
    assert_close(routed.running_mean, plain.running_mean, torch.float32, "reduction")
    assert_close(routed.running_var, plain.running_var, torch.float32, "reduction")
    routed.eval(), plain.eval()
    assert torch.equal(routed(x), plain(x))
    with pytest.raises(ValueError, match=r"the batch \(10 rows\) must split into num_routes = 3"):
        routed.train()(x[:10])
    with pytest.raises(ValueError, match=r"num_routes must be a positive int, got 0"):
        RouteBatchNorm2d(5, 0)


def test_a_task_loss_reaches_no_other_task_private_weights():
    # explicit routing: task a's loss trains the shared weights and a's own, never b's; the BatchNorms that the
    # routes share (the shortcuts', the decoder's) must not mix the routes' batch statistics
    torch.manual_seed(0)
    net = ETRNLPNet({"a": 3, "b": 1}, "resnet10", width=8).train()
    net(torch.randn(4, 3, 32, 40))["a"].square().mean().backward()
    blocks = [m for m in net.modules() if isinstance(m, ETRNLPConv)]
    assert all(m.w_task.grad[0].abs().sum() > 0 for m in blocks)
    assert all(not m.w_task.grad[1].any() and not m.b_task.grad[1].any() for m in blocks)
    assert all(m.bn.bns[1].weight.grad is None or not m.bn.bns[1].weight.grad.any() for m in blocks)
    routed = [n for n, m in net.named_modules() if isinstance(m, RouteBatchNorm2d)]
    assert routed == ["backbone.stages.1.0.shortcut.1", "backbone.stages.2.0.shortcut.1",
                      "backbone.stages.3.0.shortcut.1", "decoder.smooth.1"]


def test_convert_groups_option():
    # default: each block's gcd(C_in, C_sh), which varies with the widths (16 -> 14 shared: 2; 32 -> 57: 1)
    default = ResNetBackbone(10, width=16)
    convert_to_etr_nlp(default, 2)
    assert [m.groups for m in default.modules() if isinstance(m, ETRNLPConv)] == [2, 2, 4, 4, 1, 1, 1, 1]
    dense = ResNetBackbone(10, width=16)
    convert_to_etr_nlp(dense, 2, groups=1)
    assert {m.groups for m in dense.modules() if isinstance(m, ETRNLPConv)} == {1}
    net = ETRNLPNet({"a": 3, "b": 1}, "resnet10", width=8, groups=1)
    assert net(torch.randn(2, 3, 32, 40))["a"].shape == (2, 3, 32, 40)
    with pytest.raises(ValueError, match=r"groups=3 must divide in_channels=16"):
        convert_to_etr_nlp(ResNetBackbone(10, width=16), 2, groups=3)


@pytest.mark.parametrize("head, shape", [("dense", (2, 3, 32, 40)), ("classification", (2, 3))])
def test_network_forward_and_parameter_accounting(head, shape):
    torch.manual_seed(0)
    tasks = {"a": 3, "b": 1}
    net = ETRNLPNet(tasks, "resnet10", head=head, width=8)
    out = net(torch.randn(2, 3, 32, 40))
    assert set(out) == set(tasks)
    assert out["a"].shape == shape
    assert out["b"].shape == shape[:1] + (1,) + shape[2:]
    out["a"].sum().backward()
    learnable = net.learnable_parameters()
    assert learnable == sum(p.numel() for p in net.parameters())
    assert net.frozen_parameters() > 0
    plain = sum(p.numel() for p in ResNetBackbone(10, width=8).parameters())
    assert net.frozen_parameters() + learnable > plain


def test_network_primitives_follow_the_run_seed_unless_fixed():
    # a seed study must vary the frozen primitives with the run's seed, as it varies the learnable weights
    def primitives(torch_seed, **kw):
        torch.manual_seed(torch_seed)
        net = ETRNLPNet({"a": 3, "b": 1}, "resnet10", width=8, **kw)
        return [b.clone() for m in net.modules() if isinstance(m, ETRNLPConv) for b in m.frozen if b.numel()]

    same, other = primitives(1), primitives(2)
    assert all(torch.equal(a, b) for a, b in zip(primitives(1), same))
    assert not any(torch.equal(a, b) for a, b in zip(same, other))
    fixed = primitives(1, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(primitives(2, seed=5), fixed))


def test_module_linear_fast_path_matches_the_fused_op():
    prims = ("dw_conv", "dilated_dw_conv", "noise", "avg_pool", ("shift", 1, -1))
    general = ETRNLPConv(6, 8, 2, primitives=prims, stride=2, seed=3)
    fast = ETRNLPConv(6, 8, 2, primitives=prims, stride=2, seed=3, linear_fast_path=True)
    fast.load_state_dict(general.state_dict())
    x = torch.randn(4, 6, 11, 9, dtype=torch.float64)
    general.double(), fast.double()
    assert_close(fast.routed(x), general.routed(x).detach(), torch.float64, "reduction")
    with pytest.raises(ValueError, match=r"linear_fast_path needs linear primitives only"):
        ETRNLPConv(6, 8, 2, linear_fast_path=True)  # the default set has a max pool


@pytest.mark.parametrize("decoder, stride", [("fpn", 4), ("none", 32)])
def test_dense_heads_read_the_decoder_map(decoder, stride):
    # the heads' input: the FPN decoder's stride-4 map of each task's route, or the stride-32 deepest map alone
    # (a 2x3 grid at 64x96, the demo's 64x84 gives the same: too coarse for object boundaries)
    tasks = {"a": 3, "b": 1}
    net = ETRNLPNet(tasks, "resnet10", width=8, decoder=decoder)
    seen = {}

    def record(task):
        def hook(module, args):
            seen[task] = tuple(args[0].shape)
        return hook

    for t, head in net.heads.items():
        head.register_forward_pre_hook(record(t))
    out = net(torch.randn(2, 3, 64, 96))
    channels = 64 if decoder == "fpn" else net.backbone.channels[-1]  # head_channels, or the deepest stage's
    assert seen == {t: (2, channels, 64 // stride, 96 // stride) for t in tasks}
    assert out["a"].shape == (2, 3, 64, 96) and out["b"].shape == (2, 1, 64, 96)
    if decoder == "fpn":  # one decoder, its weights shared by the routes; each task's head reads its own route
        assert net.decoder is not None and len(net.decoder.lateral) == 4


def test_bad_decoder():
    with pytest.raises(ValueError, match=r"ETRNLPNet: decoder must be one of \('fpn', 'none'\), got 'aspp'"):
        ETRNLPNet({"a": 3}, "resnet10", width=8, decoder="aspp")


def test_trainer_seed_draws_the_primitives():
    from train_helpers import tiny_config

    from mtl_ops.train import Trainer

    def primitives(seed):
        net = Trainer(tiny_config(method="etr_nlp", tasks=("semseg", "depth"), seed=seed)).net
        return [b for m in net.modules() if isinstance(m, ETRNLPConv) for b in m.frozen if b.numel()]

    first = primitives(0)
    assert all(torch.equal(a, b) for a, b in zip(primitives(0), first))
    assert not any(torch.equal(a, b) for a, b in zip(primitives(1), first))
