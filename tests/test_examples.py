"""The example programs in python/ run (tiny settings), so they do not rot."""
import runpy
import sys
from pathlib import Path

from train_helpers import one_thread  # noqa: F401  (autouse: one intra-op thread on the busy 2-core machine)

ROOT = Path(__file__).resolve().parents[1]


def test_adashare_own_loop(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["adashare_own_loop.py", "--steps", "4", "--size", "24", "32", "--width", "8",
                                      "--images", "16", "--cache-dir", str(tmp_path)])
    runpy.run_path(str(ROOT / "python" / "adashare_own_loop.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "mIoU" in out and "abs_err" in out and "semseg" in out
    assert "learned execute probabilities" in out and "hard policy sampled from them" in out


def test_adashare_policy_trace(tmp_path, monkeypatch, capsys):
    import json

    config = {"n_train": 16, "n_val": 8, "size": [32, 40], "width": 8, "batch_size": 8, "num_threads": 1,
              "cache_dir": str(tmp_path)}
    schedule = {"warmup_epochs": 0, "search_cycles": 2, "weight_steps": 1, "policy_steps": 2, "retrain_epochs": 1}
    monkeypatch.setattr(sys, "argv", ["adashare_policy_trace.py", "--config", json.dumps(config),
                                      "--schedule-options", json.dumps(schedule), "--json", str(tmp_path / "t.json")])
    runpy.run_path(str(ROOT / "python" / "adashare_policy_trace.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "4 policy steps" in out and "learned execute probabilities" in out
    summary = json.loads((tmp_path / "t.json").read_text())
    # the curriculum unlocked the last block in cycle 1 and the last two in cycle 2; the task losses reached them
    assert all(g["blocks_trained"] == 2 and g["task_losses"] > 0 for g in summary["gradients"].values())


def test_pdf_own_loop(tmp_path, monkeypatch, capsys):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions on a busy 2-core machine: two threads spin-wait each other
    monkeypatch.setattr(sys, "argv", ["x"])
    try:
        _run_pdf_own_loop(tmp_path, monkeypatch, capsys)
    finally:
        torch.set_num_threads(threads)


def _run_pdf_own_loop(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pdf_own_loop.py", "--steps", "3", "--size", "32", "40", "--width", "8",
                                      "--images", "16", "--cache-dir", str(tmp_path)])
    runpy.run_path(str(ROOT / "python" / "pdf_own_loop.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "groups:" in out and "delta_m of the fused network" in out and "mIoU" in out
