"""Benchmark of the reverse API against a direct client of the same fake Qwen upstream and a floor relay.

Starts ``bench/fake_upstream.py``, the real service (``python app.py``: gunicorn with gevent
workers) and ``bench/floor_relay.py`` (a minimal Flask relay on gunicorn's gevent worker), then runs
three arms interleaved over several rounds, in a different order every round:

- direct: this client makes the two upstream calls the service makes (``chats/new``, then the
  ``chat/completions`` SSE stream);
- proxy: ``POST /v1/chat/completions`` on the service, streaming or not;
- floor: the same request on the floor relay, the least a relay on the same stack can cost.

After the rounds, a scaling phase measures the service's CPU per request by history length and per
request and per event by the number of configured providers. Each metric is printed as its median
across rounds with the spread (min .. max) and its ratio to the floor arm's, then one PASS/FAIL line
per target and an overall line. See bench/README.md.

    python bench/run.py             full run (~3 min); FAIL lines are informative, exit 0
    python bench/run.py --strict    exit 1 when a target is missed
    python bench/run.py --smoke     some seconds, tiny counts, no thresholds (CI): exit 1 on a failed request
    python bench/run.py --compare REF   this tree against the commit REF, both served at once, alternating

Only the standard library, requests, flask, gunicorn and gevent; process figures come from /proc.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench modules, whatever the working directory

from clients import litellm_arm  # noqa: E402
from common import FULL, SMOKE, Plan  # noqa: E402
from compare import compare  # noqa: E402
from phases import Bench  # noqa: E402
from report import report  # noqa: E402
from scaling import scaling  # noqa: E402
from servers import Servers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, tiny counts, no thresholds")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling phase")
    parser.add_argument("--litellm-python", metavar="PATH", help="an interpreter where `import litellm` works")
    parser.add_argument("--compare", metavar="REF", help="measure this tree against a git commit, in the same run")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.rounds:
        plan = Plan(**{**plan.__dict__, "rounds": args.rounds})

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="reverse-api-bench-"))
    if args.compare:
        try:
            return compare(args.compare, plan, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"total time {time.monotonic() - started:.1f} s")
    (tmp / "main").mkdir()
    servers = Servers(tmp / "main", floor=True)
    bench: Bench | None = None
    code = 0
    try:
        servers.start()
        print(
            f"service pid {servers.service.pid} on {servers.base}, floor relay on {servers.floor_base}, "
            f"fake upstream on {servers.upstream_base}; "
            f"{os.cpu_count()} CPUs; {'smoke' if args.smoke else 'full'} run, {plan.rounds} round(s)",
            flush=True,
        )
        bench = Bench(servers, plan)
        bench.warm_up()
        print(f"warm-up done: {len(servers.workers)} worker(s), pids {servers.pids()}", flush=True)
        for index in range(plan.rounds):
            t0 = time.monotonic()
            bench.round(index)
            order = ", ".join(bench.order(index))
            print(f"round {index + 1}/{plan.rounds} done in {time.monotonic() - t0:.1f} s ({order})", flush=True)
        if not args.no_scaling:
            t0 = time.monotonic()
            scaling(bench, tmp)
            print(f"scaling phase done in {time.monotonic() - t0:.1f} s", flush=True)
        bench.finish()
        own_p50 = statistics.median(bench.values["ttft_proxy_p50"] or [math.nan])
        print(litellm_arm(args.litellm_python, servers.base, plan.ttft_requests, own_p50), flush=True)
        code = report(bench, plan, thresholds=not args.smoke, strict=args.strict)
        if sum(bench.failures.values()):
            print(f"\nservice log (last lines):\n{servers.log_tail('service.log')}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except Exception:
        traceback.print_exc()
        print(f"service log (last lines):\n{servers.log_tail('service.log')}", file=sys.stderr)
        print(f"floor log (last lines):\n{servers.log_tail('floor.log')}", file=sys.stderr)
        code = 2
    finally:
        if bench is not None:
            bench.close()
        servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total time {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
