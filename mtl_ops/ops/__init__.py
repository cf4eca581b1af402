"""Public functional ops. Each module holds one op: its public function (the docstring is the contract) and its
spec (``_fused.FusedOp``), from which ``_fused.register`` builds the operators' fakes and autograd and the
backend choice (see mtl_ops.backends)."""
from .gated_residual import gated_residual

__all__ = ["gated_residual"]
from .ctal_affinity import ctal_affinity

__all__ += ["ctal_affinity"]
from .ms_attention_mix import ms_attention_mix
from .sfa_apply import sfa_apply

__all__ += ["ms_attention_mix", "sfa_apply"]
from .routed_primitive_gather import routed_primitive_gather

__all__ += ["routed_primitive_gather"]
from .rpg_effective_kernel import routed_primitive_gather_linear

__all__ += ["routed_primitive_gather_linear"]
from .cka import cka

__all__ += ["cka"]
