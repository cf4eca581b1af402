"""Benchmark cases: per op, the stated sizes, how to make inputs, and the providers to compare
(the reference, torch.compile(reference), and every fused backend available on the device)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import ops, reference
from ..backends import OPS, unavailable_reason


@dataclass
class Provider:
    name: str
    fn: Callable  # fn(*inputs) -> Tensor


@dataclass
class BenchCase:
    op: str
    sizes: dict[str, dict]  # "full" (the stated size), "quick" (a smoke-test size), optionally "gpu" (a size
    #                         several times the GPU's L2 cache, for the memory-bandwidth figures)
    make_inputs: Callable[[dict, torch.device, torch.dtype], tuple]
    reference_fn: Callable
    fused_fn: Callable[[str], Callable]  # backend name -> fn(*inputs)
    target: str = ""  # the speed/memory target the project set for this op (shown in the table)
    notes: dict = field(default_factory=dict)
    extra_providers: dict = field(default_factory=dict)  # other baselines: name -> fn(*inputs)
    modes: tuple = ("fwd", "fwd+bwd")  # forward-only ops (cka) have no backward to time
    # backend -> fn(*inputs) on tensor cores: the op's allow_tf32=True with PyTorch's TF32 switched on for
    # the call (the fused GEMMs are exact fp32 by default); a CUDA-only provider "<backend>+tf32"
    tf32_fn: Callable[[str], Callable] | None = None

    def label(self, size: str) -> str:
        return " ".join(f"{k}={v}" for k, v in self.sizes[size].items())


def providers_for(case: BenchCase, device: torch.device) -> list[Provider]:
    out = [Provider("reference", case.reference_fn),
           Provider("compile(reference)", torch.compile(case.reference_fn, dynamic=False))]
    out += [Provider(name, fn) for name, fn in case.extra_providers.items()]
    for backend in OPS[case.op]:
        if backend != "reference" and unavailable_reason(backend, device.type, case.op) is None:
            if backend == "triton" and device.type == "cpu":
                continue  # the interpreter is a correctness tool, not a contender
            out.append(Provider(backend, case.fused_fn(backend)))
            if case.tf32_fn is not None and device.type == "cuda" and backend == "cuda":
                out.append(Provider(f"{backend}+tf32", _with_tf32(case.tf32_fn(backend))))
    return out


def _with_tf32(fn: Callable) -> Callable:
    """``fn`` run with PyTorch's TF32 matmuls switched on, the setting restored after each call."""
    def call(*inputs):
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return fn(*inputs)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    return call


