"""DecoderTree: a multi-stage decoder whose stages are shared by groups of tasks (Progressive Decoder Fusion).

Direction: stage 0 is the **first stage run, the deepest** (PDF: stride 64, fed by the encoder's last map);
stage ``num_stages − 1`` is the last (shallowest, stride 4). Sharing starts at the deep end: the groups of
stage g must **refine** the groups of stage g−1 (every group at g lies inside one group at g−1), so a task
set that shares a stage has shared every stage before it, and groups only split as the decoder goes on.
This is PDF's tree of partitions P_0 ⊒ P_1 ⊒ …: each node (stage g, group G) holds one stage module, its input is its
parent node's output (or the decoder input at stage 0), and every task reads the nodes on its own
root-to-leaf path.

Unlike the reference PDF code (which aliased the first task's private outputs into every other task of a
partially shared group), each task here goes through its own private stages: outputs are kept
per node and each task gets a fresh list of the nodes on its own path.
"""
import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .task_names import check_task_names

__all__ = ["DecoderTree"]

Group = Tuple[str, ...]
Partition = Tuple[Group, ...]


def _normalise_partition(tasks: Tuple[str, ...], partition, where: str) -> Partition:
    order = {t: i for i, t in enumerate(tasks)}
    if isinstance(partition, (str, bytes)) or not isinstance(partition, (list, tuple)):
        raise ValueError(f"{where}: expected a sequence of groups (sequences of task names), got {partition!r}")
    seen: Dict[str, Group] = {}
    groups = []
    for group in partition:
        if isinstance(group, (str, bytes)) or not isinstance(group, (list, tuple, set, frozenset)):
            raise ValueError(f"{where}: each group must be a sequence of task names, got {group!r}")
        if len(group) == 0:
            raise ValueError(f"{where}: empty group")
        for t in group:
            if t not in order:
                raise ValueError(f"{where}: unknown task {t!r} in group {tuple(group)!r}; tasks are {tasks!r}")
        g = tuple(sorted(set(group), key=order.__getitem__))
        if len(g) != len(group):
            raise ValueError(f"{where}: group {tuple(group)!r} names a task twice")
        for t in g:
            if t in seen:
                raise ValueError(f"{where}: task {t!r} is in two groups, {seen[t]!r} and {g!r}")
            seen[t] = g
        groups.append(g)
    missing = tuple(t for t in tasks if t not in seen)
    if missing:
        raise ValueError(f"{where}: tasks {missing!r} are in no group; every task must be in exactly one group")
    return tuple(sorted(groups, key=lambda g: order[g[0]]))


def _check_refines(child: Partition, parent: Partition, stage: int) -> None:
    parent_of = {t: g for g in parent for t in g}
    for g in child:
        parents = tuple(dict.fromkeys(parent_of[t] for t in g))
        if len(parents) > 1:
            raise ValueError(
                f"groupings: stage {stage} group {g!r} is not inside one group of stage {stage - 1} (it spans "
                f"{', '.join(repr(p) for p in parents)}); a stage's groups must refine the groups of the stage "
                f"before it (stage 0 is the deepest and the most shared)")


def _node_key(group: Group) -> str:
    return "+".join(group)


