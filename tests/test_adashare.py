"""Tests for AdaShare (mtl_ops.models.AdaShareNet, mtl_ops.nn.adashare*, aspp, task_batchnorm): policy sampling
statistics, schedules,
regularisers against hand-computed values, the batched gated forward against per-task passes, the trie
(hard-policy) forward against the gated forward, what the trie computes, phases, backends, errors."""
import copy
import math

import pytest
import torch
from torch import nn

from harness import backend_params, exact_fp32
from mtl_ops.models import AdaShareNet, set_adashare_phase
from mtl_ops.nn import (AdaSharePolicy, ASPPv2Head, TaskBatchNorm2d, TriePlan, execute_mask, num_executed_blocks,
                        one_hot_gates, policy_table, probability_table, shared_block_executions)

TASKS = {"seg": 3, "depth": 1, "normals": 2}


def tiny_model(tasks=TASKS, **kw) -> AdaShareNet:
    """Width 8, head hidden 8, no dropout, weights re-drawn at O(1) scale (the N(0, 0.01) init makes every
    output ~1e-5, which would make any comparison vacuous) and random BN affine/running statistics."""
    kw = {"width": 8, "head_hidden": 8, "head_dropout": 0.0, "seed": 0, **kw}
    model = AdaShareNet(tasks, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def images(b=2, size=32, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_outputs_close(a: dict, b: dict, rtol=1e-5, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f"task {k}: {m}")


def weighted_sum(outputs: dict, seed=3):
    """A scalar loss with random per-element weights, so every output element matters."""
    g = torch.Generator().manual_seed(seed)
    return sum((y * torch.randn(y.shape, generator=g).to(y.device, y.dtype)).sum() for y in outputs.values())


def grads(params):
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


# Hand-picked policy (T = 3, L = 8) whose trie is worked out by hand in test_trie_computes_each_prefix_once.
POLICY = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1],
                       [1, 1, 1, 1, 1, 1, 0, 1],
                       [1, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)


# ============================================================================================== policy
def test_policy_inits():
    p = AdaSharePolicy(2, 8)
    assert p.logits.shape == (2, 8, 2) and torch.all(p.logits == 0.5)
    assert torch.allclose(p.probabilities(), torch.full((2, 8, 2), 0.5))
    p = AdaSharePolicy(2, 8, "all_chosen", init_neg_logits=-7.0)
    assert torch.all(p.logits[..., 0] == 0) and torch.all(p.logits[..., 1] == -7)
    r1, r2 = AdaSharePolicy(3, 8, "random", seed=5), AdaSharePolicy(3, 8, "random", seed=5)
    assert torch.equal(r1.logits, r2.logits)
    assert 0 < r1.logits.abs().max() < 1e-2  # 1e-3·N(0, 1)
    assert not torch.equal(r1.logits, AdaSharePolicy(3, 8, "random", seed=6).logits)


def test_sampling_uses_only_its_generator():
    state = torch.get_rng_state()
    a, b = AdaSharePolicy(2, 8, seed=11), AdaSharePolicy(2, 8, seed=11)
    torch.manual_seed(123)
    sa = a.sample_soft()
    torch.manual_seed(456)
    sb = b.sample_soft()
    assert torch.equal(sa, sb)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a.sample_soft(), a.sample_hard(), AdaSharePolicy(2, 8, "random", seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(a.sample_hard(generator=g1), b.sample_hard(generator=g2))


def test_soft_samples_are_distributions_and_differentiable():
    p = AdaSharePolicy(3, 8, "random", seed=0)
    v = p.sample_soft()
    assert v.shape == (3, 8, 2) and v.dtype == torch.float32
    assert torch.all(v >= 0) and torch.allclose(v.sum(-1), torch.ones(3, 8))
    v[..., 0].sum().backward()
    assert p.logits.grad is not None and p.logits.grad.abs().sum() > 0


# Sampling statistics. N draws per cell; an empirical frequency has standard deviation sqrt(p(1-p)/N) ≤
# 0.0035 at N = 20000, and the tolerance is 5 of those (a false failure has probability < 1e-6 per cell;
# the generator is seeded, so the test is deterministic anyway).
P_EXEC = torch.tensor([0.05, 0.2, 0.5, 0.7, 0.95])
N_DRAWS = 20000


def _policy_with_exec_probs(n_tasks):
    """n_tasks identical tasks (each one more i.i.d. draw per block), block l executes w.p. P_EXEC[l]."""
    p = AdaSharePolicy(n_tasks, len(P_EXEC), seed=7)
    with torch.no_grad():
        p.logits[..., 0] = torch.log(P_EXEC)
        p.logits[..., 1] = torch.log1p(-P_EXEC)
    return p


def test_hard_sample_frequencies_follow_softmax():
    p = _policy_with_exec_probs(N_DRAWS // 4)
    draws = torch.cat([p.sample_hard() for _ in range(4)])  # (N, L, 2), one-hot
    assert torch.all(draws.sum(-1) == 1) and torch.all((draws == 0) | (draws == 1))
    freq = draws[..., 0].mean(0)
    tol = 5 * torch.sqrt(P_EXEC * (1 - P_EXEC) / N_DRAWS)
    assert torch.all((freq - P_EXEC).abs() <= tol), (freq, P_EXEC)


def test_gumbel_noise_distribution():
    """Gumbel-max: argmax of a soft sample (any τ) is Categorical(softmax α); and τ·(log v0 − log v1) =
    α0 − α1 + (G0 − G1) with G0 − G1 ~ Logistic(0, 1): mean α0 − α1, variance π²/3."""
    p = _policy_with_exec_probs(N_DRAWS // 4)
    tau = 2.0
    soft = torch.cat([p.sample_soft(temperature=tau) for _ in range(4)])
    freq = (soft[..., 0] > soft[..., 1]).float().mean(0)
    assert torch.all((freq - P_EXEC).abs() <= 5 * torch.sqrt(P_EXEC * (1 - P_EXEC) / N_DRAWS))
    logistic = tau * (soft[..., 0].log() - soft[..., 1].log()) - (p.logits[0, :, 0] - p.logits[0, :, 1]).detach()
    var = math.pi ** 2 / 3
    # sd of the mean: sqrt(var / N) = 0.0128; sd of the sample variance: var·sqrt((κ − 1) / N), κ = 4.2.
    assert logistic.mean(0).abs().max() < 5 * math.sqrt(var / N_DRAWS)
    assert (logistic.var(0) - var).abs().max() < 5 * var * math.sqrt(3.2 / N_DRAWS)


def test_temperature_schedule():
    p = AdaSharePolicy(2, 8, init_temperature=5.0, temperature_decay=0.965, seed=1)
    for n in range(1, 11):
        assert p.decay_temperature() == pytest.approx(5.0 * 0.965 ** n)
    assert float(p.state_dict()["temperature"]) == pytest.approx(5.0 * 0.965 ** 10)
    q = AdaSharePolicy(2, 8, seed=1)
    with torch.no_grad():
        p.logits.normal_()
        q.logits.copy_(p.logits)
    # sample_soft uses the current temperature
    torch.testing.assert_close(p.sample_soft(), q.sample_soft(temperature=5.0 * 0.965 ** 10))
    # lower temperature → samples closer to one-hot
    cold = AdaSharePolicy(2, 8, init_temperature=1e-3, seed=2).sample_soft()
    assert torch.all(cold.max(-1).values > 0.99)


def test_curriculum():
    p = AdaSharePolicy(2, 8, curriculum_speed=3, seed=0)
    expected = {0: 1, 1: 1, 2: 1, 3: 2, 5: 2, 6: 3, 20: 7, 21: 8, 22: 8, 1000: 8}
    assert {e: p.num_trainable_blocks(e) for e in expected} == expected
    assert AdaSharePolicy(2, 16, curriculum_speed=1).num_trainable_blocks(4) == 5
    assert p.trainable_mask(3).tolist() == [False] * 6 + [True] * 2
    execute = torch.tensor([1.0, 0.0])
    for gates in (p.sample_soft(3), p.sample_hard(3), p.argmax_policy(3)):
        assert torch.equal(gates[:, :6], execute.expand(2, 6, 2))
    soft = p.sample_soft(3)
    assert torch.all(soft[:, 6:, 0] < 1) and torch.all(soft[:, 6:, 0] > 0)
    # forced blocks are constants: the gradient reaches only the logits of sampled blocks
    soft[..., 0].sum().backward()
    assert torch.all(p.logits.grad[:, :6] == 0) and torch.all(p.logits.grad[:, 6:].abs().sum(-1) > 0)


def test_argmax_policy():
    p = AdaSharePolicy(1, 3, seed=0)
    with torch.no_grad():
        p.logits.copy_(torch.tensor([[[2.0, 1.0], [0.0, 3.0], [0.5, 0.5]]]))
    assert p.argmax_policy()[0, :, 0].tolist() == [1.0, 0.0, 1.0]  # a tie executes


# Hand-computed regularisers. T = 2, L = 2, logits (execute, skip):
#   task 0: block 1 (0, 0)       → p = (1/2, 1/2);  block 2 (ln 3, 0)  → p = (3/4, 1/4)
#   task 1: block 1 (0, ln 3)    → p = (1/4, 3/4);  block 2 (2, 2)     → p = (1/2, 1/2)
LN3 = math.log(3)
HAND_LOGITS = torch.tensor([[[0.0, 0.0], [LN3, 0.0]], [[0.0, LN3], [2.0, 2.0]]])


def _hand_policy(curriculum_speed=1):
    p = AdaSharePolicy(2, 2, curriculum_speed=curriculum_speed)
    with torch.no_grad():
        p.logits.copy_(HAND_LOGITS)
    return p


def test_sparsity_loss_hand_values():
    p = _hand_policy()
    ln = math.log
    # code: Σ_t mean_l −log p_skip = (ln 2 + ln 4)/2 + (ln(4/3) + ln 2)/2
    assert p.sparsity_loss().item() == pytest.approx((ln(2) + ln(4)) / 2 + (ln(4 / 3) + ln(2)) / 2, rel=1e-6)
    # code, curriculum p_epoch = 0 with speed 1: only the last block: −ln(1/4) − ln(1/2)
    assert p.sparsity_loss(0).item() == pytest.approx(ln(4) + ln(2), rel=1e-6)
    # paper: Σ log p_exec = ln(1/2 · 3/4 · 1/4 · 1/2)
    assert p.sparsity_loss(form="paper").item() == pytest.approx(ln(0.5 * 0.75 * 0.25 * 0.5), rel=1e-6)
    assert p.sparsity_loss(0, form="paper").item() == pytest.approx(ln(0.75 * 0.5), rel=1e-6)
    # both push towards skipping: raising a skip logit lowers the loss
    for form in ("code", "paper"):
        p.logits.grad = None
        p.sparsity_loss(form=form).backward()
        assert torch.all(p.logits.grad[..., 1] < 0) and torch.all(p.logits.grad[..., 0] > 0)


def test_sharing_loss_hand_values():
    p = _hand_policy()
    # code: raw execute logits, w_l = l/L: (1/2)·|0 − 0| + (2/2)·|ln 3 − 2|
    assert p.sharing_loss().item() == pytest.approx(2 - LN3, rel=1e-6)
    # paper: execute probabilities, w_l = (L − l)/(L − 1): 1·|1/2 − 1/4| + 0·|3/4 − 1/2|
    assert p.sharing_loss(form="paper").item() == pytest.approx(0.25, rel=1e-6)
    assert AdaSharePolicy(1, 8, "random").sharing_loss().item() == 0.0


def test_losses_match_loops_three_tasks():
    p = AdaSharePolicy(3, 4, "random", seed=9, curriculum_speed=2)
    with torch.no_grad():
        p.logits.normal_(generator=torch.Generator().manual_seed(0))
    a = p.logits.detach().double().tolist()
    soft = [[[math.exp(v) / (math.exp(r[0]) + math.exp(r[1])) for v in r] for r in t] for t in a]
    T, L = 3, 4
    k = min(L, 3 // 2 + 1)  # p_epoch = 3
    window = range(L - k, L)
    code_sp = sum(sum(-math.log(soft[t][l][1]) for l in window) / k for t in range(T))
    paper_sp = sum(math.log(soft[t][l][0]) for t in range(T) for l in window)
    pairs = [(i, j) for i in range(T) for j in range(i + 1, T)]
    code_sh = sum((l + 1) / L * abs(a[i][l][0] - a[j][l][0]) for i, j in pairs for l in range(L))
    paper_sh = sum((L - l - 1) / (L - 1) * abs(soft[i][l][0] - soft[j][l][0]) for i, j in pairs for l in range(L))
    assert p.sparsity_loss(3).item() == pytest.approx(code_sp, rel=1e-5)
    assert p.sparsity_loss(3, form="paper").item() == pytest.approx(paper_sp, rel=1e-5)
    assert p.sharing_loss().item() == pytest.approx(code_sh, rel=1e-5)
    assert p.sharing_loss(form="paper").item() == pytest.approx(paper_sh, rel=1e-5)


def test_policy_helpers():
    gates = one_hot_gates(POLICY)
    assert gates.shape == (3, 8, 2) and torch.equal(execute_mask(gates), POLICY)
    assert num_executed_blocks(gates).tolist() == [8, 7, 7]
    assert num_executed_blocks(POLICY.int()).tolist() == [8, 7, 7]
    table = policy_table(gates, ["seg", "depth", "normals"])
    lines = table.splitlines()
    assert lines[0].split("|")[1].split() == [str(i) for i in range(1, 9)]
    assert lines[3].startswith("depth") and lines[3].split("|")[1].split() == ["✓"] * 6 + ["·", "✓"]
    assert lines[4].rstrip().endswith("7/8")
    ascii_table = policy_table(POLICY, symbols=("1", "0"))
    assert ascii_table.splitlines()[4].split("|")[1].split() == list("10111111")
    assert "task0" in ascii_table
    # an AdaSharePolicy means its argmax policy
    assert num_executed_blocks(AdaSharePolicy(2, 8)).tolist() == [8, 8]
    probs = torch.tensor([[0.5, 0.125, 1.0], [0.0, 0.994, 0.5]])
    lines = probability_table(probs, ["seg", "depth"]).splitlines()
    assert lines[0].split("|")[1].split() == ["1", "2", "3"]
    assert lines[2].split("|")[1].split() == ["0.50", "0.12", "1.00"]
    assert lines[3].startswith("depth") and lines[3].split("|")[1].split() == ["0.00", "0.99", "0.50"]
    with pytest.raises(ValueError, match=r"execute_probabilities must have shape \(T, L\), got \(2, 3, 2\)"):
        probability_table(torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="got 1 task names for probabilities of 2 tasks"):
        probability_table(probs, ["seg"])


# ============================================================================================== blocks
def test_task_batchnorm_per_task_statistics():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 2.0, 3.0]).repeat_interleave(4)[:, None, None, None]  # tasks differ
    x = torch.randn(3 * 4, 5, 3, 3, generator=g) * scale
    per_task = TaskBatchNorm2d(5, 3)
    ref = nn.BatchNorm2d(5)
    y = per_task(x, [0, 1, 2])
    expect = torch.cat([ref(c) for c in x.split(4)])  # sequential running-stat updates, as T passes do
    torch.testing.assert_close(y, expect)
    torch.testing.assert_close(per_task.bns[0].running_mean, ref.running_mean)
    torch.testing.assert_close(per_task.bns[0].running_var, ref.running_var)
    shared = TaskBatchNorm2d(5, 3, per_task_stats=False)
    torch.testing.assert_close(shared(x, [0, 1, 2]), nn.BatchNorm2d(5)(x))
    specific = TaskBatchNorm2d(5, 3, task_specific=True)
    assert len(specific.bns) == 3
    with torch.no_grad():
        for i, bn in enumerate(specific.bns):
            bn.weight.fill_(i + 1.0)
    y = specific(x, [2, 0, 1])
    torch.testing.assert_close(y[:4], 3.0 * nn.BatchNorm2d(5)(x[:4]))
    assert specific.bns[2].num_batches_tracked == 1 and specific.bns[0].num_batches_tracked == 1
    specific.eval()
    bn1 = specific.bns[1]  # eval: task 1's own running statistics and γ
    expect = 2.0 * (x[:4] - bn1.running_mean[:, None, None]) / torch.sqrt(bn1.running_var[:, None, None] + 1e-5)
    torch.testing.assert_close(specific(x[:4], [1]), expect)


def test_aspp_v2_head_sums_branches():
    head = ASPPv2Head(4, 3, hidden_channels=6, rates=(1, 2), dropout=0.0)
    x = torch.randn(2, 4, 7, 7)
    y = head(x)
    assert y.shape == (2, 3, 7, 7)
    torch.testing.assert_close(y, head.branches[0](x) + head.branches[1](x))
    conv = head.branches[1][0]
    assert conv.dilation == (2, 2) and conv.padding == (2, 2) and conv.bias is not None


def test_architecture():
    m18 = AdaShareNet({"a": 2}, "resnet18", width=8)
    m34 = AdaShareNet({"a": 2}, "resnet34", width=8)
    assert m18.num_blocks == 8 and m34.num_blocks == 16
    assert [b.shortcut is not None for b in m18.blocks] == [False, False, True, False, True, False, True, False]
    assert [(b.stride, b.dilation) for b in m18.blocks] == [(1, 1)] * 2 + [(2, 1), (1, 1)] + [(1, 2)] * 2 + [(1, 4)] * 2
    assert m18.blocks[6].conv2.dilation == (4, 4) and m18.blocks[6].conv2.padding == (4, 4)
    assert sum(b.shortcut is not None for b in m34.blocks) == 3
    conv = m18.stem.conv
    assert conv.kernel_size == (7, 7) and conv.stride == (2, 2) and conv.bias is None and m18.stem.pool.ceil_mode
    assert m18.heads["a"].branches[0][0].in_channels == 64 and m18.heads["a"].rates == (6, 12, 18, 24)
    # init: conv weights N(0, 0.01), BN γ = 1, β = 0; a seed makes it reproducible
    a, b = AdaShareNet({"a": 2}, width=8, seed=4), AdaShareNet({"a": 2}, width=8, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    w = torch.cat([m.weight.flatten() for m in a.modules() if isinstance(m, nn.Conv2d)])
    assert abs(w.std().item() - 0.01) < 1e-3
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in a.modules() if isinstance(m, nn.BatchNorm2d))


def test_output_shapes_and_stride():
    model = tiny_model()
    gates = model.make_policy().sample_soft()
    for size in (32, 33):
        out = model(images(size=size), gates)
        assert list(out) == list(TASKS)
        assert all(out[k].shape == (2, c, size, size) for k, c in TASKS.items())
    stride8 = tiny_model(upsample=None)
    # 33 → conv/2: 17 → maxpool (ceil): 9 → stage 2 (stride 2): 5
    assert stride8(images(size=33), gates)["seg"].shape == (2, 3, 5, 5)
    nearest = tiny_model(upsample="nearest")
    nearest.load_state_dict(stride8.state_dict())
    with torch.no_grad():
        low = stride8(images(size=40), gates)["seg"]
        high = nearest(images(size=40), gates)["seg"]
    torch.testing.assert_close(high, nn.functional.interpolate(low, size=(40, 40), mode="nearest"))


# ================================================================================= batched gated forward
def per_task_forward(model, x, gates):
    """The reference semantics: one backbone pass per task (its own BN statistics) with the gated block
    ``g0·relu(res + f) + g1·res`` written out in plain PyTorch."""
    feats = []
    for t in range(model.num_tasks):
        h = model.stem(x, [t])
        for l, block in enumerate(model.blocks):
            res, f = block.residual(h, [t]), block.branch(h, [t])
            h = gates[t, l, 0] * torch.relu(res + f) + gates[t, l, 1] * res
        feats.append(h)
    return model._predict(feats, x.shape[-2:])


@pytest.mark.parametrize("task_bn", [False, True], ids=["shared_bn", "task_bn"])
def test_batched_forward_equals_per_task_passes(task_bn):
    model = tiny_model(task_bn=task_bn)
    policy = model.make_policy(init="random", seed=3)
    with torch.no_grad():
        policy.logits.normal_(generator=torch.Generator().manual_seed(1))
    x = images()
    gates = policy.sample_soft(p_epoch=9)  # 4 of 8 blocks sampled
    out = model(x, gates)
    expect = per_task_forward(copy.deepcopy(model), x, gates)
    assert_outputs_close(out, expect)
    # the tasks do differ (the comparison is not vacuous)
    assert not torch.allclose(out["seg"], per_task_forward(model, x, gates.flip(0))["seg"], atol=1e-3)


def test_shared_bn_statistics_flag_changes_training_outputs():
    per_task, shared = tiny_model(), tiny_model(bn_stats="shared")
    gates = one_hot_gates(POLICY)
    x = images()
    a, b = per_task(x, gates), shared(x, gates)
    assert not torch.allclose(a["seg"], b["seg"], atol=1e-3)  # one BN over T·B mixes the tasks' statistics
    shared.load_state_dict(per_task.state_dict())
    per_task.eval(), shared.eval()
    assert_outputs_close(per_task(x, gates), shared(x, gates))  # same running statistics in eval


def test_forced_prefix_runs_once_and_matches():
    """Gates that need no gradient and execute the first blocks for every task (curriculum) run those blocks
    once on B rows; with gates that need a gradient everything runs on T·B rows; outputs agree."""
    model = tiny_model()
    policy = model.make_policy(seed=0)
    rows = {}
    for l, block in enumerate(model.blocks):
        block.conv1.register_forward_hook(lambda m, inp, out, l=l: rows.__setitem__(l, inp[0].shape[0]))
    x = images()
    gates = policy.sample_soft(p_epoch=3)  # 6 blocks forced, 2 sampled; logits require grad
    out_grad = model(x, gates)
    assert list(rows.values()) == [6] * 8
    rows.clear()
    out_nograd = model(x, gates.detach())
    assert list(rows.values()) == [2] * 6 + [6] * 2
    assert_outputs_close(out_grad, out_nograd)


# ========================================================================================= trie forward
@pytest.mark.parametrize("task_bn", [False, True], ids=["shared_bn", "task_bn"])
def test_hard_forward_equals_gated_forward_eval(task_bn):
    model = tiny_model(task_bn=task_bn).eval()
    x = images()
    policy = model.make_policy(seed=5)
    with torch.no_grad():
        policy.logits.normal_(generator=torch.Generator().manual_seed(2))
    T, L = model.num_tasks, model.num_blocks
    cases = [POLICY, torch.ones(T, L, dtype=torch.bool), torch.zeros(T, L, dtype=torch.bool),
             execute_mask(policy.sample_hard()), execute_mask(policy.sample_hard())]
    with torch.no_grad():
        for mask in cases:
            gates = one_hot_gates(mask)
            assert_outputs_close(model.forward_hard(x, gates), model(x, gates))
            assert_outputs_close(model.forward_hard(x, mask), model(x, gates))
        assert_outputs_close(model.forward_hard(x), model(x, one_hot_gates(torch.ones(T, L, dtype=torch.bool))))
        assert_outputs_close(model.forward_hard(x, policy), model(x, policy.argmax_policy()))


def test_hard_forward_equals_gated_forward_training():
    """Re-training with a fixed policy: with shared BN and per-task statistics the trie gives the gated
    forward's outputs and the same weight gradients."""
    model = tiny_model().double()  # fp64: the two paths sum the tasks' gradients in different orders
    twin = copy.deepcopy(model)
    x = images().double()
    gates = one_hot_gates(POLICY)
    a, b = model.forward_hard(x, gates), twin(x, gates.requires_grad_())
    assert_outputs_close(a, b, rtol=1e-10, atol=1e-10)
    weighted_sum(a).backward()
    weighted_sum(b).backward()
    weights = [(name, p) for name, p in model.named_parameters() if not name.startswith("policy.")]
    for (name, p), q in zip(weights, twin.weight_parameters(), strict=True):
        g1 = torch.zeros_like(p) if p.grad is None else p.grad  # the trie never touches skipped branches
        torch.testing.assert_close(g1, q.grad, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def _count_rows(model):
    """Forward hooks recording the rows (images) each block's conv path (its first conv) and shortcut process."""
    rows = {"branch": [0] * model.num_blocks, "shortcut": [0] * model.num_blocks, "stem": 0}
    for l, block in enumerate(model.blocks):
        block.conv1.register_forward_hook(
            lambda m, inp, out, l=l: rows["branch"].__setitem__(l, rows["branch"][l] + inp[0].shape[0]))
        if block.shortcut is not None:
            block.shortcut.register_forward_hook(
                lambda m, inp, out, l=l: rows["shortcut"].__setitem__(l, rows["shortcut"][l] + inp[0].shape[0]))
    model.stem.register_forward_hook(lambda m, inp, out: rows.__setitem__("stem", rows["stem"] + inp[0].shape[0]))
    return rows


def test_trie_computes_each_prefix_once():
    # POLICY's trie (A = tasks 0, 1 until block 7; B = task 2 after skipping block 2):
    #   block:       1  2  3  4  5  6  7  8
    #   executions:  1  1  2  2  2  2  2  3     (block 2: task 2 skips; block 7: task 1 skips)
    expected = [1, 1, 2, 2, 2, 2, 2, 3]
    assert shared_block_executions(POLICY) == expected
    # task-specific BN: nothing is shared between tasks; each task's executed blocks, once
    assert shared_block_executions(POLICY, task_bn=True) == POLICY.sum(0).tolist()
    B = 2
    model = tiny_model().eval()
    rows = _count_rows(model)
    with torch.no_grad():
        model.forward_hard(images(B), POLICY)
    assert rows["branch"] == [B * n for n in expected] and rows["stem"] == B
    # shortcuts (blocks 3, 5, 7) run once per parent node, whether its children execute, skip or both
    # (block 7: node A has an executing and a skipping child, node B an executing one → 2 parents)
    assert [rows["shortcut"][l] for l in (2, 4, 6)] == [B * 2, B * 2, B * 2]
    tb = tiny_model(task_bn=True).eval()
    rows = _count_rows(tb)
    with torch.no_grad():
        tb.forward_hard(images(B), POLICY)
    assert rows["branch"] == [B * n for n in POLICY.sum(0).tolist()] and rows["stem"] == 3 * B
    # a batched gated forward computes every block for every task (with gates that need a gradient)
    rows = _count_rows(model := tiny_model().eval())
    model(images(B), one_hot_gates(POLICY).requires_grad_())
    assert rows["branch"] == [3 * B] * 8


def test_skipped_blocks_are_not_computed():
    T, L = 3, 8
    mask = torch.ones(T, L, dtype=torch.bool)
    mask[:, 2] = False  # first block of stage 2 (stride 2 shortcut): skipped by all
    mask[:, 3] = False  # identity-shortcut block: skipped by all
    mask[1, 5] = False
    model = tiny_model().eval()
    rows = _count_rows(model)
    x = images()
    with torch.no_grad():
        out = model.forward_hard(x, mask)
        assert rows["branch"][2] == 0 and rows["branch"][3] == 0
        assert rows["shortcut"][2] == 2  # the skipped block still applies its downsample shortcut
        assert rows["branch"][5] == 2  # tasks 0 and 2 share it; task 1 skips
        assert out["seg"].shape == (2, 3, 32, 32)
        assert_outputs_close(out, model(x, one_hot_gates(mask)))
    assert TriePlan.build(mask, [0] * T).block_executions() == [1, 1, 0, 0, 1, 1, 2, 2]


def test_warmup_forward_is_one_pass():
    model = tiny_model().eval()
    rows = _count_rows(model)
    with torch.no_grad():
        model.forward_hard(images(4))
    assert rows["branch"] == [4] * 8 and rows["stem"] == 4


# ================================================================================== phases and backends
def test_phases_route_gradients():
    model = tiny_model()
    policy = model.make_policy(seed=0)
    x = images()

    set_adashare_phase(model, policy, "policy")
    assert policy.logits.requires_grad and not any(p.requires_grad for p in model.weight_parameters())
    loss = weighted_sum(model(x, policy.sample_soft(p_epoch=100))) + 0.05 * policy.sparsity_loss() \
        + 0.05 * policy.sharing_loss()
    loss.backward()
    assert policy.logits.grad is not None and torch.all(policy.logits.grad.abs().sum(-1) > 0)
    assert all(p.grad is None for p in model.weight_parameters())

    policy.logits.grad = None
    set_adashare_phase(model, policy, "weights")
    assert not policy.logits.requires_grad and all(p.requires_grad for p in model.weight_parameters())
    gates = policy.sample_soft(p_epoch=100)
    assert not gates.requires_grad
    weighted_sum(model(x, gates)).backward()
    assert policy.logits.grad is None
    assert all(p.grad is not None for p in model.weight_parameters())

    groups = model.param_groups(1e-3, backbone_lr=1e-4)
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.weight_parameters()) and len(set(ids)) == len(ids)
    assert {id(p) for p in model.parameters()} - set(ids) == {id(model.policy.logits)}
    assert list(policy.parameters()) == [policy.logits]


def test_forward_follows_the_mode_and_the_stored_hard_policy():
    """Without gates, forward runs the mode: "shared" every block for every task, "soft" gates sampled from the
    network's own policy, "hard" the stored hard policy through the trie."""
    model = tiny_model().eval()
    x = images()
    T, L = model.num_tasks, model.num_blocks
    expected_soft = model.make_policy(seed=0).sample_soft(p_epoch=100)  # the own policy's first draw
    with torch.no_grad():
        assert model.mode == "shared"
        assert_outputs_close(model(x), model(x, one_hot_gates(torch.ones(T, L, dtype=torch.bool))))
        model.set_mode("soft", p_epoch=100)
        assert_outputs_close(model(x), model(x, expected_soft))
        model.set_hard_policy(POLICY)
        model.set_mode("hard")
        assert torch.equal(model.hard_policy, one_hot_gates(POLICY))
        assert_outputs_close(model(x), model(x, one_hot_gates(POLICY)))
    with pytest.raises(ValueError, match=r"mode must be one of \('shared', 'soft', 'hard'\)"):
        model.set_mode("frozen")
    with pytest.raises(ValueError, match=r"set_hard_policy: policy must be for \(T, L\) = \(3, 8\), got \(2, 8\)"):
        model.set_hard_policy(torch.ones(2, 8, dtype=torch.bool))


def test_learnable_parameters_prune_blocks_no_task_executes():
    model = tiny_model()
    weights = sum(p.numel() for p in model.weight_parameters())
    assert model.learnable_parameters() == weights  # the policy logits are not counted
    mask = POLICY.clone()
    mask[:, 3] = False
    model.set_hard_policy(mask)
    assert model.learnable_parameters() == weights  # pruning applies in hard mode only
    model.set_mode("hard")
    pruned = sum(p.numel() for p in model.blocks[3].branch_parameters())
    assert pruned > 0 and model.learnable_parameters() == weights - pruned


@pytest.mark.parametrize("backend", backend_params("gated_residual", "cpu", ("cpp",)))
def test_backbone_backends_agree(backend):
    ref = tiny_model(backend="reference")
    fused = tiny_model(backend=backend)
    fused.load_state_dict(ref.state_dict())
    p1 = ref.make_policy(seed=0)
    p2 = ref.make_policy(seed=0)
    x1 = images().requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    out1, out2 = ref(x1, p1.sample_soft()), fused(x2, p2.sample_soft())
    assert_outputs_close(out1, out2)
    weighted_sum(out1).backward()
    weighted_sum(out2).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(p1.logits.grad, p2.logits.grad, rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", backend_params("gated_residual", "cuda", ("cuda", "triton")))
def test_backbone_backends_agree_cuda(backend):
    with exact_fp32():  # the convolutions of both networks without TF32: only the gate op differs
        _check_backbone_backends_agree_cuda(backend)


def _check_backbone_backends_agree_cuda(backend):
    ref = tiny_model(backend="reference").cuda()
    fused = tiny_model(backend=backend).cuda()
    fused.load_state_dict(ref.state_dict())
    p1 = ref.make_policy(seed=0).cuda()
    p2 = ref.make_policy(seed=0).cuda()
    x = images().cuda()
    out1, out2 = ref(x, p1.sample_soft()), fused(x, p2.sample_soft())
    assert_outputs_close(out1, out2, rtol=1e-4, atol=1e-4)
    weighted_sum(out1).backward()
    weighted_sum(out2).backward()
    torch.testing.assert_close(p1.logits.grad, p2.logits.grad, rtol=1e-3, atol=1e-4)
    model = tiny_model(backend=backend).cuda().eval()
    with torch.no_grad():
        gates = one_hot_gates(POLICY).cuda()
        assert_outputs_close(model.forward_hard(x, gates), model(x, gates), rtol=1e-4, atol=1e-4)


# ================================================================================================ errors
def test_bad_arguments():
    with pytest.raises(ValueError, match=r"backbone must be one of \('resnet18', 'resnet34', 'torchvision:resnet18', "
                                         r".*got 'resnet50'"):
        AdaShareNet({"a": 1}, backbone="resnet50")
    with pytest.raises(ValueError, match=r"backbone must be one of .*got 'timm:resnet50'"):  # bottleneck blocks
        AdaShareNet({"a": 1}, backbone="timm:resnet50")
    with pytest.raises(ValueError, match="tasks must be a non-empty dict"):
        AdaShareNet({})
    with pytest.raises(ValueError, match="output channels of task 'a'"):
        AdaShareNet({"a": 0})
    with pytest.raises(ValueError, match="task names"):
        AdaShareNet({"a.b": 1})
    with pytest.raises(ValueError, match="task_bn=True needs bn_stats='per_task'"):
        AdaShareNet({"a": 1}, task_bn=True, bn_stats="shared")
    with pytest.raises(ValueError, match="bn_stats must be one of"):
        AdaShareNet({"a": 1}, bn_stats="global")
    with pytest.raises(ValueError, match="upsample must be one of"):
        AdaShareNet({"a": 1}, upsample="bicubic")
    with pytest.raises(ValueError, match="backend must be one of"):
        AdaShareNet({"a": 1}, backend="cudnn")
    with pytest.raises(ValueError, match="width must be a positive int"):
        AdaShareNet({"a": 1}, width=0)
    with pytest.raises(ValueError, match="rates must be"):
        ASPPv2Head(4, 2, 4, rates=())

    model = tiny_model()
    x = images()
    with pytest.raises(ValueError, match=r"gates must have shape \(T, L, 2\) = \(3, 8, 2\), got \(3, 8\)"):
        model(x, torch.ones(3, 8))
    with pytest.raises(ValueError, match=r"gates must have shape .* got \(2, 8, 2\)"):
        model(x, torch.ones(2, 8, 2))
    with pytest.raises(TypeError, match="gates must be a torch.Tensor"):
        model(x, [[1, 0]] * 8)
    with pytest.raises(TypeError, match="gates must be a floating-point tensor"):
        model(x, torch.ones(3, 8, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, H, W\), got \(2, 4, 32, 32\)"):
        model(torch.randn(2, 4, 32, 32), torch.ones(3, 8, 2))
    with pytest.raises(ValueError, match="policy must be hard"):
        model.forward_hard(x, torch.full((3, 8, 2), 0.5))
    with pytest.raises(ValueError, match=r"policy must be for \(T, L\) = \(3, 8\), got \(2, 8\)"):
        model.forward_hard(x, torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"policy must have shape \(T, L, 2\) or \(T, L\)"):
        model.forward_hard(x, torch.ones(3, 8, 3))
    with pytest.raises(ValueError, match="must be a bool or 0/1 execute mask"):
        execute_mask(torch.full((3, 8), 0.3))

    with pytest.raises(ValueError, match="init must be one of"):
        AdaSharePolicy(2, 8, init="zeros")
    with pytest.raises(ValueError, match="num_blocks must be a positive int"):
        AdaSharePolicy(2, 0)
    with pytest.raises(ValueError, match="give seed or generator, not both"):
        AdaSharePolicy(2, 8, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="init_temperature must be > 0"):
        AdaSharePolicy(2, 8, init_temperature=0.0)
    p = AdaSharePolicy(2, 8)
    with pytest.raises(ValueError, match="p_epoch must be an int >= 0"):
        p.num_trainable_blocks(-1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        p.sample_soft(temperature=0.0)
    with pytest.raises(ValueError, match="form must be one of"):
        p.sparsity_loss(form="blockdrop")
    with pytest.raises(ValueError, match="form must be one of"):
        p.sharing_loss(form="hamming")
    with pytest.raises(ValueError, match="got 1 task names for a policy of 3 tasks"):
        policy_table(POLICY, ["seg"])
    with pytest.raises(ValueError, match="phase must be one of"):
        set_adashare_phase(model, p, "warmup")
    with pytest.raises(ValueError, match="must split into len"):
        TaskBatchNorm2d(4, 3)(torch.randn(4, 4, 2, 2), [0, 1, 2])
    with pytest.raises(ValueError, match=r"task indices must be in \[0, 3\)"):
        TaskBatchNorm2d(4, 3, task_specific=True)(torch.randn(3, 4, 2, 2), [0, 1, 3])


# ---- torch.compile ------------------------------------------------------------------------------------------

def test_sampling_compiles_fullgraph_from_the_global_rng():
    """Under torch.compile the Gumbel noise comes from torch's global RNG (dynamo cannot trace a
    torch.Generator): reproducible with torch.manual_seed, and the policy's own stream stays untouched."""
    torch._dynamo.reset()
    p, fresh = AdaSharePolicy(2, 8, "random", seed=3), AdaSharePolicy(2, 8, "random", seed=3)
    sample = torch.compile(lambda: p.sample_soft(2), fullgraph=True)
    torch.manual_seed(0)
    first = sample()
    torch.manual_seed(0)
    assert torch.equal(sample(), first)
    torch.manual_seed(1)
    assert not torch.equal(sample(), first)
    torch.testing.assert_close(first.sum(-1), torch.ones(2, 8))
    assert torch.equal(first[:, :7], torch.tensor([1.0, 0.0]).expand(2, 7, 2))  # the curriculum's forced blocks
    assert torch.equal(p.sample_soft(2), fresh.sample_soft(2))  # eager: still the policy's generator


@pytest.mark.slow
def test_soft_mode_network_compiles_fullgraph():
    torch._dynamo.reset()
    model = tiny_model()
    model.set_mode("soft", p_epoch=100)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 16, 16)
    preds = compiled(x)
    assert {t: p.shape[:2] for t, p in preds.items()} == {t: (2, k) for t, k in TASKS.items()}
    sum(p.square().mean() for p in preds.values()).backward()
    assert model.policy.logits.grad is not None and model.policy.logits.grad.abs().sum() > 0


def test_generator_argument_under_compile_is_refused():
    torch._dynamo.reset()
    p, g = AdaSharePolicy(2, 8), torch.Generator().manual_seed(0)
    with pytest.raises(Exception, match=r"generator= cannot be used under torch.compile .*pass the gates"):
        torch.compile(lambda gen: p.sample_soft(generator=gen), fullgraph=True)(g)


@pytest.mark.slow
def test_hard_mode_compiles_with_graph_breaks():
    """The trie plan of a hard policy depends on the policy's values: torch.compile breaks the graph where it is
    built (fullgraph=True refuses), and the compiled forward equals the eager one. (Shared mode, every block for
    every task, builds its plan from constants and compiles with fullgraph=True: tests/test_conversions.py.)"""
    torch._dynamo.reset()
    model = tiny_model().eval()
    model.set_hard_policy(POLICY)
    model.set_mode("hard")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want, got = model(x), torch.compile(model)(x)
    for t in want:
        torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_gated_forward_without_gradient_compiles_fullgraph():
    """Gates that need no gradient let the eager forward run the forced leading blocks once for all tasks (the
    prefix depends on the gates' values); compiled, the T copies run, with the same outputs."""
    torch._dynamo.reset()
    model = tiny_model().eval()
    gates = model.policy.sample_soft(p_epoch=9)  # the first 4 of 8 blocks forced to [1, 0]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert model._shareable_prefix(gates) == 4
        want = model(x, gates)
        got = torch.compile(model, fullgraph=True)(x, gates)
    for t in want:
        torch.testing.assert_close(got[t], want[t], rtol=1e-5, atol=1e-5)
