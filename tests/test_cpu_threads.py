"""The automatic CPU thread count: busy CPUs measured with psutil, the load average only as a fallback."""
import os
import sys

import psutil
import pytest
import torch

from mtl_ops.train.cpu_threads import busy_cpus, choose_num_threads


def test_busy_cpus_is_psutils_share_times_the_cpus(monkeypatch):
    seen = {}

    def cpu_percent(interval):
        seen["interval"] = interval
        return 75.0

    monkeypatch.setattr(psutil, "cpu_percent", cpu_percent)
    monkeypatch.setattr(psutil, "cpu_count", lambda: 2)
    assert busy_cpus(0.05) == pytest.approx(1.5) and seen["interval"] == 0.05  # 75% of 2 CPUs, over the window


def test_busy_cpus_without_psutil(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    assert busy_cpus(0.0) is None


def test_busy_cpus_measures_this_machine():
    busy = busy_cpus(0.05)
    assert busy is not None and 0.0 <= busy <= (psutil.cpu_count() or 1) + 1e-9


def test_choose_num_threads(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    default = torch.get_num_threads()
    assert choose_num_threads(3, busy=lambda: 2.0) == 3                    # asked for: as asked
    assert choose_num_threads(None, busy=lambda: 1.6) == 1                 # other work fills the CPUs
    assert choose_num_threads(None, busy=lambda: 0.3) == default           # idle, whatever the load average
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    assert choose_num_threads(None, busy=lambda: 0.3) == default
    assert choose_num_threads(None, busy=lambda: None) == 1                # cannot measure: the load average
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert choose_num_threads(None, busy=lambda: None) == default
