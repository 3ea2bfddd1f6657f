"""What the benchmark prints: the metric table (median, spread, ratio to the floor arm) and the targets."""

from __future__ import annotations

import math
import statistics

from common import Plan

# key, label, unit, scale, the floor arm's counterpart (its ratio is printed beside the figure)
METRICS = [
    ("ttft_direct_p50", "1 TTFT direct p50", "ms", 1e3, None),
    ("ttft_proxy_p50", "1 TTFT proxy p50", "ms", 1e3, "ttft_floor_p50"),
    ("ttft_floor_p50", "1 TTFT floor p50", "ms", 1e3, None),
    ("ttft_direct_p95", "1 TTFT direct p95", "ms", 1e3, None),
    ("ttft_proxy_p95", "1 TTFT proxy p95", "ms", 1e3, "ttft_floor_p95"),
    ("ttft_floor_p95", "1 TTFT floor p95", "ms", 1e3, None),
    ("ttft_added_p50", "1 TTFT added by proxy, p50", "ms", 1e3, "ttft_floor_added_p50"),
    ("ttft_floor_added_p50", "1 TTFT added by floor, p50", "ms", 1e3, None),
    ("ttft_added_p95", "1 TTFT added by proxy, p95", "ms", 1e3, "ttft_floor_added_p95"),
    ("ttft_floor_added_p95", "1 TTFT added by floor, p95", "ms", 1e3, None),
    ("event_direct_p50", "2 event latency direct p50", "ms", 1e3, None),
    ("event_proxy_p50", "2 event latency proxy p50", "ms", 1e3, "event_floor_p50"),
    ("event_floor_p50", "2 event latency floor p50", "ms", 1e3, None),
    ("event_added_p50", "2 event latency added by proxy, p50", "ms", 1e3, "event_floor_added_p50"),
    ("event_floor_added_p50", "2 event latency added by floor, p50", "ms", 1e3, None),
    ("event_direct_gap_max", "2 largest inter-arrival gap, direct", "ms", 1e3, None),
    ("event_proxy_gap_max", "2 largest inter-arrival gap, proxy", "ms", 1e3, "event_floor_gap_max"),
    ("event_floor_gap_max", "2 largest inter-arrival gap, floor", "ms", 1e3, None),
    ("event_direct_bunched", "2 events bunched in one read, direct", "%", 100, None),
    ("event_proxy_bunched", "2 events bunched in one read, proxy", "%", 100, "event_floor_bunched"),
    ("event_floor_bunched", "2 events bunched in one read, floor", "%", 100, None),
    ("burst_direct_wall", "3 burst stream wall, direct", "ms", 1e3, None),
    ("burst_proxy_wall", "3 burst stream wall, proxy", "ms", 1e3, "burst_floor_wall"),
    ("burst_floor_wall", "3 burst stream wall, floor", "ms", 1e3, None),
    ("burst_ratio", "3 burst wall proxy/direct", "x", 1, "burst_floor_ratio"),
    ("burst_floor_ratio", "3 burst wall floor/direct", "x", 1, None),
    ("burst_direct_client_cpu", "3 client CPU during direct burst", "%", 100, None),
    ("burst_proxy_client_cpu", "3 client CPU during proxy burst", "%", 100, "burst_floor_client_cpu"),
    ("burst_floor_client_cpu", "3 client CPU during floor burst", "%", 100, None),
    ("burst_proxy_service_cpu", "3 service CPU during proxy burst", "%", 100, "burst_floor_service_cpu"),
    ("burst_floor_service_cpu", "3 floor CPU during floor burst", "%", 100, None),
    ("burst_proxy_upstream_cpu", "3 upstream CPU during proxy burst", "%", 100, "burst_floor_upstream_cpu"),
    ("burst_floor_upstream_cpu", "3 upstream CPU during floor burst", "%", 100, None),
    ("burst_proxy_other_cpu", "3 rest-of-machine CPU, proxy burst", "%", 100, None),
    ("single_stream_wall", "4 one long stream alone, wall", "ms", 1e3, None),
    ("concurrent_wall", "4 concurrent streams, wall", "ms", 1e3, None),
    ("concurrent_ratio", "4 concurrent wall / single wall", "x", 1, None),
    ("concurrent_complete_pct", "4 concurrent streams complete", "%", 1, None),
    ("concurrent_errors", "4 concurrent streams failed", "", 1, None),
    ("concurrent_peak_open", "4 streams open at once (peak)", "", 1, None),
    ("concurrent_ttft_p95", "4 TTFT p95 under concurrency", "ms", 1e3, None),
    ("concurrent_service_cpu", "4 service CPU during concurrent streams", "%", 100, None),
    ("concurrent_upstream_cpu", "4 upstream CPU during concurrent streams", "%", 100, None),
    ("concurrent_client_cpu", "4 client CPU during concurrent streams", "%", 100, None),
    ("concurrent_other_cpu", "4 rest-of-machine CPU, concurrent streams", "%", 100, None),
    ("burst_conn_ok", "5 connection burst: ok", "", 1, None),
    ("burst_conn_errors", "5 connection burst: resets/conn errors", "", 1, None),
    ("burst_conn_5xx", "5 connection burst: 5xx", "", 1, None),
    ("burst_conn_other", "5 connection burst: other failures", "", 1, None),
    ("burst_conn_latency_p95", "5 connection burst: latency p95", "ms", 1e3, None),
    ("burst_conn_wall", "5 connection burst: wall", "ms", 1e3, None),
    ("rps_total", "6 non-streaming req/s, total", "/s", 1, "rps_floor_total"),
    ("rps_floor_total", "6 non-streaming req/s, total, floor", "/s", 1, None),
    ("rps_per_worker", "6 non-streaming req/s per worker", "/s", 1, "rps_floor_per_worker"),
    ("rps_floor_per_worker", "6 non-streaming req/s per worker, floor", "/s", 1, None),
    ("rps_cpu_per_request", "6 service CPU per request", "ms", 1e3, "rps_floor_cpu_per_request"),
    ("rps_floor_cpu_per_request", "6 floor CPU per request", "ms", 1e3, None),
    ("rps_per_cpu_second", "6 req per service CPU-second", "/s", 1, "rps_floor_per_cpu_second"),
    ("rps_floor_per_cpu_second", "6 req per floor CPU-second", "/s", 1, None),
    ("rps_service_cpu", "6 service CPU during test", "%", 100, "rps_floor_service_cpu"),
    ("rps_floor_service_cpu", "6 floor CPU during floor test", "%", 100, None),
    ("rps_upstream_cpu", "6 upstream CPU during test", "%", 100, "rps_floor_upstream_cpu"),
    ("rps_floor_upstream_cpu", "6 upstream CPU during floor test", "%", 100, None),
    ("rps_client_cpu", "6 client CPU during test", "%", 100, "rps_floor_client_cpu"),
    ("rps_floor_client_cpu", "6 client CPU during floor test", "%", 100, None),
    ("rps_other_cpu", "6 rest-of-machine CPU during test", "%", 100, "rps_floor_other_cpu"),
    ("cpu_per_event_burst", "7 service CPU per event, burst", "us", 1e6, "cpu_per_event_burst_floor"),
    ("cpu_per_event_burst_floor", "7 floor CPU per event, burst", "us", 1e6, None),
    ("cpu_per_event_concurrent", "7 service CPU per event, concurrent", "us", 1e6, None),
    ("rss_during_streams", "8 RSS during concurrent streams", "MB", 1e-6, None),
    ("rss_per_stream", "8 RSS per open stream (vs. base after warm-up)", "KB", 1e-3, None),
    ("rss_per_stream_round", "8 RSS per open stream (vs. just before)", "KB", 1e-3, None),
    ("reuse_new_connections", "9 new upstream connections / reuse run", "", 1, None),
]
ONCE = [
    ("workers", "  service worker processes", "", 1, None),
    ("rss_base", "8 base RSS (master+workers, after warm-up)", "MB", 1e-6, "rss_floor_base"),
    ("rss_floor_base", "8 base RSS of the floor relay", "MB", 1e-6, None),
    ("rss_master", "  base RSS of the gunicorn master", "MB", 1e-6, None),
    ("rss_worker_max", "  base RSS of the largest worker", "MB", 1e-6, None),
    ("pss_base", "  base PSS (shared pages counted once)", "MB", 1e-6, None),
    ("rss_end", "  RSS at the end", "MB", 1e-6, None),
    ("upstream_connections_total", "  upstream TCP connections accepted, total", "", 1, None),
]


