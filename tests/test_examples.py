"""The example programs in python/ run (tiny settings), so they do not rot."""
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_adashare_own_loop(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["adashare_own_loop.py", "--steps", "4", "--size", "24", "32", "--width", "8",
                                      "--images", "16", "--cache-dir", str(tmp_path)])
    runpy.run_path(str(ROOT / "python" / "adashare_own_loop.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "mIoU" in out and "abs_err" in out and "semseg" in out


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
