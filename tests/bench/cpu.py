"""CPU time and memory of the benchmark's processes, read from /proc (Linux): where a booking's CPU goes, and
whether a process grows over a soak."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _parents() -> dict[int, int]:
    """Every live process's parent, read once per snapshot."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            parents[int(entry.name)] = int(fields[1])
    return parents


def _tree(pid: int, parents: dict[int, int]) -> set[int]:
    """A process and its live descendants (uvicorn --workers N forks them)."""
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return tree


def tree_seconds(pid: int, parents: dict[int, int]) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    total = 0.0
    for member in _tree(pid, parents):
        if fields := _stat(member):
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(groups: dict[str, list[int]]) -> dict[str, float]:
    """Resident memory of each group's processes and their descendants, in MiB."""
    parents = _parents()
    return {name: sum(_rss_kib(member) for pid in pids for member in _tree(pid, parents)) / 1024
            for name, pids in groups.items()}


def pids_named(*names: str) -> list[int]:
    """Local processes by command name: the MariaDB/MySQL and Redis servers the benchmark runs against."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def snapshot(groups: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """CPU seconds so far of each group's processes (with their descendants), by process."""
    parents = _parents()
    return {name: {pid: tree_seconds(pid, parents) for pid in pids if pid in parents} for name, pids in groups.items()}


def spent(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds each group spent between two snapshots, counting only processes alive at both (a server that
    another run on this machine stopped in between would otherwise count negative)."""
    return {name: sum(max(after[name][pid] - seconds, 0.0) for pid, seconds in before[name].items()
                      if pid in after[name]) for name in before}
