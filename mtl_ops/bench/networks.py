"""Whole-network training steps per method: the network on the fused ops, on the reference ops, and
``torch.compile`` of the network on the reference ops (what a user would otherwise run), side by side in
one process on the same batch.

A step is forward, a loss over every task's prediction, backward and an optimiser step (SGD with learning
rate 0, so every provider times the same weights). AdaShare runs its policy-learning mode (soft gates,
the mode that runs the fused ``gated_residual``); the other methods run their training forward.
"""
from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from typing import Callable

import torch

from .. import __version__
from ..info import source_commit
from .runner import device_name, time_call

#: tasks of the NYUv2 setting the methods' papers report
TASKS = {"semseg": 13, "depth": 1, "normals": 3}
#: the methods whose training step runs a fused op, first (the others time the same network twice)
ORDER = ("adashare", "ctal", "medusa", "etr_nlp", "shared", "pdf", "single_task")
SIZES = {
    "full": dict(batch=8, height=288, width=384, backbone_width=64),  # NYUv2 crops, ResNet-18 at full width
    "quick": dict(batch=2, height=32, width=48, backbone_width=8),
}


@contextmanager
def _backend(value: str | None):
    old = os.environ.pop("MTL_OPS_BACKEND", None)
    if value is not None:
        os.environ["MTL_OPS_BACKEND"] = value
    try:
        yield
    finally:
        os.environ.pop("MTL_OPS_BACKEND", None)
        if old is not None:
            os.environ["MTL_OPS_BACKEND"] = old


def build_network(method: str, size: dict, device: torch.device) -> torch.nn.Module:
    from ..train.methods import build_model, get_method

    options = {"width": size["backbone_width"]}
    if get_method(method).needs_image_size:
        options["image_size"] = (size["height"], size["width"])
    model = build_model(method, TASKS, "resnet18", **options).to(device).train()
    if hasattr(model, "set_mode"):
        model.set_mode("soft")
    return model


def make_step(model: torch.nn.Module, forward: Callable, images: torch.Tensor, dtype: torch.dtype):
    """One training step of ``forward`` (the model or its compiled form) under autocast to ``dtype``
    (none for fp32)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    autocast = dtype != torch.float32

    def step():
        with torch.autocast(images.device.type, dtype=dtype, enabled=autocast):
            preds = forward(images)
        if isinstance(preds, tuple):
            preds = preds[0]
        loss = sum(p.float().square().mean() for p in preds.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def network_rows(methods=None, device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                 size: str = "full", only: tuple | None = None,
                 on_row: Callable[[dict], None] | None = None, **timing) -> list[dict]:
    """Rows (method, provider, step time, ratio to the reference step) for each method; ``only``: the
    providers to run ("reference", "fused", "compile(reference)"; default all)."""
    run = lambda name: only is None or name in only  # noqa: E731
    from ..train.methods import available_methods

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    registered = available_methods()
    methods = list(methods) if methods else [m for m in ORDER if m in registered] + \
        [m for m in registered if m not in ORDER]
    s = SIZES[size]
    common = dict(size=size, shape=f"B={s['batch']} {s['height']}x{s['width']} resnet18 width {s['backbone_width']}",
                  dtype=str(dtype).replace("torch.", ""), device=device_name(device), torch=str(torch.__version__),
                  mtl_ops=__version__, commit=source_commit(),
                  timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    rows = []
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(s["batch"], 3, s["height"], s["width"], generator=gen).to(device)
    ref_ms: dict = {}

    def measure(method, name, backend, model, forward):
        row = dict(common, method=method, provider=name)
        try:
            with _backend(backend):
                seconds = time_call(make_step(model, forward, images, dtype), device, **timing)
        except Exception as e:  # noqa: BLE001 - recorded in the row; the other providers still run
            row.update(step_ms=None, speedup_vs_reference=None, error=f"{type(e).__name__}: {e}"[:500])
        else:
            if name == "reference":
                ref_ms[method] = seconds * 1e3
            ref = ref_ms.get(method)
            row.update(step_ms=seconds * 1e3, speedup_vs_reference=ref / (seconds * 1e3) if ref else None)
        rows.append(row)
        if on_row is not None:
            on_row(row)

    # Every method's eager rows first, then the compiled ones (compiling a network takes far longer than
    # timing it: a run with a deadline gets every eager comparison before any compile time is spent).
    for method in methods:
        model = build_network(method, s, device)
        for name, backend in (("reference", "reference"), ("fused", None)):
            if run(name):
                measure(method, name, backend, model, model)
        del model
    if run("compile(reference)"):
        for method in methods:
            model = build_network(method, s, device)
            measure(method, "compile(reference)", "reference", model, torch.compile(model))
            del model
            torch._dynamo.reset()
    return rows


def format_network_table(rows: list[dict]) -> str:
    lines = [f"{'method':<12} {'dtype':<9} {'provider':<20} {'step ms':>10} {'vs ref':>8}"]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['method']:<12} {r['dtype']:<9} {r['provider']:<20} error: {r['error'][:70]}")
            continue
        ratio = "-" if r["speedup_vs_reference"] is None else f"{r['speedup_vs_reference']:.2f}x"
        lines.append(f"{r['method']:<12} {r['dtype']:<9} {r['provider']:<20} {r['step_ms']:>10.2f} {ratio:>8}")
    return "\n".join(lines)