def scaling_metrics(plan: Plan) -> list[tuple]:
    """10. The scaling phase's figures, each with the smallest configuration as its ratio's base."""
    h0, p0 = plan.histories[0], plan.provider_counts[0]
    rows = [
        (f"cpu_per_request_hist_{n}", f"10 service CPU/request, {n} messages", "ms", 1e3, f"cpu_per_request_hist_{h0}")
        for n in plan.histories
    ]
    for kind, label, unit, scale in (("request", "request", "ms", 1e3), ("event", "event (burst)", "us", 1e6)):
        rows += [
            (f"cpu_per_{kind}_providers_{n}", f"10 service CPU/{label}, {n} providers", unit, scale,
             f"cpu_per_{kind}_providers_{p0}")
            for n in plan.provider_counts
        ]  # fmt: skip
    return [row if row[0] != row[4] else (*row[:4], None) for row in rows]


# description, how, keys, op, limit (in the first key's display unit; "x" for ratios).
# how: median, worst (round), once, total (whole run), per50 (per 50 requests), ratio (median of
# the first key over median of the second), minus (the same, their difference).
TARGETS = [
    ("1 TTFT added p50, proxy/floor", "ratio", ("ttft_added_p50", "ttft_floor_added_p50"), "<=", 2),
    ("1 TTFT added p95, proxy/floor", "ratio", ("ttft_added_p95", "ttft_floor_added_p95"), "<=", 2.5),
    ("2 event latency added, proxy minus floor", "minus", ("event_added_p50", "event_floor_added_p50"), "<=", 0.1),
    ("2 events bunched on the paced proxy stream", "median", ("event_proxy_bunched",), "<=", 5),
    ("2 largest proxy inter-arrival gap", "median", ("event_proxy_gap_max",), "<=", 25),
    ("3 burst wall proxy/direct", "median", ("burst_ratio",), "<=", 1.5),
    ("7 service CPU per relayed event (burst)", "median", ("cpu_per_event_burst",), "<=", 30),
    ("4 concurrent streams complete", "worst", ("concurrent_complete_pct",), ">=", 100),
    ("4 concurrent stream errors", "worst", ("concurrent_errors",), "<=", 0),
    ("4 concurrent wall / single wall", "median", ("concurrent_ratio",), "<=", 1.5),
    ("4 TTFT p95 under concurrency", "median", ("concurrent_ttft_p95",), "<=", 700),
    ("6 req/s per worker, proxy/floor", "ratio", ("rps_per_worker", "rps_floor_per_worker"), ">=", 0.5),
    ("8 RSS per open stream", "median", ("rss_per_stream",), "<=", 30),
    ("10 CPU/request, 100/1 providers", "ratio", ("cpu_per_request_providers_100", "cpu_per_request_providers_1"), "<=", 1.25),  # noqa: E501
    ("10 CPU/event, 100/1 providers", "ratio", ("cpu_per_event_providers_100", "cpu_per_event_providers_1"), "<=", 1.25),  # noqa: E501
    ("5 connection resets/errors", "worst", ("burst_conn_errors",), "<=", 0),
    ("5 5xx answers", "worst", ("burst_conn_5xx",), "<=", 0),
    ("9 new upstream connections per 50 requests", "per50", ("reuse_new_connections",), "<=", 1),
    ("all requests answered completely", "total", ("failed_requests",), "<=", 0),
]  # fmt: skip


