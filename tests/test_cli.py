"""The mtl-ops command: info and bench (tiny sizes; timings are not asserted)."""
import json
import subprocess
import sys

import pytest

from mtl_ops.cli import main


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "gated_residual" in report["ops"]["cpu"]


def test_bench_quick_table_and_json(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["bench", "gated_residual", "--quick", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "compile(reference)" in table and "vs ref" in table
    rows = json.loads(out.read_text())
    providers = {r["provider"] for r in rows}
    assert {"reference", "compile(reference)", "cpp"} <= providers
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    for key in ("op", "provider", "shape", "dtype", "device", "torch", "commit", "time_ms"):
        assert key in rows[0]
    assert all(r["time_ms"] > 0 for r in rows)


def test_bench_unknown_op(capsys):
    assert main(["bench", "no_such_op"]) == 2
    assert "unknown op(s) ['no_such_op']" in capsys.readouterr().err


def test_bench_bad_dtype(capsys):
    assert main(["bench", "gated_residual", "--dtype", "int8"]) == 2
    assert "--dtype must be one of" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "mtl_ops.cli", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "gated_residual" in out.stdout
