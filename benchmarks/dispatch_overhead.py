"""Host cost of one fused-op call on tiny CPU tensors (kernels of a few ns): the public op on the cpp backend,
chosen and explicit, against its operators called directly and against the reference, forward only and
forward + backward. Rounds interleave the variants (a shared machine is noisy); medians and minima in us.

    python benchmarks/dispatch_overhead.py [rounds]
"""
import statistics
import sys
import timeit

import torch

from mtl_ops.ops import gated_residual
from mtl_ops.reference import gated_residual as reference


def main(rounds: int = 15, number: int = 2000) -> None:
    torch.set_num_threads(1)
    r, b, g = torch.randn(2, 1, 2, 2, 2), torch.randn(2, 1, 2, 2, 2), torch.rand(2, 2)
    forward = torch.ops.mtl_ops.gated_residual_forward.default
    backward = torch.ops.mtl_ops.gated_residual_backward.default
    leaves = [t.clone().requires_grad_() for t in (r, b, g)]
    dy = torch.ones_like(r)

    def forward_backward(fn):
        return lambda: fn(*leaves).backward(dy)

    def operators():
        forward(r, b, g)
        backward(dy, r, b, g)

    cases = {
        "forward    op(backend='cpp')": lambda: gated_residual(r, b, g, backend="cpp"),
        "forward    op(backend=None)": lambda: gated_residual(r, b, g),
        "forward    operator": lambda: forward(r, b, g),
        "forward    reference": lambda: reference(r, b, g),
        "fwd+bwd    op(backend='cpp')": forward_backward(lambda *a: gated_residual(*a, backend="cpp")),
        "fwd+bwd    operators": operators,
        "fwd+bwd    reference": forward_backward(reference),
    }
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(timeit.timeit(fn, number=number) / number * 1e6)
    for name, t in times.items():
        print(f"{name:30s} median {statistics.median(t):7.1f} us   min {min(t):7.1f} us")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
