"""How many threads torch computes with. torch's default is every core of the machine, which on a
shared or container-limited machine oversubscribes the CPUs given to this process and runs far
slower than fewer threads; mixprec uses the CPUs it may actually use (affinity and cgroup quota)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch


def available_cpus() -> tuple[int, str]:
    """(CPUs this process may use, where that number comes from)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    why = "the CPUs this process may run on"
    try:  # cgroup v2 quota, e.g. "200000 100000" = 2 CPUs
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max" and int(quota) > 0:
            limit = max(1, math.floor(int(quota) / int(period)))
            if limit < cpus:
                cpus, why = limit, "the CPU quota of this container"
    except (OSError, ValueError):
        pass
    return cpus, why


def choose_threads() -> tuple[int, str]:
    """Set torch's thread count (unless OMP_NUM_THREADS or MIXPREC_THREADS says it) and say why."""
    ignored = ""
    for name in ("MIXPREC_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            torch.set_num_threads(int(value))
            return int(value), f"{name}={value}"
        if value and not ignored:  # a typo is said, not silently replaced by the default
            ignored = f"; {name}={value!r} ignored: it must be a positive whole number"
    cpus, why = available_cpus()
    torch.set_num_threads(cpus)
    return cpus, f"{why}; set MIXPREC_THREADS to change{ignored}"


def threads_from_environment() -> None:
    """torch's thread count from MIXPREC_THREADS where it is set (a positive whole number): imported in Python,
    mixprec honours it as the command line does; unset, torch keeps its own default there (the command line
    chooses the CPUs the process may use, choose_threads)."""
    value = os.environ.get("MIXPREC_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        torch.set_num_threads(int(value))
