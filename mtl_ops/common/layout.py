"""The layout rule of the element-wise multi-task kernels (csrc/common/task_major.h applies it in C++).

A (T, ...) tensor is "task-major dense" when it is non-overlapping and dense and its tasks are contiguous
runs of numel/T elements (contiguous and channels-last tensors are). The kernels run on such a pair as is
and copy anything else to contiguous. The fake kernels use this rule to predict the real output's strides (so
opcheck on channels-last and permuted inputs checks that the C++ kernels follow it), and the Triton launcher
to lay out its inputs.
"""
import torch


def is_non_overlapping_and_dense(t: torch.Tensor) -> bool:
    """As ATen's TensorImpl::is_non_overlapping_and_dense: some permutation of t is contiguous."""
    expected = 1
    for d in sorted(range(t.dim()), key=lambda d: (t.stride(d), t.shape[d])):
        if t.shape[d] == 1:
            continue
        if t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def is_task_major_dense(t: torch.Tensor) -> bool:
    if not is_non_overlapping_and_dense(t):
        return False
    if t.dim() == 0 or t.shape[0] <= 1:
        return True
    return t.stride(0) * t.shape[0] == t.numel()


def task_major_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if is_task_major_dense(a) and a.stride() == b.stride():
        return a, b
    return a.contiguous(), b.contiguous()


def with_layout_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if t.stride() == like.stride():
        return t
    return torch.empty_like(like).copy_(t)
