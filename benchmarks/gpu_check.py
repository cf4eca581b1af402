"""The one-shot GPU check: everything a short GPU window must do, in one command, within a deadline.

Run from the repository root on a fresh GPU machine (``benchmarks/gpu_check.sh`` calls this):

  1. env        device, driver, CUDA, torch, Triton, Python versions and the commit -> env.json
  2. build      the extension in place for the present GPU's arch only -> build.log, info.json
  3. tests      pytest -m "cuda or triton" (parallel where pytest-xdist is installed) -> pytest.log, pytest.xml
  4. sanitizer  compute-sanitizer memcheck and racecheck over small CUDA runs of every op -> sanitizer-*.log
  5. bench      every op against the reference and torch.compile(reference), fp32 then bf16, and the
                memory-bound ops at a size several times the L2 cache -> bench_ops.jsonl (--bench-plan)
  6. profile    per op and backend: wall time against kernel time, and the costliest kernels -> profile.json
  7. networks   a training step of every method's network: fused, reference, compile(reference)
                -> bench_networks.jsonl
  8. summary    a one-screen summary -> summary.txt (printed last)

A rerun of part of it: --stages build tests bench, --test-paths, --bench-plan, --network-methods.

Every stage has a time cap and the whole run a deadline (``--deadline-s``): a stage gets what is left, and
the benchmark rows are written as they are measured, so a run cut short keeps what it measured. With
``--tarball PATH`` the results folder is packed after every stage. ``--dry-run`` runs the same stages on
the CPU at smoke-test sizes (no build, no sanitizer), so the plumbing is tested where there is no GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("env", "build", "tests", "sanitizer", "bench", "profile", "networks", "summary")
# Seconds each stage may take at most on a GPU (the deadline may leave less): sized so that one run fits a
# 10-minute window with the machine's start-up; the dry run's own caps are below.
GPU_CAPS = {"env": 20, "build": 150, "tests": 140, "sanitizer": 60, "bench": 130, "profile": 40, "networks": 70,
            "summary": 10}
DRY_CAPS = {"env": 30, "build": 5, "tests": 120, "sanitizer": 120, "bench": 240, "profile": 5, "networks": 240,
            "summary": 10}
MEMORY_BOUND = ("gated_residual", "sfa_apply", "ms_attention_mix")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


class Check:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.caps = DRY_CAPS if self.dry else GPU_CAPS
        self.start = time.monotonic()
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.status: dict[str, dict] = {}
        self.python = sys.executable
        self.env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        PYTHONUNBUFFERED="1")
        if self.dry:
            self.env.setdefault("TRITON_INTERPRET", "1")
        else:  # compiled graphs and kernels cached on disk: the warm-up's compiles serve the benchmarks
            self.env.update(TORCHINDUCTOR_FX_GRAPH_CACHE="1", TORCHINDUCTOR_AUTOGRAD_CACHE="1")

    # -- helpers -----------------------------------------------------------------------------------------
    def left(self) -> float:
        return self.args.deadline_s - (time.monotonic() - self.start)

    def budget(self, stage: str) -> float:
        return max(0.0, min(self.caps[stage], self.left() - self.caps["summary"]))

    def run(self, cmd, log: str, timeout: float, env=None, append=False) -> tuple[int | None, float]:
        """Runs ``cmd`` with its output in ``log``; (exit code or None if it ran past ``timeout``, seconds).
        Past the timeout the command gets SIGINT first (pytest then stops, prints its summary and writes its
        junit file; the benchmarks keep the rows already written), and is killed 20 s later."""
        t0 = time.monotonic()
        with open(self.out / log, "a" if append else "w") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n")
            f.flush()
            proc = subprocess.Popen(list(map(str, cmd)), cwd=ROOT, env=env or self.env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=max(timeout, 1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                f.write(f"\n[gpu_check] stopped after {timeout:.0f} s (time cap)\n")
                code = None
        return code, time.monotonic() - t0

    def record(self, stage: str, status: str, seconds: float, **extra) -> None:
        self.status[stage] = dict(status=status, seconds=round(seconds, 1), **extra)
        (self.out / "stages.json").write_text(json.dumps(self.status, indent=2))
        print(f"[gpu_check] {stage:<10} {status:<8} {seconds:6.1f} s  (left {self.left():.0f} s)", flush=True)
        if self.args.tarball:
            tmp = Path(self.args.tarball + ".tmp")
            with tarfile.open(tmp, "w:gz") as tar:
                tar.add(self.out, arcname=self.out.name)
            tmp.replace(self.args.tarball)

    # -- stages ------------------------------------------------------------------------------------------
    def stage_env(self) -> None:
        t0 = time.monotonic()
        probe = ("import json, platform, torch\n"
                 "d = {'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'python': platform.python_version(),"
                 " 'cuda_available': torch.cuda.is_available()}\n"
                 "try:\n import triton; d['triton'] = triton.__version__\nexcept ImportError: d['triton'] = None\n"
                 "if torch.cuda.is_available():\n"
                 " p = torch.cuda.get_device_properties(0)\n"
                 " d.update(device=p.name, capability=f'{p.major}.{p.minor}', sms=p.multi_processor_count,"
                 " memory_gib=round(p.total_memory / 2**30, 1), device_count=torch.cuda.device_count())\n"
                 "print(json.dumps(d))\n")
        info = json.loads(subprocess.run([self.python, "-c", probe], capture_output=True, text=True,
                                         check=True).stdout)
        info.update(platform=platform.platform(), cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    commit=self.args.commit or os.environ.get("MTL_OPS_COMMIT") or _git_commit(),
                    dry_run=self.dry)
        for tool, flag in (("nvidia-smi", None), ("nvcc", "--version"), ("compute-sanitizer", "--version")):
            path = shutil.which(tool)
            if path is None:
                info[tool] = None
                continue
            cmd = [path, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem",
                   "--format=csv,noheader"] if tool == "nvidia-smi" else [path, flag]
            try:
                info[tool] = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
            except (OSError, subprocess.SubprocessError) as e:
                info[tool] = f"failed: {e}"
        if not info.get("cuda_available") and not self.dry:
            raise SystemExit("gpu_check: no CUDA device is visible (use --dry-run to check the script on a CPU)")
        self.info = info
        (self.out / "env.json").write_text(json.dumps(info, indent=2))
        self.record("env", "ok", time.monotonic() - t0, device=info.get("device", "cpu"))

    def stage_build(self) -> None:
        if self.dry:
            self.record("build", "skipped", 0.0, reason="dry run: uses the installed build")
        else:
            env = dict(self.env, TORCH_CUDA_ARCH_LIST=self.info["capability"], FORCE_CUDA="1",
                       MAX_JOBS=str(os.cpu_count() or 4))
            code, secs = self.run([self.python, "setup.py", "build_ext", "--inplace"], "build.log",
                                  self.budget("build"), env=env)
            self.record("build", "ok" if code == 0 else "failed", secs, exit_code=code)
        probe = "import json, mtl_ops; print(json.dumps(mtl_ops.info(), default=str))"
        res = subprocess.run([self.python, "-c", probe], cwd=ROOT, env=self.env, capture_output=True, text=True)
        (self.out / "info.json").write_text(res.stdout if res.returncode == 0 else res.stderr)

    def bench_plan(self) -> list[tuple[list, list]]:
        """(op names, options) of each benchmark run, from --bench-plan items "dtype:size[:op,op,...]"
        (default: every op in fp32, the memory-bound ops at the GPU size in fp32, every op in bf16)."""
        if self.dry:  # two ops (one with a backward, one forward-only) exercise every code path
            return [(self.args.bench_ops or ["gated_residual", "cka"], ["--device", "cpu", "--quick", "--dtype", "fp32"])]
        plan = []
        for item in self.args.bench_plan:
            dtype, size, *names = item.split(":")
            ops = names[0].split(",") if names else list(self.args.bench_ops)
            if size == "gpu":
                ops = [o for o in ops or MEMORY_BOUND if o in MEMORY_BOUND]
            plan.append((ops, ["--device", "cuda", "--dtype", dtype] + (["--size", "gpu"] if size == "gpu" else [])))
        return plan

    def start_compile_warmup(self):
        """Fills torch.compile's on-disk caches (FX graphs, Triton kernels) for the benchmark stages in a
        background process while the tests run: compiling the references and networks is CPU work that
        would otherwise take most of the benchmark stages' GPU time. The benchmarks then compile from the
        cache. Only on a GPU; stopped when the benchmarks start."""
        if self.dry:
            return None
        bench = f"{self.python} -m mtl_ops.cli bench"
        once = "--providers 'compile(reference)' --once"
        runs = [f"{bench} {' '.join(ops)} {' '.join(options)} {once}" for ops, options in self.bench_plan()]
        methods = " ".join(self.args.network_methods)
        runs.insert(min(2, len(runs)), f"{bench} {methods} --networks --device cuda {once} --dtype fp32")
        script = "; ".join(runs)
        log = open(self.out / "compile-warmup.log", "w")
        return subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def stop_compile_warmup(self) -> None:
        proc = getattr(self, "warmup", None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            with open(self.out / "compile-warmup.log", "a") as f:
                f.write("\n[gpu_check] stopped: the benchmarks start\n")

    def stage_tests(self) -> None:
        self.warmup = self.start_compile_warmup()
        marker = "cuda" if self.dry else "cuda or triton"
        cmd = [self.python, "-m", "pytest", *self.args.test_paths, "-m", marker, "-q", "-rfE", "-p", "no:cacheprovider",
               f"--junitxml={self.out / 'pytest.xml'}"]
        if not self.dry and _has_module("xdist"):  # Triton and Inductor compile on the CPU: use its cores
            cmd += ["-n", str(max(1, min(12, (os.cpu_count() or 2) - 2)))]
        if _has_module("pytest_timeout"):
            cmd += ["--timeout", "150"]
        cmd += self.args.pytest_args
        code, secs = self.run(cmd, "pytest.log", self.budget("tests"))
        counts = junit_counts(self.out / "pytest.xml")
        ok = code in (0, 5) if self.dry else code == 0
        self.record("tests", "ok" if ok else ("timeout" if code is None else "failed"), secs, exit_code=code,
                    **counts)

    def stage_sanitizer(self) -> None:
        cases = [self.python, "benchmarks/gpu_sanitize_cases.py", "--backend"]
        sanitizer = shutil.which("compute-sanitizer")
        if self.dry:
            code, secs = self.run(cases + ["cpp"], "sanitizer-dryrun.log", self.budget("sanitizer"))
            self.record("sanitizer", "ok" if code == 0 else "failed", secs, exit_code=code,
                        reason="dry run: the cases on the cpp backend, no sanitizer")
            return
        if sanitizer is None:
            self.record("sanitizer", "skipped", 0.0, reason="compute-sanitizer is not on PATH")
            return
        results, total = {}, 0.0
        # Without PyTorch's caching allocator every tensor is its own allocation, so memcheck sees an
        # out-of-bounds access past a tensor's end; only the package's kernels are checked (the library
        # kernels it calls, cuBLAS and ATen's, are not ours to fix).
        env = dict(self.env, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
        for i, tool in enumerate(("memcheck", "racecheck")):
            cmd = [sanitizer, "--tool", tool, "--error-exitcode", "99", "--print-limit", "20",
                   "--kernel-name", "kns=mtl_ops"] + cases + ["cuda"]
            share = (self.budget("sanitizer") - total) / (2 - i)  # what is left of the stage, split between the tools
            code, secs = self.run(cmd, f"sanitizer-{tool}.log", share, env=env)
            total += secs
            text = (self.out / f"sanitizer-{tool}.log").read_text(errors="replace")
            # memcheck ends with "ERROR SUMMARY: n errors", racecheck with "RACECHECK SUMMARY: ... (n errors, ...)"
            summary = re.findall(r"ERROR SUMMARY: (\d+) error|SUMMARY: .*\((\d+) errors?", text)
            results[tool] = dict(exit_code=code, errors=int("".join(summary[-1])) if summary else None)
        ok = all(r["exit_code"] == 0 and r["errors"] == 0 for r in results.values())
        self.record("sanitizer", "ok" if ok else "failed", total, **results)

    def stage_bench(self) -> None:
        self.stop_compile_warmup()
        t0 = time.monotonic()
        codes = []
        for names, options in self.bench_plan():
            if self.budget("bench") - (time.monotonic() - t0) < 10:
                codes.append("no time")
                continue
            cap = self.caps["bench"] - (time.monotonic() - t0)
            # the op names first: --dtype takes several values and would swallow them
            cmd = [self.python, "-m", "mtl_ops.cli", "bench"] + names + ["--jsonl", self.out / "bench_ops.jsonl"] + \
                options + ([] if self.dry else ["--min-seconds", "0.2"])
            code, _ = self.run(cmd, "bench_ops.log", min(cap, self.budget("bench")), append=True)
            codes.append(code)
        ok = all(c == 0 for c in codes)
        self.record("bench", "ok" if ok else "partial", time.monotonic() - t0, runs=codes)

    def stage_profile(self) -> None:
        if self.dry:
            self.record("profile", "skipped", 0.0, reason="dry run: the profile needs CUDA kernels")
            return
        cmd = [self.python, "benchmarks/gpu_profile.py", "--out", self.out / "profile.json"]
        code, secs = self.run(cmd, "profile.log", self.budget("profile"))
        self.record("profile", "ok" if code == 0 else ("timeout" if code is None else "failed"), secs, exit_code=code)

    def stage_networks(self) -> None:
        device = "cpu" if self.dry else "cuda"
        cmd = [self.python, "-m", "mtl_ops.cli", "bench"]
        if self.dry:  # one network, compiled too, at the smoke-test size: the CPU compiles slowly
            cmd += ["shared", "--quick"]
        else:
            cmd += self.args.network_methods
        cmd += ["--networks", "--device", device, "--dtype", "fp32", "--jsonl", self.out / "bench_networks.jsonl"]
        if self.args.network_providers:
            cmd += ["--providers"] + self.args.network_providers
        code, secs = self.run(cmd, "bench_networks.log", self.budget("networks"))
        self.record("networks", "ok" if code == 0 else ("timeout" if code is None else "failed"), secs,
                    exit_code=code)

    def stage_summary(self) -> None:
        text = summarise(self.out, self.status)
        (self.out / "summary.txt").write_text(text)
        self.record("summary", "ok", 0.0)
        print(text, flush=True)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def junit_counts(path: Path) -> dict:
    """Counts and failing test ids (with the first line of the message) from a junit XML file."""
    if not path.exists():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return {"junit": "unreadable (the run was stopped?)"}
    counts = dict(passed=0, failed=0, errors=0, skipped=0)
    failures = []
    for case in root.iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                msg = (child.get("message") or child.text or "").strip().splitlines()
                failures.append(f"{case.get('classname')}::{case.get('name')}: {msg[0][:160] if msg else ''}")
            elif child.tag == "skipped":
                outcome = "skipped"
        counts[outcome] += 1
    return dict(counts, failures=failures)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def summarise(out: Path, status: dict) -> str:
    lines = ["== gpu_check summary =="]
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    lines.append(f"device: {env.get('device', 'cpu')}  driver/smi: {env.get('nvidia-smi')}  torch {env.get('torch')} "
                 f"(CUDA {env.get('torch_cuda')})  triton {env.get('triton')}  python {env.get('python')}  "
                 f"commit {str(env.get('commit'))[:12]}")
    for stage, s in status.items():
        extra = {k: v for k, v in s.items() if k not in ("status", "seconds", "failures")}
        lines.append(f"  {stage:<10} {s['status']:<8} {s['seconds']:6.1f} s  {json.dumps(extra)[:150]}")
    fails = status.get("tests", {}).get("failures") or []
    if fails:
        lines.append(f"failing tests ({len(fails)}):")
        lines += [f"  {f}" for f in fails[:25]]
        if len(fails) > 25:
            lines.append(f"  ... and {len(fails) - 25} more (pytest.log)")
    rows = _read_jsonl(out / "bench_ops.jsonl")
    if rows:
        lines.append("ops (time ms; ratio to reference / to compile(reference); achieved bandwidth / copy bandwidth):")
        groups: dict = {}
        for r in rows:
            groups.setdefault((r["op"], r.get("size", "full"), r["dtype"], r["mode"]), []).append(r)
        for (op, size, dtype, mode), rs in groups.items():
            cells = []
            for r in rs:
                if r.get("error"):
                    cells.append(f"{r['provider']}: ERROR")
                    continue
                cell = f"{r['provider']} {r['time_ms']:.3g}"
                if r["provider"] not in ("reference",):
                    cell += f" ({r['speedup_vs_reference']:.2f}x" + (
                        f", {r['speedup_vs_compile']:.2f}x c" if r.get("speedup_vs_compile") else "") + ")"
                if r.get("bandwidth_fraction") is not None and r["provider"] in ("cuda", "triton"):
                    cell += f" BW {r['bandwidth_fraction']:.0%}"
                cells.append(cell)
            lines.append(f"  {op:<23} {size:<4} {dtype:<8} {mode:<7} " + " | ".join(cells))
    rows = _read_jsonl(out / "bench_networks.jsonl")
    if rows:
        lines.append("networks (training step ms; ratio to the reference ops):")
        by_method: dict = {}
        for r in rows:
            by_method.setdefault(r["method"], []).append(r)
        for method, rs in by_method.items():
            cells = [f"{r['provider']}: ERROR" if r.get("error") else
                     f"{r['provider']} {r['step_ms']:.1f}" + (
                         f" ({r['speedup_vs_reference']:.2f}x)" if r["provider"] != "reference" and
                         r.get("speedup_vs_reference") else "") for r in rs]
            lines.append(f"  {method:<12} " + " | ".join(cells))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run the stages on the CPU at smoke-test sizes")
    parser.add_argument("--out", help="results folder (default benchmarks/results/<device>/)")
    parser.add_argument("--tarball", help="pack the results folder into this .tar.gz after every stage")
    parser.add_argument("--deadline-s", type=float, default=500.0, help="the whole run's time (default 500)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--commit", help="the commit being checked (default: $MTL_OPS_COMMIT or git)")
    parser.add_argument("--bench-ops", nargs="*", default=[], help="ops to benchmark (default: all)")
    parser.add_argument("--bench-plan", nargs="+", default=["fp32:full", "fp32:gpu", "bf16:full"],
                        metavar="DTYPE:SIZE[:OPS]", help="benchmark runs in order (default: fp32:full fp32:gpu "
                                                          "bf16:full; OPS a comma-separated list)")
    parser.add_argument("--network-methods", nargs="*", default=[], help="methods whose networks are timed "
                                                                          "(default: all)")
    parser.add_argument("--network-providers", nargs="*", default=[],
                        help="network providers (reference, fused, compile(reference); default: all)")
    parser.add_argument("--test-paths", nargs="+", default=["tests"], help="what pytest runs (default: tests)")
    parser.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[],
                        help="extra pytest arguments (last on the line), e.g. -k 'rpg or ctal'")
    args = parser.parse_args(argv)
    if args.out is None:
        name = "cpu-dry-run" if args.dry_run else None
        if name is None:
            probe = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
            name = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        args.out = str(ROOT / "benchmarks" / "results" / slug(name))
    check = Check(args)
    stages = ["env"] + [s for s in args.stages if s != "env"]  # env first: the others read it
    if "summary" not in stages:
        stages.append("summary")
    for stage in stages:
        if stage in ("bench", "networks", "summary"):
            check.stop_compile_warmup()  # never time anything beside it
        try:
            getattr(check, f"stage_{stage}")()
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001 - one stage failing must not lose the others' results
            check.record(stage, "crashed", 0.0, error=f"{type(e).__name__}: {e}"[:300])
    failed = [s for s, v in check.status.items() if v["status"] in ("failed", "crashed", "timeout")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
