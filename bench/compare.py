"""``--compare REF``: this tree against the commit REF, both served at once, phases alternating."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

from common import ROOT, Plan
from phases import Bench
from report import fmt, median_of
from servers import Servers

# What --compare measures on both trees: key, label, unit, scale (as in report.METRICS).
COMPARED = [
    ("ttft_proxy_p50", "TTFT through the service, p50", "ms", 1e3),
    ("ttft_added_p50", "TTFT added by the service, p50", "ms", 1e3),
    ("burst_proxy_wall", "burst stream through the service, wall", "ms", 1e3),
    ("cpu_per_event_burst", "service CPU per event, burst", "us", 1e6),
    ("rps_total", "non-streaming req/s", "/s", 1),
    ("rps_cpu_per_request", "service CPU per request", "ms", 1e3),
    ("rss_base", "base RSS after warm-up", "MB", 1e-6),
]


def export_tree(ref: str, into: Path) -> Path:
    """The files of commit ``ref`` (no .git), so its app.py can be served beside this tree's."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def compare(ref: str, plan: Plan, tmp: Path) -> int:
    """This tree and ``ref`` served side by side; the same phases alternate between them each round.
    The floor arm is left out: both trees would share it."""
    trees = {"this tree": ROOT, ref: export_tree(ref, tmp / "baseline")}
    servers = {}
    for index, (name, root) in enumerate(trees.items()):
        (tmp / f"run-{index}").mkdir()
        servers[name] = Servers(tmp / f"run-{index}", root)
    benches: dict[str, Bench] = {}
    try:
        for name, server in servers.items():
            server.start()
            benches[name] = Bench(server, plan)
            benches[name].warm_up()
        for index in range(plan.rounds):
            names = list(benches) if index % 2 == 0 else list(reversed(benches))
            order = ("direct", "proxy") if index % 2 == 0 else ("proxy", "direct")
            for name in names:
                bench = benches[name]
                bench.servers.refresh_workers()
                bench.ttft(order)
                bench.burst(order)
                bench.throughput()
            print(f"round {index + 1}/{plan.rounds} done", flush=True)
        return report_comparison(benches)
    finally:
        for bench in benches.values():
            bench.close()
        for server in servers.values():
            server.stop()


def report_comparison(benches: dict[str, Bench]) -> int:
    (new, new_bench), (old, old_bench) = benches.items()
    print(f"\n{'metric':<34} {new:>12} {old:>12}   ratio (this / {old})")
    for key, label, unit, scale in COMPARED:
        values = [median_of(bench, key) * scale for bench in (new_bench, old_bench)]
        ratio = values[0] / values[1] if values[1] else math.nan
        print(f"{label:<34} {fmt(values[0]):>9} {unit:<3}{fmt(values[1]):>9} {unit:<3}  {ratio:.2f}")
    failures = sum(sum(bench.failures.values()) for bench in benches.values())
    print(f"\nfailed requests: {failures}")
    return 1 if failures else 0
