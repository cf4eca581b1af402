"""How many intra-op threads a run on the CPU uses when the config does not say (``num_threads=None``).

On a machine that other work already keeps busy, several intra-op threads spin-wait on each other and small
convolutions run many times slower than on one thread, so a run then takes one. Whether the machine is busy is
measured at the start (:func:`busy_cpus`: the CPUs' busy time over a fraction of a second, from
``/proc/stat``), not read from the 1-minute load average: right after a build, that average still counted the
compiler's processes, and the first README command's demo, on an otherwise idle 2-core machine, ran on one
thread (3 min 31 s, where two threads took 2 min 40 s). Without ``/proc/stat`` (not Linux) the load average
is the fallback.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional, Tuple

import torch

#: how long busy_cpus watches: ten of /proc/stat's 10 ms units per CPU (a run that sets its threads skips it)
BUSY_SAMPLE_SECONDS = 0.1


def cpu_times(path: str = "/proc/stat") -> Optional[Tuple[int, int, int]]:
    """(busy, total) clock ticks of all CPUs together and the number of CPUs, from ``path``'s ``cpu`` lines;
    None where it cannot be read."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
        fields = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError, IndexError):
        return None
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    total = sum(fields)
    return total - fields[3] - (fields[4] if len(fields) > 4 else 0), total, max(cpus, 1)


def busy_cpus(seconds: float = BUSY_SAMPLE_SECONDS,
              read: Callable[[], Optional[Tuple[int, int, int]]] = cpu_times) -> Optional[float]:
    """How many CPUs other work keeps busy now: the busy share of the CPUs' time over ``seconds`` while this
    process sleeps, times the number of CPUs; None where ``/proc/stat`` cannot be read or did not advance."""
    first = read()
    if first is None:
        return None
    time.sleep(seconds)
    second = read()
    if second is None or second[1] <= first[1]:
        return None
    return (second[0] - first[0]) / (second[1] - first[1]) * second[2]


def choose_num_threads(requested: Optional[int], busy: Callable[[], Optional[float]] = busy_cpus) -> int:
    """``requested``, else: 1 thread when other work keeps all but half a CPU busy (``busy()`` CPUs; where it
    cannot tell, when the 1-minute load average is at least the number of cores), otherwise torch's default."""
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    in_use = busy()
    if in_use is not None:
        return 1 if in_use >= cores - 0.5 else torch.get_num_threads()
    try:
        loaded = os.getloadavg()[0] >= cores
    except OSError:
        loaded = False
    return 1 if loaded else torch.get_num_threads()
