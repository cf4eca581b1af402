"""Reference definition of Medusa's shared feature attention mask (the oracle for every backend)."""
import torch

from ..common.dtypes import accumulate_dtype


def sfa_apply(features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """``out[t] = sigmoid(mask_logits[t]) * features``: features (B, C, h, w) shared by the T tasks,
    mask_logits (T, B, M, h, w) with M = 1 (spatial, broadcast over channels) or M = C; returns
    (T, B, C, h, w). Materialises the T masked copies; autograd sums the task gradients into features."""
    acc = accumulate_dtype(features.dtype)
    out = torch.sigmoid(mask_logits.to(acc)) * features.to(acc).unsqueeze(0)
    return out.to(features.dtype)
