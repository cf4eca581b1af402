"""F.conv2d with a workaround for a PyTorch CPU bug, for the plain-PyTorch paths (the reference backend and
routed_primitive_gather's effective-kernel fast path).

PyTorch 2.14's CPU bfloat16 convolution, given a channels-last input one pixel wide (W = 1) at stride 2,
returns a weight gradient with garbage in it (values up to 1e38 that change from run to run; about a third
of the runs of a (1, 2, 2, 1) input; measured 2026-12-01 on an AMD EPYC CPU machine). A contiguous input avoids it;
the copy is of the input only, and only for non-contiguous bfloat16 CPU inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not x.is_contiguous():
        x = x.contiguous()
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
