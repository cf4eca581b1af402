"""Plain PyTorch definitions of every fused op: slow, obvious, materialising. The oracle for all backends."""
from .gated_residual import gated_residual

__all__ = ["gated_residual"]
from .cka import cka

__all__ += ["cka"]
from .routed_primitive_gather import routed_primitive_gather

__all__ += ["routed_primitive_gather"]
