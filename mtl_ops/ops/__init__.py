"""Public functional ops. Each chooses a backend (see mtl_ops.backends) and is differentiable."""
from .gated_residual import gated_residual

__all__ = ["gated_residual"]
from .ctal_affinity import ctal_affinity

__all__ += ["ctal_affinity"]
