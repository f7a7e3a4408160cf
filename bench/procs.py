"""What the benchmark reads about processes and the machine, from /proc only.

How this works: a system under test may be one process (our daemon with the relay off, Sippy) or a
tree (our daemon and its embedded relay, Kamailio's main process and its workers). `Tree(pid)`
sums utime + stime over the root and every live descendant, plus the CPU of children the root
has already reaped (cutime + cstime), so a sample taken before and after a step gives the CPU the
whole system spent on it. RSS and open descriptors are read the same way. `machine_busy()` is the
busy time of all cores (everything but idle and iowait), for telling how much of a step's CPU was
neither ours nor the system's under test (`foreign`: other work on a shared machine).
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()  # fields from 3 (state) on; the name may hold spaces


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(name))[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(name))
    return out


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


@dataclass
class Tree:
    pid: int

    def pids(self) -> list[int]:
        return descendants(self.pid)

    def cpu_s(self) -> float:
        """utime + stime of the tree, and of the children the root has reaped (cutime + cstime)."""
        total = 0
        for p in self.pids():
            try:
                f = _stat_fields(p)
            except OSError:
                continue
            total += int(f[11]) + int(f[12])  # utime, stime (fields 14 and 15 of stat)
            if p == self.pid:
                total += int(f[13]) + int(f[14])  # cutime, cstime
        return total / CLK_TCK

    def rss_kb(self) -> int:
        return sum(rss_kb(p) for p in self.pids())

    def fds(self) -> int:
        return sum(fd_count(p) for p in self.pids())


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def machine_busy_s() -> float:
    """Busy CPU seconds of all cores since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def machine_info() -> dict[str, str]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())

    def version(cmd: list[str]) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"
        text = (done.stdout + done.stderr).strip().splitlines()
        return text[0].strip() if text else "?"

    return {
        "cpu": f"{os.cpu_count()} x {model}",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sipp": version(["sipp", "-v"]).replace("SIPp ", ""),
        "kamailio": version(["kamailio", "-v"]),
        "load average at start": load,
    }
