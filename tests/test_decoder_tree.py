"""PDF grouping search and DecoderTree (sharing, fusion, and the regression for the reference code's routing of
partially shared groups)."""
import copy

import pytest
import torch
from torch import nn

from mtl_ops.nn import DecoderTree, group_tasks, partition_value, set_partitions

TASKS = ("a", "b", "c")


# ====================================================================== set partitions / grouping search
@pytest.mark.parametrize("n,bell", [(0, 1), (1, 1), (2, 2), (3, 5), (4, 15), (5, 52), (6, 203)])
def test_set_partitions_counts_and_uniqueness(n, bell):
    parts = list(set_partitions(range(n)))
    assert len(parts) == bell
    assert len({frozenset(frozenset(g) for g in p) for p in parts}) == bell
    for p in parts:
        assert sorted(i for g in p for i in g) == list(range(n))


def test_set_partitions_order():
    assert list(set_partitions("abc")) == [
        (("a", "b", "c"),), (("a", "b"), ("c",)), (("a", "c"), ("b",)), (("a",), ("b", "c")),
        (("a",), ("b",), ("c",))]


def sym(n, pairs, diag=1.0):
    s = torch.full((n, n), 0.0, dtype=torch.float64)
    s.fill_diagonal_(diag)
    for (i, j), v in pairs.items():
        s[i, j] = s[j, i] = v
    return s


def test_two_clear_pairs():
    s = sym(4, {(0, 1): 0.97, (2, 3): 0.96, (0, 2): 0.1, (0, 3): 0.1, (1, 2): 0.1, (1, 3): 0.1})
    assert group_tasks(s) == ((0, 1), (2, 3))
    assert group_tasks(s, tasks=["S", "E", "D", "N"]) == (("S", "E"), ("D", "N"))


def test_fewest_groups_beats_higher_value():
    # {01}{23} would score 1.0, but one group already reaches 0.95 (each task: (1 + .96 + .96)/3).
    s = sym(4, {(0, 1): 1.0, (2, 3): 1.0, (0, 2): 0.96, (0, 3): 0.96, (1, 2): 0.96, (1, 3): 0.96})
    assert group_tasks(s) == ((0, 1, 2, 3),)
    assert group_tasks(s, threshold=0.99) == ((0, 1), (2, 3))


def test_threshold_is_inclusive_and_singletons_score_zero():
    # {01}{2}: (0.75 + 0.75 + 0) / 3 = 0.5 exactly; one group: (0.5 + 0.5 + 0.25) / 3 < 0.5.
    s = sym(3, {(0, 1): 0.75, (0, 2): 0.25, (1, 2): 0.25})
    assert partition_value(s, ((0, 1), (2,))) == 0.5
    assert group_tasks(s, threshold=0.5, fallback="separate") == ((0, 1), (2,))
    assert group_tasks(s, threshold=0.5 + 1e-12, fallback="separate") == ((0,), (1,), (2,))
    # the spec's fallback: the best partition into <= T-1 groups, never all singletons
    assert group_tasks(s, threshold=0.5 + 1e-12) == ((0, 1), (2,))


def test_spec_fallback_never_returns_all_singletons():
    s = sym(2, {(0, 1): 0.0})
    assert group_tasks(s) == ((0, 1),)
    assert group_tasks(s, fallback="separate") == ((0,), (1,))
    assert group_tasks(sym(1, {})) == ((0,),)


def test_ties_are_deterministic():
    # {01}{23} and {02}{13} both score 0.96: the one set_partitions yields first wins.
    s = sym(4, {(0, 1): 0.96, (2, 3): 0.96, (0, 2): 0.96, (1, 3): 0.96, (0, 3): 0.0, (1, 2): 0.0})
    assert group_tasks(s) == ((0, 1), (2, 3))
    # equal value at one and two groups: fewer groups
    assert group_tasks(torch.ones(4, 4), threshold=2.0) == ((0, 1, 2, 3),)


def test_within_restricts_to_refinements():
    s = torch.full((4, 4), 0.99, dtype=torch.float64)
    assert group_tasks(s) == ((0, 1, 2, 3),)
    assert group_tasks(s, within=[[0, 2], [1, 3]]) == ((0, 2), (1, 3))
    names = ["S", "E", "D", "N"]
    assert group_tasks(s, tasks=names, within=[["S"], ["E"], ["D", "N"]]) == (("S",), ("E",), ("D", "N"))
    assert group_tasks(s, within=[[0], [1], [2], [3]]) == ((0,), (1,), (2,), (3,))


