"""Process figures from /proc (Linux): CPU seconds, RSS, PSS, and CpuWindow over a stretch of time."""

from __future__ import annotations

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def _matching(index: int, value: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(_stat_fields(int(name))[index]) == value:
                    found.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return sorted(found)


def children(pid: int) -> list[int]:
    return _matching(1, pid)  # ppid


def group_members(pgid: int) -> list[int]:
    return _matching(2, pgid)  # process group


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def _status_sum(pids: list[int], path: str, field: str) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/{path}") as f:
                for line in f:
                    if line.startswith(field):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def rss_bytes(pids: list[int]) -> int:
    return _status_sum(pids, "status", "VmRSS:")


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size: shared pages split between the processes sharing them."""
    return _status_sum(pids, "smaps_rollup", "Pss:")


def client_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


class CpuWindow:
    """CPU used by the server under test, the upstream, this client and everything else.

    ``servers`` is a ``Servers``; ``arm`` picks the server measured: "proxy" (the service, the
    default) or "floor" (the minimal relay). Under the key "service" either way."""

    def __init__(self, servers, arm: str = "proxy") -> None:
        self.pids = servers.pids(arm)
        self.upstream = [servers.upstream.pid]
        self.start = self._snap()

    def _snap(self) -> tuple[float, float, float, float, float]:
        return time.monotonic(), cpu_seconds(self.pids), cpu_seconds(self.upstream), client_cpu(), machine_busy()

    def stop(self) -> dict[str, float]:
        end = self._snap()
        wall, service, upstream, client, busy = (b - a for a, b in zip(self.start, end, strict=True))
        return {
            "wall": wall,
            "service": service,
            "upstream": upstream,
            "client": client,
            "other": max(0.0, busy - service - upstream - client),
        }
