"""CPU time of the benchmark's processes, read from /proc (Linux), to say where a booking's CPU goes."""

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


def tree_seconds(pid: int, parents: dict[int, int]) -> float:
    """User + system CPU seconds of a process and its live descendants (uvicorn --workers N forks them)."""
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    total = 0.0
    for member in tree:
        if fields := _stat(member):
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


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


def snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    parents = _parents()
    return {name: sum(tree_seconds(pid, parents) for pid in pids) for name, pids in groups.items()}