def test_grouping_limits_and_bad_input():
    group_tasks(torch.eye(6))
    with pytest.raises(ValueError, match=r"at most 6 tasks, got similarity for 7"):
        group_tasks(torch.eye(7))
    with pytest.raises(ValueError, match=r"similarity must be a non-empty square"):
        group_tasks(torch.eye(3)[:2])
    with pytest.raises(ValueError, match=r"similarity contains NaN"):
        group_tasks(torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"within must be a partition"):
        group_tasks(torch.eye(3), within=[[0, 1]])
    with pytest.raises(ValueError, match=r"fallback must be"):
        group_tasks(torch.eye(3), fallback="nope")


# ====================================================================== DecoderTree
class Stage(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x, skip=None):
        y = torch.tanh(self.lin(x))
        return y if skip is None else y + skip


class Affine(nn.Module):
    """y = w·x + b with scalar w, b: lets a test tell exactly which node a task went through."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))

    def forward(self, x):
        return self.w * x + self.b


def stage_factory(stage):
    return Stage()


def test_no_fusion_equals_separate_decoders():
    torch.manual_seed(0)
    tree = DecoderTree(TASKS, stage_factory, 3)
    assert tree.groupings == ((("a",), ("b",), ("c",)),) * 3
    chains = {t: nn.Sequential(*(copy.deepcopy(tree.node(g, t)) for g in range(3))) for t in TASKS}
    x = torch.randn(5, 4)
    skips = [torch.randn(5, 4) for _ in range(3)]
    out = tree(x)
    out_skips = tree(x, skips)
    for t in TASKS:
        torch.testing.assert_close(out[t], chains[t](x))
        h = x
        for g in range(3):
            h = chains[t][g](h, skips[g])
        torch.testing.assert_close(out_skips[t], h)
    # private chains really are different modules
    assert len({id(tree.node(0, t)) for t in TASKS}) == 3


def build_affine_tree(groupings):
    tree = DecoderTree(TASKS, lambda g: Affine(), 3, groupings)
    weights = {}
    value = 2.0
    for g, partition in enumerate(tree.groupings):
        for group in partition:
            node = tree.stages[g]["+".join(group)]
            with torch.no_grad():
                node.w.fill_(value)
                node.b.fill_(value / 10)
            weights[g, group] = (value, value / 10)
            value += 1.0
    return tree, weights


@pytest.mark.parametrize("groupings", [
    [[TASKS], [("a", "b"), ("c",)], [("a",), ("b",), ("c",)]],         # shared, partly shared, private
    [[("a", "b"), ("c",)], [("a",), ("b",), ("c",)], [("a",), ("b",), ("c",)]],   # PDF g = 1 for {a, b}
    [[("b", "c"), ("a",)], [("b", "c"), ("a",)], [("b",), ("c",), ("a",)]],       # second task first in group
])
def test_every_task_goes_through_its_own_private_stages(groupings):
    """Regression for a defect of the reference PDF code: in partially shared groups, later tasks got the first
    task's private features. Each node has its own affine weights; each task's output must be its own chain."""
    tree, weights = build_affine_tree(groupings)
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    out = tree(x)
    all_stages = tree(x, return_all_stages=True)
    for t in TASKS:
        h = x
        expected_stages = []
        for g in range(3):
            w, b = weights[g, tree.group_of(g, t)]
            h = w * h + b
            expected_stages.append(h)
        torch.testing.assert_close(out[t], h, rtol=0, atol=0)
        assert len(all_stages[t]) == 3
        for got, want in zip(all_stages[t], expected_stages):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    # tasks with different private stages get different outputs
    assert not torch.equal(out["a"], out["b"])
    # every private node receives gradient from its own task only
    tree.zero_grad()
    out["b"].sum().backward()
    for g in range(3):
        for group in tree.groupings[g]:
            grad = tree.stages[g]["+".join(group)].w.grad
            assert (grad is not None and grad.abs().item() > 0) == ("b" in group)


def test_shared_nodes_are_computed_once():
    calls = []

    class Counting(Stage):
        def forward(self, x, skip=None):
            calls.append(id(self))
            return super().forward(x, skip)

    tree = DecoderTree(TASKS, lambda g: Counting(), 2, [[TASKS], [("a", "b"), ("c",)]])
    tree(torch.randn(2, 4))
    assert len(calls) == 3 and len(set(calls)) == 3
    assert tree.shared_stages("a") == 2 and tree.shared_stages("c") == 1
    assert tree.path("b") == [TASKS, ("a", "b")]


def test_fuse_carries_weights_over():
    torch.manual_seed(1)
    tree = DecoderTree(TASKS, stage_factory, 3)
    x = torch.randn(3, 4)
    before = tree(x)
    fused = tree.fuse(0, [["b", "c"], ["a"]])
    assert fused.groupings[0] == (("a",), ("b", "c"))
    assert fused.groupings[1:] == tree.groupings[1:]
    assert tree.groupings[0] == (("a",), ("b",), ("c",))                   # the original is untouched
    # the merged node inherits its first task's (b's) node; all surviving nodes are copied
    merged = fused.node(0, "b")
    assert merged is fused.node(0, "c")
    torch.testing.assert_close(merged.state_dict(), tree.node(0, "b").state_dict())
    for g in range(3):
        for t in TASKS:
            if g == 0 and t == "c":
                continue
            torch.testing.assert_close(fused.node(g, t).state_dict(), tree.node(g, t).state_dict())
            assert fused.node(g, t) is not tree.node(g, t)
    after = fused(x)
    torch.testing.assert_close(after["a"], before["a"])
    torch.testing.assert_close(after["b"], before["b"])
    assert not torch.allclose(after["c"], before["c"])
    # progressive: deeper stage fused first, then the next one; weights are independent copies
    fused2 = fused.fuse(1, [["a"], ["b", "c"]])
    assert fused2.shared_stages("c") == 2
    with torch.no_grad():
        fused2.node(0, "b").lin.weight.add_(1.0)
    torch.testing.assert_close(fused.node(0, "b").state_dict(), tree.node(0, "b").state_dict())


def test_bad_groupings_raise():
    with pytest.raises(ValueError, match=r"stage 1 group \('a', 'b'\) is not inside one group of stage 0"):
        DecoderTree(TASKS, stage_factory, 2, [[("a",), ("b",), ("c",)], [("a", "b"), ("c",)]])
    with pytest.raises(ValueError, match=r"one partition per stage \(num_stages=3\), got 2"):
        DecoderTree(TASKS, stage_factory, 3, [[TASKS], [TASKS]])
    with pytest.raises(ValueError, match=r"stage 1: unknown task 'z'"):
        DecoderTree(TASKS, stage_factory, 2, [[TASKS], [("a", "b"), ("c", "z")]])
    with pytest.raises(ValueError, match=r"stage 0: task 'a' is in two groups"):
        DecoderTree(TASKS, stage_factory, 1, [[("a", "b"), ("a", "c")]])
    with pytest.raises(ValueError, match=r"stage 0: tasks \('c',\) are in no group"):
        DecoderTree(TASKS, stage_factory, 1, [[("a", "b")]])
    with pytest.raises(ValueError, match=r"stage 0: each group must be a sequence"):
        DecoderTree(TASKS, stage_factory, 1, [["a", "b", "c"]])
    with pytest.raises(ValueError, match=r"stage 0: empty group"):
        DecoderTree(TASKS, stage_factory, 1, [[TASKS, ()]])
    with pytest.raises(ValueError, match=r"task names must be non-empty strings without"):
        DecoderTree(("a.b",), stage_factory, 1)
    with pytest.raises(ValueError, match=r"num_stages must be a positive int"):
        DecoderTree(TASKS, stage_factory, 0)


def test_bad_fuse_raises():
    tree = DecoderTree(TASKS, stage_factory, 2)
    with pytest.raises(ValueError, match=r"stage 1 group \('a', 'b'\) is not inside one group of stage 0"):
        tree.fuse(1, [["a", "b"], ["c"]])
    shared = DecoderTree(TASKS, stage_factory, 2, [[TASKS], [("a", "b"), ("c",)]])
    with pytest.raises(ValueError, match=r"fuse: stage 1 group \('a',\) would split the current group \('a', 'b'\)"):
        shared.fuse(1, [["a"], ["b", "c"]])
    with pytest.raises(ValueError, match=r"fuse: stage must be an int in \[0, 2\)"):
        tree.fuse(2, [TASKS])
    with pytest.raises(ValueError, match=r"fuse: stage 0: tasks \('c',\) are in no group"):
        tree.fuse(0, [["a", "b"]])
    with pytest.raises(ValueError, match=r"skips must have one entry per stage"):
        tree(torch.randn(1, 4), [torch.randn(1, 4)])
