"""Every public module of mtl_ops.nn and every network of mtl_ops.models, built tiny, with an input: what the
tests of whole-model behaviour (conversions, copies, compile, docstrings) run over.

A case is ``(build, run)``: ``build(**options)`` makes the module (``options`` may hold ``backend``, for the
cases with ``backend`` in BACKEND_CASES); ``run(module, dtype, memory_format)`` calls it on a fixed input in that
dtype and memory format and returns its outputs as a flat list of tensors.
"""
from __future__ import annotations

import torch
from torch import nn

from mtl_ops.models import AdaShareNet, CTALNet, ETRNLPNet, Medusa, PDFNet, SharedNet, SingleTaskNets
from mtl_ops.nn import (ASPPv2Head, AdaSharePolicy, BasicBlock, Bottleneck, CTAL, DecoderTree, ETRNLPConv, MedusaHead,
                        MultiScaleAttentionHead, SharedFeatureAttention, TaskBatchNorm2d)

TASKS = {"semseg": 5, "depth": 1}
SIZE = (32, 40)
NETWORKS = {  # class, the smallest options that build it, whether it has deep supervision
    "single_task": (SingleTaskNets, {}, False),
    "shared": (SharedNet, {}, False),
    "adashare": (AdaShareNet, dict(head_hidden=8), False),
    "pdf": (PDFNet, dict(decoder_channels=16), False),
    "ctal": (CTALNet, dict(image_size=SIZE, itp_channels=16, ctal_channels=8), True),
    "medusa": (Medusa, {}, True),
    "etr_nlp": (ETRNLPNet, {}, False),
}


def build_network(method: str, **options) -> nn.Module:
    cls, defaults, _ = NETWORKS[method]
    return cls(TASKS, "resnet18" if method == "adashare" else "resnet10", width=4, **defaults, **options)


def o1_weights(net: nn.Module) -> nn.Module:
    """The network with He-initialised convolutions: AdaShare's reference init, N(0, 0.01) for every conv,
    gives outputs near 1e-6, which float16 flushes to zero and which make any comparison vacuous."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    return net


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    return [t for v in out for t in _flat(v)]


def _input(shape, dtype, memory_format, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return x.contiguous(memory_format=memory_format) if x.dim() == 4 else x


def _images(net, dtype, memory_format):
    return _flat(net(_input((2, 3, *SIZE), dtype, memory_format)))


def _decoder_stage(stage: int) -> nn.Module:  # a module-level factory: the tree pickles with it
    return nn.Conv2d(4, 4, 3, padding=1)


def _feature_maps(dtype, memory_format):
    return [_input((2, 4, 8, 8), dtype, memory_format), _input((2, 8, 4, 4), dtype, memory_format, 1)]


def _ctal_input(dtype, memory_format):
    return {t: _input((2, 4, 3, 4), dtype, memory_format, i) for i, t in enumerate(("a", "b"))}


MODULES = {
    "BasicBlock": (lambda: BasicBlock(4, 6, stride=2), lambda m, d, f: _flat(m(_input((2, 4, 7, 5), d, f)))),
    "Bottleneck": (lambda: Bottleneck(8, 2), lambda m, d, f: _flat(m(_input((2, 8, 5, 6), d, f)))),
    "TaskBatchNorm2d": (lambda: TaskBatchNorm2d(4, 2, task_specific=True),
                        lambda m, d, f: _flat(m(_input((4, 4, 5, 6), d, f), [0, 1]))),
    "AdaSharePolicy": (lambda: AdaSharePolicy(2, 4, "random"), lambda m, d, f: [m.probabilities(), m.argmax_policy()]),
    "ASPPv2Head": (lambda: ASPPv2Head(4, 3, hidden_channels=8, rates=(1, 2)),
                   lambda m, d, f: _flat(m(_input((2, 4, 6, 7), d, f)))),
    "DecoderTree": (lambda: DecoderTree(["a", "b"], _decoder_stage, 2, [[["a", "b"]], [["a"], ["b"]]]),
                    lambda m, d, f: _flat(m(_input((2, 4, 5, 6), d, f)))),
    "CTAL": (lambda **o: CTAL(["a", "b"], 4, (3, 4), channels=4, **o), lambda m, d, f: _flat(m(_ctal_input(d, f)))),
    "CTAL-per_task_fusion": (lambda **o: CTAL(["a", "b"], 4, (3, 4), channels=4, per_task_fusion=True, **o),
                             lambda m, d, f: _flat(m(_ctal_input(d, f)))),
    "SharedFeatureAttention": (lambda **o: SharedFeatureAttention(4, mask="channel", **o),
                               lambda m, d, f: _flat(m(_input((2, 4, 5, 6), d, f)))),
    "MultiScaleAttentionHead": (lambda **o: MultiScaleAttentionHead([4, 8], 3, **o),
                                lambda m, d, f: _flat(m(_feature_maps(d, f), (9, 7)))),
    "MedusaHead": (lambda **o: MedusaHead([4, 8], 3, **o), lambda m, d, f: _flat(m(_feature_maps(d, f)))),
    "ETRNLPConv": (lambda **o: ETRNLPConv(4, 6, 2, sharing_ratio=0.5, **o),
                   lambda m, d, f: _flat(m(_input((4, 4, 5, 6), d, f)))),
    **{f"net-{method}": ((lambda method: lambda **o: build_network(method, **o))(method), _images)
       for method in NETWORKS if method != "adashare"},
    "net-adashare": (lambda **o: o1_weights(build_network("adashare", **o)), _images),
    "net-ctal-per_task_fusion": (lambda **o: build_network("ctal", per_task_fusion=True, **o), _images),
}
# the cases whose build takes a backend (the modules and networks that run fused ops)
BACKEND_CASES = ("CTAL", "CTAL-per_task_fusion", "SharedFeatureAttention", "MultiScaleAttentionHead", "MedusaHead",
                 "ETRNLPConv", "net-adashare", "net-ctal", "net-ctal-per_task_fusion", "net-etr_nlp", "net-medusa")
