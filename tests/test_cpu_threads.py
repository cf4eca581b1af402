"""The automatic CPU thread count: busy CPUs measured from /proc/stat, the load average only as a fallback."""
import os

import pytest
import torch

from mtl_ops.train.cpu_threads import busy_cpus, choose_num_threads, cpu_times


def test_cpu_times_reads_the_aggregate_line_and_counts_the_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 1 5 100 4 2 3 0 7 0\ncpu0 5 0 2 50 2 1 1 0 0 0\ncpu1 5 1 3 50 2 1 2 0 0 0\n"
                    "intr 12345\nctxt 99\n")
    # busy = user + nice + system + irq + softirq + steal; idle and iowait are not; guest is inside user
    assert cpu_times(str(stat)) == (21, 125, 2)
    assert cpu_times(str(tmp_path / "missing")) is None
    (tmp_path / "bad").write_text("cpu  x y\n")
    assert cpu_times(str(tmp_path / "bad")) is None


def test_busy_cpus_is_the_busy_share_times_the_cpus():
    samples = iter([(100, 200, 2), (175, 300, 2)])  # 75 of 100 ticks busy on 2 CPUs
    assert busy_cpus(0.0, read=lambda: next(samples)) == pytest.approx(1.5)
    assert busy_cpus(0.0, read=lambda: None) is None
    frozen = iter([(100, 200, 2), (100, 200, 2)])  # no tick between the samples: cannot tell
    assert busy_cpus(0.0, read=lambda: next(frozen)) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux's /proc/stat")
def test_busy_cpus_measures_this_machine():
    busy = busy_cpus(0.05)
    assert busy is not None and 0.0 <= busy <= cpu_times()[2] + 1e-9


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