def _gated_residual_inputs(size: dict, device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    shape = (size["T"], size["B"], size["C"], size["H"], size["W"])
    r = torch.randn(shape, generator=g).to(device, dtype)
    b = torch.randn(shape, generator=g).to(device, dtype)
    gates = torch.softmax(torch.randn(size["T"], 2, generator=g), 1).to(device)
    return r, b, gates


CASES: dict[str, BenchCase] = {
    "gated_residual": BenchCase(
        op="gated_residual",
        sizes={"full": dict(T=3, B=8, C=64, H=72, W=96), "quick": dict(T=3, B=2, C=8, H=9, W=12),
               "gpu": dict(T=3, B=16, C=64, H=144, W=192)},
        make_inputs=_gated_residual_inputs,
        reference_fn=reference.gated_residual,
        fused_fn=lambda backend: (lambda r, b, g: ops.gated_residual(r, b, g, backend=backend)),
        target="CPU fp32 fwd+bwd at full size: cpp >= 1.5x reference and >= torch.compile(reference)",
    ),
}


def _ctal_affinity_inputs(size: dict, device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    B, T, C, H, W, k = (size[key] for key in ("B", "T", "C", "H", "W", "k"))
    N = H * W
    x = torch.randn(B, T, C, H, W, generator=g).to(device, dtype)
    v = torch.randn(B, T, C, H, W, generator=g).to(device, dtype)
    bound = (T * k * k) ** -0.5  # nn.Conv2d's default init of the fusion
    weight = ((torch.rand(N, T, k, k, generator=g) * 2 - 1) * bound).to(device)
    bias = ((torch.rand(N, generator=g) * 2 - 1) * bound).to(device)
    return x, v, weight.to(dtype), bias.to(dtype)


CTAL_GAMMA = 0.05
CASES["ctal_affinity"] = BenchCase(
    op="ctal_affinity",
    sizes={"full": dict(B=2, T=3, C=128, H=72, W=96, k=3), "quick": dict(B=1, T=3, C=8, H=9, W=12, k=3)},
    make_inputs=_ctal_affinity_inputs,
    reference_fn=lambda x, v, w, b: reference.ctal_affinity(x, v, w, b, CTAL_GAMMA),
    fused_fn=lambda backend: (lambda x, v, w, b: ops.ctal_affinity(x, v, w, b, CTAL_GAMMA, backend=backend)),
    target=("CPU fp32 fwd+bwd at NYUv2 size (B=2 T=3 C=128 72x96): cpp >= 5x reference, faster than "
            "torch.compile(reference) and the plain-PyTorch reassociation, peak memory <= 1/10 of the reference"),
    extra_providers={"reassoc(plain torch)": lambda x, v, w, b: reference.ctal_affinity_reassociated(
        x, v, w, b, CTAL_GAMMA)},
    tf32_fn=lambda backend: (lambda x, v, w, b: ops.ctal_affinity(x, v, w, b, CTAL_GAMMA, backend=backend,
                                                                   allow_tf32=True)),
)


# ---- Medusa -------------------------------------------------------------------------------------------


def _scales(size: dict):
    return [(-(-size["H"] // st), -(-size["W"] // st)) for st in size["strides"]]


def _ms_attention_mix_inputs(size: dict, device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    scales = _scales(size)
    values = [torch.randn(size["B"], size["K"], h, w, generator=g).to(device, dtype) for h, w in scales]
    logits = [torch.randn(size["B"], 1, h, w, generator=g).to(device, dtype) for h, w in scales]
    return (*values, *logits)


def _ms_mix(fn):
    """fn(values, logits, size) as a provider over the flat inputs (S values then S logits); the output
    size is the finest scale's."""
    def call(*tensors):
        S = len(tensors) // 2
        return fn(list(tensors[:S]), list(tensors[S:]), tuple(tensors[0].shape[-2:]))
    return call


def _sfa_apply_inputs(size: dict, device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    out = []
    for (h, w), c in zip(_scales(size), size["C"]):
        out.append(torch.randn(size["B"], c, h, w, generator=g).to(device, dtype))
        out.append(torch.randn(size["T"], size["B"], 1 if size["M"] == 1 else c, h, w, generator=g).to(device, dtype))
    return tuple(out)


def _sfa_all_scales(fn):
    """fn(features, mask_logits) applied at every scale; inputs are (features, mask_logits) pairs."""
    def call(*tensors):
        return [fn(tensors[i], tensors[i + 1]) for i in range(0, len(tensors), 2)]
    return call


CASES["ms_attention_mix"] = BenchCase(
    op="ms_attention_mix",
    sizes={"full": dict(B=8, K=40, H=288, W=384, strides=(4, 8, 16, 32)),
           "quick": dict(B=2, K=3, H=32, W=48, strides=(4, 8, 16, 32)),
           "gpu": dict(B=64, K=40, H=288, W=384, strides=(4, 8, 16, 32))},
    make_inputs=_ms_attention_mix_inputs,
    reference_fn=_ms_mix(reference.ms_attention_mix),
    fused_fn=lambda backend: _ms_mix(lambda v, a, s: ops.ms_attention_mix(v, a, s, backend=backend)),
    target="CPU fp32 fwd+bwd, S=4 (72x96..9x12 -> 72x96), B=8, K=40: cpp >= 3x reference, >= 1.5x "
           "torch.compile(reference), peak memory <= 1/3 of the reference's",
    notes={"sizes": "H, W: the image; the scales are ceil(H/stride) x ceil(W/stride); output = finest scale"},
)
CASES["sfa_apply"] = BenchCase(
    op="sfa_apply",
    sizes={"full": dict(T=4, B=8, C=(64, 128, 256, 512), M=1, H=288, W=384, strides=(4, 8, 16, 32)),
           "quick": dict(T=2, B=2, C=(4, 8, 8, 16), M=1, H=32, W=48, strides=(4, 8, 16, 32)),
           "gpu": dict(T=4, B=32, C=(64, 128, 256, 512), M=1, H=288, W=384, strides=(4, 8, 16, 32))},
    make_inputs=_sfa_apply_inputs,
    reference_fn=_sfa_all_scales(reference.sfa_apply),
    fused_fn=lambda backend: _sfa_all_scales(lambda f, m: ops.sfa_apply(f, m, backend=backend)),
    target="CPU fp32 fwd+bwd, T=4 over the four resnet18 scales of a 288x384 image (spatial masks): "
           "cpp >= 1.5x reference",
)


# ---- routed_primitive_gather (ETR-NLP): the default five primitives, sharing ratio 0.9, G = gcd(C_in, C_sh) ----
# Primitive banks already made, per (C, device, dtype): the providers look them up instead of making them, so
# that torch.compile sees no Generator (made here when the inputs are).
_RPG_PRIMITIVES: dict = {}


def _rpg_primitives(C: int, device, dtype):
    from ..nn.etr_nlp_primitives import DEFAULT_PRIMITIVES, make_frozen, parse_primitive

    key = (C, torch.empty(0, device=device).device, dtype)  # canonical: "cuda" and "cuda:0" are one device
    if key not in _RPG_PRIMITIVES:
        spec = [parse_primitive(p) for p in DEFAULT_PRIMITIVES]
        gen = torch.Generator().manual_seed(0)
        frozen = [make_frozen(kind, C, gen).to(device, dtype) for kind, _, _ in spec]
        _RPG_PRIMITIVES[key] = ([s[0] for s in spec], [v for s in spec for v in s[1:]], frozen)
    return _RPG_PRIMITIVES[key]


def _rpg_inputs(size: dict, device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    T, B, C, H, W = size["T"], size["B"], size["C"], size["H"], size["W"]
    c_sh = int(0.9 * C)
    groups = __import__("math").gcd(C, c_sh)
    x = torch.randn(T * B, C, H, W, generator=g)
    w_sh = torch.randn(c_sh, 5 * C // groups, 1, 1, generator=g) * (5 * C / groups) ** -0.5
    w_t = torch.randn(T, C - c_sh, C, 3, 3, generator=g) * (9 * C) ** -0.5
    for dev, dt in ((device, dtype), (device, torch.float64), ("cpu", torch.float64)):
        _rpg_primitives(C, dev, dt)  # the inputs' bank, and the float64 ones references are evaluated with
    return tuple(t.to(device, dtype) for t in (x, w_sh, torch.zeros(c_sh), w_t, torch.zeros(T, C - c_sh)))


def _rpg_call(fn):
    def call(x, w_sh, b_sh, w_t, b_t):
        kinds, params, frozen = _rpg_primitives(x.shape[1], x.device, x.dtype)
        groups = x.shape[1] * len(kinds) // w_sh.shape[1]
        return fn(x, kinds, params, frozen, w_sh, b_sh, w_t, b_t, stride=1, groups=groups)
    return call


CASES["routed_primitive_gather"] = BenchCase(
    op="routed_primitive_gather",
    sizes={"full": dict(T=3, B=8, C=64, H=72, W=96), "quick": dict(T=2, B=1, C=8, H=9, W=12)},
    make_inputs=_rpg_inputs,
    reference_fn=_rpg_call(reference.routed_primitive_gather),
    fused_fn=lambda backend: _rpg_call(lambda *a, **k: ops.routed_primitive_gather(*a, backend=backend, **k)),
    target="CPU fp32 fwd+bwd at full size (5 primitives): fused >= 2x reference and >= torch.compile(reference); "
           "peak memory <= 1/3 of the reference's",
)


# ---- cka (PDF): all-pairs debiased linear CKA of pooled decoder features, forward only ----
def _cka_inputs(size: dict, device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    # pooled ReLU features: non-negative with a per-feature mean, correlated across tasks
    common = torch.randn(1, size["n"], size["d"], generator=g)
    own = torch.randn(size["T"], size["n"], size["d"], generator=g)
    return ((0.5 * common + own).relu().to(device, dtype),)


CASES["cka"] = BenchCase(
    op="cka",
    sizes={"full": dict(T=5, n=800, d=2048), "quick": dict(T=3, n=40, d=16)},
    make_inputs=_cka_inputs,
    reference_fn=lambda x: reference.cka(x, debiased=True),
    fused_fn=lambda backend: (lambda x: ops.cka(x, debiased=True, backend=backend)),
    tf32_fn=lambda backend: (lambda x: ops.cka(x, debiased=True, backend=backend, allow_tf32=True)),
    target="CPU fp32, T=5 n=800 d=2048 (debiased): fused >= 2x reference",
    modes=("fwd",),
)
