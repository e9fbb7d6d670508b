"""Machine description and per-process CPU accounting from ``/proc`` (Linux only).

CPU time is read as clock ticks (utime + stime) so that the hub's share of the machine can be
reported next to the load client's own share: on a 2-core machine the client competes with the
server, and the numbers mean little without knowing how much of the CPU each one had.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, ppid, cpu ticks) of one process, or None when it is gone or unreadable."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces: split after the last ')'.
    comm = raw[raw.index("(") + 1: raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    return comm, int(fields[1]), int(fields[11]) + int(fields[12])


Stats = dict[int, tuple[str, int, int]]  # pid -> (comm, ppid, cpu ticks)


def all_stats() -> Stats:
    """Every live process's (comm, ppid, cpu ticks): one pass over /proc, which the
    functions below take instead of each making their own."""
    out = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                out[int(entry.name)] = st
    return out


def tree_cpu_seconds(root: int, stats: Stats | None = None) -> float:
    """CPU seconds used so far by ``root`` and all its live descendants (in ``stats``, or
    read now)."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, (_comm, ppid, _ticks) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][2]
        todo.extend(children.get(pid, ()))
    return total / _TICK


def named_cpu_ticks(comm: str, stats: Stats | None = None) -> dict[int, int]:
    """CPU ticks used so far by each live process called ``comm`` (e.g. postgres), by pid (in
    ``stats``, or read now)."""
    return {pid: t for pid, (c, _p, t) in (all_stats() if stats is None else stats).items()
            if c == comm}


def named_cpu_delta(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds between two ``named_cpu_ticks``: processes that exited in between are lost,
    processes that started count in full."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores; /proc/stat minus idle, iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))} ({platform.release()})"
    except OSError:
        pass
    return platform.platform()


def git_commit(repo: Path) -> str | None:
    """The hub's commit, with ``+dirty`` when ``sip_hub/`` has uncommitted changes
    (read-only git commands)."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=all", "--", "sip_hub"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}+dirty" if commit and dirty.stdout.strip() else commit or None


def machine(repo: Path) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "os": _os_name(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_at_start": list(os.getloadavg()),
        "hub_commit": git_commit(repo),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
