"""The machine a benchmark ran on: what it is, and how busy other processes kept it."""
from __future__ import annotations

import os
import platform

import torch


def _machine_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


class BackgroundProbe:
    """`with BackgroundProbe() as probe:` - afterwards `probe.share` is the share of the
    machine's CPU time other processes used during the block (None where it cannot be read)."""

    def __enter__(self):
        self.j0, self.t0 = _machine_jiffies(), os.times()
        return self

    def __exit__(self, *exc):
        j1, t1 = _machine_jiffies(), os.times()
        self.share = None
        if self.j0 is None or j1 is None or j1[1] == self.j0[1]:
            return
        hz = os.sysconf("SC_CLK_TCK")
        busy = (j1[0] - self.j0[0]) / hz
        total = (j1[1] - self.j0[1]) / hz
        mine = (t1.user - self.t0.user) + (t1.system - self.t0.system)
        self.share = max(0.0, busy - mine) / max(total, 1e-9)


def physical_cores() -> int:
    """CPU cores this process may run on, counting hyper-threads of one core once."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:
        logical = os.cpu_count() or 1
    try:
        with open("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list", encoding="ascii") as f:
            siblings = sum(
                int(b) - int(a) + 1 if "-" in part else 1
                for part in f.read().strip().split(",")
                for a, _, b in [part.partition("-")]
            )
    except (OSError, ValueError):
        siblings = 1
    return max(1, logical // max(1, siblings))


def choose_threads(ranks_per_machine: int = 1, probe_seconds: float = 0.3) -> tuple[int, str]:
    """torch threads for CPU timing: this process's share of the physical cores, minus those
    other processes keep busy (measured for `probe_seconds`). Oversubscribed OpenMP threads
    spin against each other on a shared machine: a tiny forward measured 3-6 ms on one
    thread and up to 1 s on two. Returns (threads, why)."""
    import time

    cores = physical_cores()
    with BackgroundProbe() as probe:
        time.sleep(probe_seconds)
    busy = (probe.share or 0.0) * (os.cpu_count() or cores)
    free = max(1, round(cores - busy))
    threads = max(1, free // max(1, ranks_per_machine))
    why = f"{cores} physical cores, {busy:.1f} busy with other processes"
    if ranks_per_machine > 1:
        why += f", {ranks_per_machine} ranks on this machine"
    return threads, why


def machine_info() -> dict:
    """Platform, Python, CPU model and count, memory and GPU, for the JSON record."""
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": platform.processor() or None,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info["mem_total_bytes"] = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
