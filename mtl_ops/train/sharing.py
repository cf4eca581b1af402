"""What each network shares between its tasks — the one definition behind gradient balancing (the parameters
whose per-task gradients an aggregator combines), ``backbone_lr`` and ``--pretrained`` (the backbone).

=============  ==========================================  ======================================  ==========
method         shared parameters                           representation every head reads         backbone
=============  ==========================================  ======================================  ==========
single_task    none (one network per task)                 —                                       each net's
shared         backbone + FPN decoder                      — (image-level heads read the backbone)  backbone
adashare       stem + every gated residual block           — (each task runs its own blocks)       stem+blocks
pdf            encoder: backbone + extra stage e5          — (decoder stages shared by groups)     backbone
ctal           backbone + fusion conv                      the fused stride-4 features             backbone
medusa         backbone                                    the backbone's maps                     backbone
etr_nlp        backbone (shared and routed branches)       — (routes split after the stem)         backbone
=============  ==========================================  ======================================  ==========

Parameters outside the shared ones that several tasks use (PDF's fused decoder stages, CTAL's cross-task layer
and initial predictions, AdaShare's blocks within one task's path) get the sum of those tasks' gradients, as
with a plain weighted sum. Where a representation is given, gradient balancing differentiates through the
shared part once with ``torchjd.autojac.mtl_backward``; elsewhere it takes the Jacobian of the task losses with
respect to the shared parameters (``torchjd.autojac.backward``). A network of another class shares its
``backbone`` attribute when it has one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from torch import nn

from ..models import AdaShareNet, CTALNet, ETRNLPNet, Medusa, PDFNet, SharedNet, SingleTaskNets


@dataclass(frozen=True)
class Sharing:
    modules: Tuple[nn.Module, ...]          # whose parameters are shared by every task
    features: Optional[nn.Module] = None    # its output is what every task head reads (None: no such cut)

    def parameters(self, trainable_only: bool = True) -> List[nn.Parameter]:
        seen, out = set(), []
        for m in self.modules:
            for p in m.parameters():
                if id(p) not in seen and (p.requires_grad or not trainable_only):
                    seen.add(id(p))
                    out.append(p)
        return out


def sharing(net: nn.Module) -> Sharing:
    """The shared part of ``net`` (a method network, unwrapped), per the table in the module docstring."""
    if isinstance(net, SingleTaskNets):
        return Sharing(())
    if isinstance(net, AdaShareNet):
        return Sharing((net.stem, net.blocks))
    if isinstance(net, SharedNet):
        return Sharing((net.backbone, net.decoder))
    if isinstance(net, PDFNet):
        return Sharing((net.backbone, net.extra))
    if isinstance(net, CTALNet):
        return Sharing((net.backbone, net.fuse), features=net.fuse)
    if isinstance(net, Medusa):
        return Sharing((net.backbone,), features=net.backbone)
    if isinstance(net, ETRNLPNet) or isinstance(getattr(net, "backbone", None), nn.Module):
        return Sharing((net.backbone,))
    raise ValueError(f"{type(net).__name__}: gradient balancing and backbone_lr need the network's shared part, "
                     f"and it has no `backbone` module (see mtl_ops.train.sharing)")


def backbone_modules(net: nn.Module) -> List[nn.Module]:
    """The backbone(s) of ``net``: where ``--pretrained`` weights load and what ``backbone_lr`` applies to."""
    if isinstance(net, SingleTaskNets):
        return [n.backbone for n in net.nets.values()]
    if isinstance(net, AdaShareNet):  # its DeepLab ResNet, keyed as in the network's state dict
        return [nn.ModuleDict({"stem": net.stem, "blocks": net.blocks})]
    if isinstance(getattr(net, "backbone", None), nn.Module):
        return [net.backbone]
    raise ValueError(f"{type(net).__name__}: pretrained weights and backbone_lr need a `backbone` module, and this "
                     f"network has none")


def backbone_parameters(net: nn.Module) -> List[nn.Parameter]:
    seen, out = set(), []
    for m in backbone_modules(net):
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out