class DecoderTree(nn.Module):
    """A decoder of ``num_stages`` stages; stage g is shared within each group of ``groupings[g]``.

    Args:
        tasks: task names (strings without ``.`` or ``+``), in a fixed order that sets tie-breaks and the
            order of groups.
        stage_factory: ``stage_factory(stage) -> nn.Module``; called once per (stage, group) node. A stage
            module is called as ``module(x)``, or ``module(x, skip)`` when :meth:`forward` gets ``skips``.
        num_stages: number of stages (PDF: 5).
        groupings: one partition of ``tasks`` per stage, stage 0 first (deepest); each partition is a
            sequence of groups of task names, and each stage's groups must refine the previous stage's.
            ``None``: every task alone at every stage (PDF's Sep-De).

    Attributes:
        groupings: the normalised partitions (groups and members in task order).
        stages: ``nn.ModuleList`` of ``nn.ModuleDict``; node (g, G) is ``stages[g]["+".join(G)]``.
    """

    def __init__(self, tasks: Sequence[str], stage_factory: Callable[[int], nn.Module], num_stages: int,
                 groupings: Optional[Sequence[Sequence[Sequence[str]]]] = None, *,
                 _make_node: Optional[Callable[[int, Group], nn.Module]] = None):
        super().__init__()
        tasks = check_task_names(tasks, "DecoderTree")
        if not isinstance(num_stages, int) or isinstance(num_stages, bool) or num_stages < 1:
            raise ValueError(f"DecoderTree: num_stages must be a positive int, got {num_stages!r}")
        if not callable(stage_factory):
            raise ValueError(f"DecoderTree: stage_factory must be callable, got {stage_factory!r}")
        self.tasks = tasks
        self.num_stages = num_stages
        self.stage_factory = stage_factory
        self.groupings = self.validate_groupings(tasks, num_stages, groupings)

        make = _make_node or (lambda stage, group: stage_factory(stage))
        self.stages = nn.ModuleList()
        for g, partition in enumerate(self.groupings):
            nodes = nn.ModuleDict()
            for group in partition:
                module = make(g, group)
                if not isinstance(module, nn.Module):
                    raise ValueError(f"DecoderTree: stage_factory({g}) must return an nn.Module, "
                                     f"got {type(module).__name__}")
                nodes[_node_key(group)] = module
            self.stages.append(nodes)

    # ------------------------------------------------------------------ structure
    @staticmethod
    def validate_groupings(tasks: Sequence[str], num_stages: int, groupings) -> Tuple[Partition, ...]:
        """Normalise ``groupings`` (None → all separate) and check it is a tree; ValueError names the stage."""
        tasks = tuple(tasks)
        if groupings is None:
            return tuple(tuple((t,) for t in tasks) for _ in range(num_stages))
        if isinstance(groupings, (str, bytes)) or not isinstance(groupings, (list, tuple)):
            raise ValueError(f"groupings: expected one partition per stage, got {groupings!r}")
        if len(groupings) != num_stages:
            raise ValueError(f"groupings: expected one partition per stage (num_stages={num_stages}), "
                             f"got {len(groupings)}")
        parts = tuple(_normalise_partition(tasks, p, f"groupings: stage {g}") for g, p in enumerate(groupings))
        for g in range(1, num_stages):
            _check_refines(parts[g], parts[g - 1], g)
        return parts

    def group_of(self, stage: int, task: str) -> Group:
        """The group that ``task`` belongs to at ``stage``."""
        for group in self.groupings[stage]:
            if task in group:
                return group
        raise KeyError(f"unknown task {task!r}; tasks are {self.tasks!r}")

    def node(self, stage: int, task: str) -> nn.Module:
        """The stage module that ``task`` runs through at ``stage``."""
        return self.stages[stage][_node_key(self.group_of(stage, task))]

    def path(self, task: str) -> List[Group]:
        """The groups on ``task``'s root-to-leaf path, stage 0 first."""
        return [self.group_of(g, task) for g in range(self.num_stages)]

    def shared_stages(self, task: str) -> int:
        """How many leading stages ``task`` shares with another task (PDF's ``group_stage``)."""
        return sum(1 for g in range(self.num_stages) if len(self.group_of(g, task)) > 1)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, skips: Optional[Sequence[Optional[torch.Tensor]]] = None, *,
                return_all_stages: bool = False) -> Dict[str, Union[torch.Tensor, List[torch.Tensor]]]:
        """Run every node once and route each task along its own path.

        Args:
            x: the decoder input (B, C, h, w), fed to every stage-0 node (PDF: the encoder's deepest map e6).
            skips: optional, one entry per stage; stage g nodes are called as ``module(x_prev, skips[g])``
                (PDF: en[4−g]). Without it, ``module(x_prev)``.
            return_all_stages: return, per task, the list of its node outputs, stage 0 first (what PDF's
                heads read) instead of the last stage's output.

        Returns:
            ``{task: output}`` (or ``{task: [stage outputs]}``), keyed in task order.
        """
        if skips is not None and len(skips) != self.num_stages:
            raise ValueError(f"DecoderTree.forward: skips must have one entry per stage "
                             f"(num_stages={self.num_stages}), got {len(skips)}")
        outputs: List[Dict[Group, torch.Tensor]] = []
        for g, partition in enumerate(self.groupings):
            stage_out: Dict[Group, torch.Tensor] = {}
            for group in partition:
                inp = x if g == 0 else outputs[g - 1][self.group_of(g - 1, group[0])]
                module = self.stages[g][_node_key(group)]
                stage_out[group] = module(inp) if skips is None else module(inp, skips[g])
            outputs.append(stage_out)
        if return_all_stages:
            return {t: [outputs[g][self.group_of(g, t)] for g in range(self.num_stages)] for t in self.tasks}
        last = self.num_stages - 1
        return {t: outputs[last][self.group_of(last, t)] for t in self.tasks}

    # ------------------------------------------------------------------ fusion
    def fuse(self, stage: int, groups: Sequence[Sequence[str]]) -> "DecoderTree":
        """A new tree whose partition at ``stage`` is ``groups`` (all other stages unchanged).

        ``groups`` is a full partition of the tasks in which every group is a union of current groups at
        ``stage`` (fusion only merges), and the result must still be a tree (checked against stages
        ``stage − 1`` and ``stage + 1``). Weights carry over: every node that exists in both trees is
        deep-copied (parameters and buffers); a merged node inherits a deep copy of the current node of
        its **first task in task order**. ``self`` is left untouched. (PDF retrains each configuration
        from scratch; call ``reset_parameters`` on the result to do that.)
        """
        if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage < self.num_stages:
            raise ValueError(f"fuse: stage must be an int in [0, {self.num_stages}), got {stage!r}")
        new = _normalise_partition(self.tasks, groups, f"fuse: stage {stage}")
        current = self.groupings[stage]
        for g in new:
            for old in current:
                if set(old) & set(g) and not set(old) <= set(g):
                    raise ValueError(f"fuse: stage {stage} group {g!r} would split the current group {old!r}; "
                                     f"fuse only merges groups")
        groupings = list(self.groupings)
        groupings[stage] = new
        self.validate_groupings(self.tasks, self.num_stages, groupings)

        def make(g: int, group: Group) -> nn.Module:
            return copy.deepcopy(self.stages[g][_node_key(self.group_of(g, group[0]))])

        return DecoderTree(self.tasks, self.stage_factory, self.num_stages, groupings, _make_node=make)

    def reset_parameters(self) -> None:
        """Re-initialise every node (modules that define ``reset_parameters``)."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def extra_repr(self) -> str:
        rows = [f"stage {g}: " + " | ".join(",".join(grp) for grp in p) for g, p in enumerate(self.groupings)]
        return "tasks=" + repr(self.tasks) + "\n" + "\n".join(rows)
