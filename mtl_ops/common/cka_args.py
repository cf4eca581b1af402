"""The argument checks of cka, shared by the reference (which validates its own input) and the op layer."""
import torch


def check_args(features, debiased: bool) -> None:
    """The argument checks of cka (csrc/common/cka_args.h makes the same checks, with the same messages, in C++)."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"cka: features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 3:
        raise ValueError(f"cka: features must be 3-D (T, n, d) (tasks, samples, features), "
                         f"got {features.dim()}-D with shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"cka: features must be a floating-point tensor, got dtype {features.dtype}")
    num_tasks, n, d = features.shape
    if num_tasks < 1 or d < 1:
        raise ValueError(f"cka: features must have at least one task and one feature (T ≥ 1, d ≥ 1), "
                         f"got shape {tuple(features.shape)}")
    if debiased and n <= 3:
        raise ValueError(f"cka: features must have more than 3 samples (n > 3) for the debiased estimator, "
                         f"got n={n}")
    if not debiased and n < 2:
        raise ValueError(f"cka: features must have at least 2 samples (n ≥ 2) for the biased estimator, got n={n}")
