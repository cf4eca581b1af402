"""What was built, what runs here, and why the rest does not (``mtl_ops.info()`` / ``mtl-ops info``)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from . import __version__
from ._loader import BUILD_INFO, LIBRARIES
from .backends import backend_table
from .triton import interpret_enabled as triton_interpret_enabled


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def source_commit() -> str | None:
    """The commit measured: $MTL_OPS_COMMIT where set (a copy of the tree without .git, as on a lent GPU
    machine), else git's HEAD."""
    if os.environ.get("MTL_OPS_COMMIT"):
        return os.environ["MTL_OPS_COMMIT"][:12]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=__file__.rsplit("/", 2)[0])
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name where Linux gives it (``/proc/cpuinfo``), else the platform's processor or machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """What a measured time on the CPU depends on: the CPU model, its cores, torch's intra-op threads and the
    load average of other work at the time of the call."""
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads; load average (1 / 5 / 15 min): {load}")


def collect() -> dict:
    """The report as a dict: versions, devices, build metadata, libraries and per-op backend availability."""
    devices = ["cpu", "cuda"]
    return {
        "mtl_ops": __version__,
        "torch": str(torch.__version__),
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "triton_interpret": triton_interpret_enabled(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "build": BUILD_INFO,
        "libraries": {k: {"loaded": v.loaded, "detail": v.reason} for k, v in LIBRARIES.items()},
        "ops": {dev: backend_table(dev) for dev in devices},
    }


def format_report(report: dict) -> str:
    build = report["build"] or {}
    lines = [
        f"mtl_ops {report['mtl_ops']}  torch {report['torch']} (CUDA {report['torch_cuda']})  "
        f"triton {report['triton']}  python {report['python']}",
        f"devices: cpu ({report['cpu']})" + (f", cuda ({report['cuda_device']})" if report["cuda_device"] else
                                             ", no CUDA device"),
        f"TRITON_INTERPRET: {'on' if report['triton_interpret'] else 'off'}",
        "build: " + (f"against torch {build.get('torch_version')}, compiled {', '.join(build.get('backends_compiled', []))}"
                     f", CUDA archs {build.get('cuda_archs')}" if build else "no build metadata (not compiled)"),
    ]
    for name, lib in report["libraries"].items():
        lines.append(f"library {name}: {'loaded from ' if lib['loaded'] else 'NOT loaded: '}{lib['detail']}")
    for device, table in report["ops"].items():
        lines.append(f"ops on {device} tensors:")
        for op, backends in table.items():
            for backend, reason in backends.items():
                lines.append(f"  {op:<22} {backend:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    return "\n".join(lines)


def info() -> dict:
    """Prints the report and returns it as a dict."""
    report = collect()
    print(format_report(report))
    return report