def fmt(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if abs(value) < 1e-6:
        value = 0.0
    if value == int(value) and abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"


def median_of(bench, key: str) -> float:
    """A figure's median over rounds (or its one value), NaN when it was not measured."""
    if key in bench.once:
        return bench.once[key]
    clean = [v for v in bench.values.get(key, []) if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def ratio_text(bench, key: str, base: str | None) -> str:
    if base is None:
        return ""
    a, b = median_of(bench, key), median_of(bench, base)
    return f"{a / b:.2f}x" if b and not (math.isnan(a) or math.isnan(b)) else "n/a"


def report(bench, plan: Plan, thresholds: bool, strict: bool) -> int:
    rows = METRICS + scaling_metrics(plan)
    units = {key: (unit, scale) for key, _, unit, scale, _ in rows + ONCE}
    units["failed_requests"] = ("failed", 1)
    print(f"\n{'metric':<46} {'median':>10}      {'spread (min .. max)':<22} {'rounds':>6}  ratio")
    for key, label, unit, scale, base in rows:
        vals = [v * scale for v in bench.values.get(key, [])]
        clean = [v for v in vals if not math.isnan(v)]
        if not vals and key.startswith("cpu_per_") and key not in {r[0] for r in METRICS}:
            continue  # a configuration this run does not measure
        if not clean:
            print(f"{label:<46} {'nan':>10} {unit:<3}")
            continue
        spread = f"[{fmt(min(clean))} .. {fmt(max(clean))}]"
        ratio = ratio_text(bench, key, base)
        print(f"{label:<46} {fmt(statistics.median(clean)):>10} {unit:<3}  {spread:<22} {len(vals):>6}  {ratio}")
    for key, label, unit, scale, base in ONCE:
        value = bench.once.get(key, math.nan) * scale
        print(
            f"{label:<46} {fmt(value):>10} {unit:<3}  {'(measured once)':<22} {'':>6}  {ratio_text(bench, key, base)}"
        )
    print("ratio: the proxy figure over the floor arm's; for 10, over the smallest configuration's")
    failed_requests = sum(bench.failures.values())
    bench.once["failed_requests"] = failed_requests
    print(f"\nfailed requests: {failed_requests}" + (f" {dict(bench.failures)}" if failed_requests else ""))
    for sample in bench.failure_samples:
        print(f"  {sample}")

    if not thresholds:
        print("\nsmoke run: no thresholds checked")
        return 1 if failed_requests else 0

    print()
    missed = []
    for desc, how, keys, op, limit in TARGETS:
        value, shown, label = target_value(bench, plan, how, keys, op, units)
        ok = value <= limit if op == "<=" else value >= limit  # NaN fails both
        if not ok:
            missed.append(desc)
        unit = "x" if how == "ratio" else units[keys[0]][0]
        target = f"{fmt(limit)} {unit}".strip() if unit != "x" else f"{fmt(limit)}x"
        print(f"{'PASS' if ok else 'FAIL'}  {desc}: {shown} ({label}; target {op} {target})")
    total = len(TARGETS)
    if missed:
        print(f"\nOVERALL: FAIL ({len(missed)} of {total} targets missed: {', '.join(missed)})")
    else:
        print(f"\nOVERALL: PASS ({total} of {total} targets met)")
    return 1 if strict and missed else 0


def arm_name(key: str) -> str:
    if "_providers_" in key:
        return f"{key.rsplit('_', 1)[1]} providers"
    return "floor" if "floor" in key else "proxy"


def target_value(bench, plan: Plan, how: str, keys: tuple[str, ...], op: str, units: dict) -> tuple[float, str, str]:
    """(value in display units, how it is shown, what it aggregates) of one target."""
    unit, scale = units[keys[0]]
    if how in ("ratio", "minus"):
        a, b = (median_of(bench, key) * units[key][1] for key in keys)
        value = a / b if how == "ratio" and b else a - b if how == "minus" else math.nan
        names = [arm_name(key) for key in keys]
        shown = f"{value:.2f}x" if how == "ratio" else f"{fmt(value)} {unit}"
        return value, f"{shown} ({names[0]} {fmt(a)} {unit}, {names[1]} {fmt(b)} {unit})", "medians"
    if how in ("once", "total"):
        value = bench.once.get(keys[0], math.nan) * scale
    else:
        vals = [v * scale for v in bench.values.get(keys[0], [])]
        if not vals or any(math.isnan(v) for v in vals) and how == "worst":
            value = math.nan
        elif how == "worst":
            value = max(vals) if op == "<=" else min(vals)
        elif how == "per50":
            value = statistics.median(vals) * 50 / plan.reuse_requests
        else:
            value = statistics.median([v for v in vals if not math.isnan(v)] or [math.nan])
    label = {"worst": "worst round", "once": "measured once", "total": "whole run", "per50": "median"}.get(how, how)
    return value, f"{fmt(value)} {unit}".strip(), label
