"""Progressive Decoder Fusion's task-grouping search.

The rule, as in the PDF code (``GroupTasks``), with ``S`` the (T, T) similarity matrix (CKA):

* the score of task ``t`` in group ``G`` is 0 when ``G`` is a singleton, else the mean of ``S[t][u]`` over
  the other members ``u`` of ``G``; the value of a partition is the mean of its tasks' scores;
* for k = 1, 2, …, T−1: take the best partition into at most k groups; return it as soon as its value
  reaches ``threshold`` (``>=``). Because the best partition into ≤ k−1 groups was below the threshold,
  this is: **the fewest groups that can reach the threshold, and among those the highest value**;
* when no partition into ≤ T−1 groups reaches the threshold, the PDF code's rule returns the best partition
  into ≤ T−1 groups (``fallback="best"``, the default; the all-singleton partition is never chosen, a quirk of
  the original). ``fallback="separate"`` returns every task alone instead.

Ties (equal value, to the last bit) go to the partition that :func:`set_partitions` yields first, so the
result is deterministic. ``within`` restricts the search to refinements of a given partition (the
groups at stage g must be subsets of the groups at stage g−1).
"""
from typing import Hashable, Iterator, Optional, Sequence, Tuple

import torch

__all__ = ["set_partitions", "group_tasks", "partition_value", "MAX_GROUPING_TASKS"]

MAX_GROUPING_TASKS = 6
"""The exhaustive search visits Bell(T) partitions: 203 at T = 6. Beyond that, group_tasks refuses."""

Partition = Tuple[Tuple[Hashable, ...], ...]


def set_partitions(items: Sequence[Hashable]) -> Iterator[Partition]:
    """Yield every partition of ``items`` into non-empty groups, each exactly once, in a fixed order.

    Groups are tuples keeping the order of ``items``, listed in order of their first item. The order is
    the lexicographic order of restricted growth strings: the single group comes first, the all-singleton
    partition last.
    """
    items = tuple(items)
    n = len(items)
    if n == 0:
        yield ()
        return
    labels = [0] * n

    def extend(i: int, num_blocks: int) -> Iterator[Partition]:
        if i == n:
            blocks = [[] for _ in range(num_blocks)]
            for item, label in zip(items, labels):
                blocks[label].append(item)
            yield tuple(tuple(b) for b in blocks)
            return
        for label in range(num_blocks + 1):
            labels[i] = label
            yield from extend(i + 1, max(num_blocks, label + 1))

    yield from extend(1, 1)


def partition_value(similarity, partition: Sequence[Sequence[int]]) -> float:
    """Mean over tasks of the task's score in its group (0 for a singleton; mean similarity to the others)."""
    s = _as_matrix(similarity)
    total = 0.0
    count = 0
    for group in partition:
        for t in group:
            if len(group) > 1:
                total += sum(s[t][u] for u in group if u != t) / (len(group) - 1)
            count += 1
    return total / count


def _as_matrix(similarity):
    if isinstance(similarity, torch.Tensor):
        return similarity.detach().to("cpu", torch.float64).tolist()
    return [[float(v) for v in row] for row in similarity]


def _refinements(within: Sequence[Sequence[int]]) -> Iterator[Partition]:
    """Every partition of all tasks whose groups each lie inside one group of ``within``."""
    def rec(i: int) -> Iterator[Partition]:
        if i == len(within):
            yield ()
            return
        for head in set_partitions(within[i]):
            for tail in rec(i + 1):
                yield head + tail
    yield from rec(0)


def _canonical(partition, order) -> Partition:
    groups = [tuple(sorted(g, key=order.__getitem__)) for g in partition]
    return tuple(sorted(groups, key=lambda g: order[g[0]]))


def group_tasks(similarity, threshold: float = 0.95, *, tasks: Optional[Sequence[Hashable]] = None,
                within: Optional[Sequence[Sequence[Hashable]]] = None, fallback: str = "best") -> Partition:
    """Group tasks by similarity with PDF's rule (see the module docstring).

    Args:
        similarity: (T, T) matrix (tensor or nested sequence), e.g. :func:`mtl_ops.reference.cka` output.
        threshold: the value a partition must reach (PDF's ``min_similarity``; 0.95 in its configs).
        tasks: names for the rows; the result uses them. Default: the indices 0..T−1.
        within: a partition of the tasks that the result must refine (the previous stage's groups).
        fallback: ``"best"`` (spec) or ``"separate"``: what to return when no partition into ≤ T−1 groups
            reaches the threshold.

    Returns:
        The partition, a tuple of groups (tuples), groups and members in the order of ``tasks``.
    """
    if isinstance(similarity, torch.Tensor):
        shape = tuple(similarity.shape)
    else:
        shape = (len(similarity),) + ((len(similarity[0]),) if len(similarity) else ())
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ValueError(f"group_tasks: similarity must be a non-empty square (T, T) matrix, got shape {shape}")
    num_tasks = shape[0]
    if num_tasks > MAX_GROUPING_TASKS:
        raise ValueError(f"group_tasks: the exhaustive search supports at most {MAX_GROUPING_TASKS} tasks, "
                         f"got similarity for {num_tasks}")
    if fallback not in ("best", "separate"):
        raise ValueError(f"group_tasks: fallback must be 'best' or 'separate', got {fallback!r}")
    s = _as_matrix(similarity)
    if any(v != v for row in s for v in row):
        raise ValueError("group_tasks: similarity contains NaN")
    names = tuple(range(num_tasks)) if tasks is None else tuple(tasks)
    if len(names) != num_tasks or len(set(names)) != num_tasks:
        raise ValueError(f"group_tasks: tasks must be {num_tasks} distinct names, got {names!r}")
    index = {name: i for i, name in enumerate(names)}

    if within is None:
        parent = (tuple(range(num_tasks)),)
    else:
        try:
            parent = tuple(tuple(index[t] for t in g) for g in within)
        except KeyError as e:
            raise ValueError(f"group_tasks: within names unknown task {e.args[0]!r}") from None
        flat = sorted(i for g in parent for i in g)
        if flat != list(range(num_tasks)) or any(len(g) == 0 for g in parent):
            raise ValueError(f"group_tasks: within must be a partition of the tasks {names!r} into non-empty "
                             f"groups, got {tuple(within)!r}")

    # Best value per exact number of groups; first one found wins ties (strict >).
    best = {}
    for p in _refinements(parent):
        k = len(p)
        value = partition_value(s, p)
        if k not in best or value > best[k][0]:
            best[k] = (value, p)

    chosen = None
    running = None                      # best over <= k groups
    for k in range(1, num_tasks):
        if k in best and (running is None or best[k][0] > running[0]):
            running = best[k]
        if running is not None and running[0] >= threshold:
            chosen = running[1]
            break
    if chosen is None:
        if fallback == "best" and running is not None:
            chosen = running[1]
        else:
            chosen = tuple((i,) for i in range(num_tasks))
    order = {i: i for i in range(num_tasks)}
    return tuple(tuple(names[i] for i in g) for g in _canonical(chosen, order))
