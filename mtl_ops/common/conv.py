"""F.conv2d with a workaround for a PyTorch CPU bug, for the plain-PyTorch paths (the reference backend and
routed_primitive_gather's effective-kernel fast path).

PyTorch 2.14's CPU bfloat16 convolution, given an input one pixel wide (W = 1) at stride 2 with the input
or the weight in a channels-last layout, returns a weight gradient with garbage in it (values up to 1e38
that change from run to run; 11 to 18 runs in 100 of a (1, 2, 4, 1) input, measured 2026-12-01 on an AMD
EPYC CPU machine). Contiguous operands avoid it: they are copied only for bfloat16 on the CPU, only when one
of them is not contiguous.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not (x.is_contiguous() and weight.is_contiguous()):
        x, weight = x.contiguous(), weight.contiguous()
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
