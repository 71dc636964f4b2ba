"""What `/proc` says about a process: its peak RSS, its CPU time, and which processes belong to
one `AVATARPIPE_HOME`. The one reader of these files, for the warm workers (their own peak),
the benchmarks (the workers they measure) and the fault tests (the workers they kill).

Linux only; elsewhere the readers answer None / [] (and `peak_rss_mb` of this process falls
back to `getrusage`).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

PROC = Path("/proc")


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident set size in MB (`VmHWM`) of ``pid`` (None: this process); None when that
    process is gone. Not `getrusage`'s ru_maxrss for this process: Linux carries that across
    exec, so a worker started by a large process (a test runner at 4 GB) would report its
    parent's peak."""
    try:
        status = (PROC / ("self" if pid is None else str(pid)) / "status").read_text()
    except OSError:
        if pid is None:  # no /proc (not Linux): the best this process can say of itself
            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def _stat_fields(pid: int) -> list[str]:
    """`/proc/PID/stat` after the command name (which may hold spaces and parentheses)."""
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used so far; None when it is gone."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def home_processes(marker: str, home: Path) -> list[int]:
    """Pids of the live processes whose command line contains ``marker`` (`ops.worker`,
    `ops.warm_worker`, `dagster`…) and whose environment has ``AVATARPIPE_HOME`` set to ``home``
    (as given or resolved), oldest first: other homes' processes on the same machine, and other
    users' (unreadable), are left out."""
    homes = {f"AVATARPIPE_HOME={home}".encode(), f"AVATARPIPE_HOME={home.resolve()}".encode()}
    found = []
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                continue
            if homes.isdisjoint((entry / "environ").read_bytes().split(b"\0")):
                continue
            found.append((int(_stat_fields(int(entry.name))[19]), int(entry.name)))  # starttime
        except (OSError, IndexError, ValueError):  # gone meanwhile, or not ours to read
            continue
    return [pid for _start, pid in sorted(found)]
