"""How many intra-op threads a run on the CPU uses when the config does not say (``num_threads=None``).

On a machine that other work already keeps busy, several intra-op threads spin-wait on each other and small
convolutions run many times slower than on one thread, so a run then takes one. Whether the machine is busy is
measured at the start (:func:`busy_cpus`: psutil's system-wide CPU use over a fraction of a second), not read
from the 1-minute load average: right after a build, that average still counted the compiler's processes, and
the first README command's demo, on an otherwise idle 2-core machine, ran on one thread (3 min 31 s, where two
threads took 2 min 40 s). Without psutil (installed by the ``[train]`` extra) the load average is the fallback.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

#: how long busy_cpus watches (a run that sets its threads skips it)
BUSY_SAMPLE_SECONDS = 0.1


def busy_cpus(seconds: float = BUSY_SAMPLE_SECONDS) -> Optional[float]:
    """How many CPUs other work keeps busy now: psutil's system-wide CPU use over ``seconds``, while this
    process sleeps, times the number of CPUs; None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.cpu_percent(interval=seconds) / 100 * (psutil.cpu_count() or 1)


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
