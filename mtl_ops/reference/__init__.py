"""Plain PyTorch definitions of every fused op: slow, obvious, materialising. The oracle for all backends."""
from .gated_residual import gated_residual

__all__ = ["gated_residual"]
from .cka import cka

__all__ += ["cka"]
from .ctal_affinity import ctal_affinity, ctal_affinity_reassociated

__all__ += ["ctal_affinity", "ctal_affinity_reassociated"]
from .ms_attention_mix import ms_attention_mix
from .sfa_apply import sfa_apply

__all__ += ["ms_attention_mix", "sfa_apply"]
from .routed_primitive_gather import routed_primitive_gather

__all__ += ["routed_primitive_gather"]
