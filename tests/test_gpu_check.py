"""The one-shot GPU check's CPU dry run: every stage runs (no build, no sanitizer) and writes its results,
so that the script a short GPU window depends on is known to work before the window opens."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "results"
    tarball = tmp_path / "results.tgz"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                           "--tarball", str(tarball)], capture_output=True, text=True, timeout=600,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["env", "build", "tests", "sanitizer", "bench", "profile", "networks", "summary"]
    assert all(s["status"] in ("ok", "skipped") for s in stages.values()), stages
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] and env["dry_run"] is True
    ops = [json.loads(line) for line in (out / "bench_ops.jsonl").read_text().splitlines()]
    assert {r["op"] for r in ops} == {"gated_residual", "cka"}
    assert {r["provider"] for r in ops} >= {"reference", "compile(reference)", "cpp"}
    for r in ops:
        assert r["time_ms"] > 0 and r["min_bytes"] > 0 and "speedup_vs_compile" in r, r
    nets = [json.loads(line) for line in (out / "bench_networks.jsonl").read_text().splitlines()]
    assert [r["provider"] for r in nets] == ["reference", "fused", "compile(reference)"]
    assert all(r["step_ms"] > 0 for r in nets), nets
    summary = (out / "summary.txt").read_text()
    assert "gpu_check summary" in summary and "networks" in summary and "gated_residual" in summary
    assert tarball.exists() and tarball.stat().st_size > 0
