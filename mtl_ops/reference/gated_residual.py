"""Reference definition of AdaShare's gated residual (the oracle for every backend)."""
import torch


def gated_residual(residual: torch.Tensor, branch: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``y[t] = gates[t, 0] * relu(residual[t] + branch[t]) + gates[t, 1] * residual[t]``.

    ``residual`` and ``branch`` are (T, B, C, H, W); ``gates`` is (T, 2) with column 0 the execute weight
    and column 1 the skip weight. The arithmetic runs in the promoted dtype of the inputs (fp32 when the
    gates are fp32 and the activations are half) and the result is cast back to ``residual.dtype``.
    """
    view = (gates.shape[0],) + (1,) * (residual.dim() - 1)
    g_exec = gates[:, 0].reshape(view)
    g_skip = gates[:, 1].reshape(view)
    y = g_exec * torch.relu(residual + branch) + g_skip * residual
    return y.to(residual.dtype)
