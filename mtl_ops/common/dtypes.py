"""The floating dtypes the fused ops take, and the dtype they accumulate in."""
import torch

FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FLOATING_NAMES = "float32, float64, float16 or bfloat16"


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 inputs, fp32 for every other float (csrc/common/accumulate_type.h says the same)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
