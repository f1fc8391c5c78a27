#!/usr/bin/env python3
"""Extraction at the API's speed limit: sequential vs concurrent paging, 429 storms, rate limit.

    python benchmarks/extract_bench.py [--pages 200] [--latency 0.05] [--concurrency 8] [--repeat 3]
    python benchmarks/extract_bench.py --rate-check      # + the 20-requests-a-minute check (~70 s)

The demo API (dataset "scale", per_page chosen so there are exactly ``--pages`` pages,
``--latency`` seconds per answer, no injected faults) runs in a process of its own for the
speed runs, in this one where its request log is read (2, 3); the whole pipeline
(``transform.orchestrate.run``: extract, build, export into a temp warehouse) runs against it:

1. speed: the run with concurrency 1 (sequential) and with ``--concurrency``, median of
   ``--repeat``; pages/s of the run and of the extract stage; the speedup (goal >= 6x at
   200 pages x 50 ms, concurrency 8). A run during which other processes or the hypervisor
   took more than ``--max-other-load`` cores is repeated (up to 3x ``--repeat`` runs), and
   listed with its time: it measured the machine, not the pipeline;
2. politeness under 429s: the server answers 429 (Retry-After: 1) whenever more than 2
   requests are in flight; with ``--concurrency`` the client should adapt (AIMD throttle):
   requests, 429s, requests per page (goal <= 1.5), wall time;
3. ``--rate-check``: 25 pages with max_requests_per_minute=20; from the server's own
   request log, the most requests in any 60-second window (goal <= 20).

Timings are reported, never asserted; the exit status is 0 unless a run fails.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from _bench import CpuMeter, Report, Table, fmt, machine, machine_line, wait_quiet  # noqa: E402

DUPLICATE_RATE = 0.2
DAMAGED_RATE = 0.05
GOAL_SPEEDUP = 6.0
GOAL_REQUESTS_PER_PAGE = 1.5
RATE_LIMIT = 20
RATE_PAGES = 25


def customers_for(pages: int, per_page: int) -> int:
    """Distinct customers of the scale dataset that make exactly ``pages`` pages of ``per_page``."""

    def total(c: int) -> int:
        return c + (round(c * DUPLICATE_RATE) if c else 0)

    c = max(1, int(pages * per_page / (1 + DUPLICATE_RATE)))
    while c > 1 and math.ceil(total(c) / per_page) > pages:
        c -= 1
    while math.ceil(total(c) / per_page) < pages:
        c += 1
    if math.ceil(total(c) / per_page) != pages:
        raise SystemExit(f"cannot make exactly {pages} pages of {per_page}")
    return c


class _ServerProcess:
    """The demo API in its own process, as a real API is: it does not share the client's GIL."""

    def __init__(self, customers: int, latency: float):
        import socket
        import subprocess

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/api"
        self.requests = None  # no request log across processes
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "pipeline.py"), "demo-api", "--port", str(port), "--dataset", "scale",
             "--customers", str(customers), "--duplicate-rate", str(DUPLICATE_RATE),
             "--damaged-rate", str(DAMAGED_RATE), "--latency", str(latency), "--faults", "none", "--cache-pages"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import requests
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{self.base_url}/users?page=1&per_page=1", timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.process.kill()
                    raise SystemExit("the demo API process did not start")
                time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """The server process's user + system CPU seconds so far (/proc); 0.0 where unavailable."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def warm(self, pages: int, per_page: int) -> None:
        """Render every page once (untimed), so the timed runs measure the client, not the server."""
        import concurrent.futures

        import requests

        with requests.Session() as session, concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda p: session.get(f"{self.base_url}/users?page={p}&per_page={per_page}",
                                                timeout=30).content, range(1, pages + 1)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=10)


def one_run(pages: int, per_page: int, latency: float, concurrency: int, *, max_in_flight: int | None = None,
            max_requests_per_minute: int | None = None, quiet_wait: float = 0.0,
            server_process: bool = False) -> dict:
    """A fresh demo API and a fresh warehouse; the whole run, timed."""
    from extract.demo_api import DemoAPI
    from transform import orchestrate
    from transform.orchestrate import Settings

    customers = customers_for(pages, per_page)
    if quiet_wait:
        wait_quiet(quiet_wait)
    if server_process:
        server = _ServerProcess(customers, latency)
        server.warm(pages, per_page)
    else:
        server = DemoAPI(dataset="scale", customers=customers, duplicate_rate=DUPLICATE_RATE,
                         damaged_rate=DAMAGED_RATE, faults="none", latency=latency, max_in_flight=max_in_flight,
                         retry_after="1")
    with server as api, tempfile.TemporaryDirectory(prefix="extract_bench_") as tmp:
        settings = Settings(base_url=api.base_url, per_page=per_page, concurrency=concurrency,
                            max_requests_per_minute=max_requests_per_minute,
                            warehouse=Path(tmp) / "w.duckdb", output=Path(tmp) / "out.json", quiet=True)
        with CpuMeter() as meter:
            server_cpu = server.cpu_seconds() if server_process else 0.0
            started = time.perf_counter()
            summary = orchestrate.run(settings)
            wall = time.perf_counter() - started
            if server_process:  # the API's own work is part of the measurement, not other load
                meter.child_cpu = server.cpu_seconds() - server_cpu
        log = list(api.requests) if api.requests is not None else None
    if summary.pages != pages:
        raise SystemExit(f"expected {pages} pages, the run landed {summary.pages}")
    return {
        "wall": wall,
        "extract": summary.stage_seconds.get("extract"),
        "pages": summary.pages,
        "records": summary.records,
        "requests": len(log) if log is not None else summary.requests,
        "throttled": sum(1 for r in log if r.status == 429) if log is not None else None,
        "retries": summary.retries,
        "max_in_flight_seen": max((r.in_flight for r in log), default=0) if log is not None else None,
        "arrivals": sorted(r.time for r in log) if log is not None else [],
        "others": meter.others + meter.steal,
    }


def max_in_window(times: list[float], window: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):  # times sorted; count arrivals in [times[j], times[j] + window)
        while t - times[j] >= window:
            j += 1
        best = max(best, i - j + 1)
    return best


def fixed_cost_budget(sequential_run: float, concurrent_extract: float, goal: float) -> float:
    """The most the concurrent run may spend besides extracting (its run s minus its extract s)
    and still be ``goal`` times faster than ``sequential_run``: sequential_run / goal - extract."""
    return sequential_run / goal - concurrent_extract


def undisturbed_runs(n: int, max_other_load: float, run) -> tuple[list[dict], list[dict]]:
    """``n`` results of ``run()`` during which other processes and the hypervisor used at most
    ``max_other_load`` cores on average: a disturbed run is repeated, up to ``3 * n`` runs in
    all (then the least disturbed are kept). Returns (kept, repeated)."""
    kept, disturbed = [], []
    for _ in range(3 * n):
        result = run()
        (kept if result["others"] <= max_other_load else disturbed).append(result)
        if len(kept) == n:
            return kept, disturbed
    disturbed.sort(key=lambda r: r["others"])
    return kept + disturbed[: n - len(kept)], disturbed[n - len(kept):]


def speed(rep: Report, args) -> None:
    rep.heading(f"Speed: {args.pages} pages x {args.per_page} records, {args.latency * 1000:.0f} ms latency per "
                f"request, median of {args.repeat}", 3)
    table = Table(["mode", "concurrency", "run s", "extract s", "pages/s (run)", "pages/s (extract)",
                   "requests", "retries", "other load", "repeated"])
    medians, every = {}, {}
    notes = []
    for label, concurrency in (("sequential", 1), ("concurrent", args.concurrency)):
        runs, repeated = undisturbed_runs(
            args.repeat, args.max_other_load,
            lambda: one_run(args.pages, args.per_page, args.latency, concurrency, quiet_wait=args.quiet_wait,
                            server_process=True))
        wall = statistics.median(r["wall"] for r in runs)
        extract = statistics.median(r["extract"] for r in runs)
        medians[label] = (wall, extract)
        every[label] = statistics.median(r["wall"] for r in runs + repeated)
        table.add(label, concurrency, wall, extract, args.pages / wall, args.pages / extract,
                  max(r["requests"] for r in runs), max(r["retries"] for r in runs),
                  f"{max(r['others'] for r in runs):.2f}", len(repeated))
        if repeated:
            loads = ", ".join(f"{r['others']:.2f}" for r in repeated)
            walls = ", ".join(f"{r['wall']:.2f}" for r in repeated)
            notes.append(f"{label}: {len(repeated)} disturbed run(s) repeated (other load {loads}; run s {walls})")
        if any(r["others"] > args.max_other_load for r in runs):
            notes.append(f"{label}: still disturbed after {3 * args.repeat} runs; the least disturbed are shown")
    rep.table(table)
    for note in notes:
        rep.line(note)
    run_x = medians["sequential"][0] / medians["concurrent"][0]
    extract_x = medians["sequential"][1] / medians["concurrent"][1]
    goal = f"goal >= {GOAL_SPEEDUP:.0f}x at 200 pages x 50 ms, concurrency 8"
    rep.line(f"speedup: whole run {run_x:.2f}x ({'MET' if run_x >= GOAL_SPEEDUP else 'NOT MET'}), extract stage "
             f"{extract_x:.2f}x ({'MET' if extract_x >= GOAL_SPEEDUP else 'NOT MET'}); {goal}")
    # what the run spends besides extracting (warehouse, build, tests, export, docs, checkpoint)
    # is what decides the whole-run speedup: the extract stage is at its speedup already
    fixed = {label: wall - extract for label, (wall, extract) in medians.items()}
    budget = fixed_cost_budget(medians["sequential"][0], medians["concurrent"][1], GOAL_SPEEDUP)
    rep.line(f"besides extracting, a run spends {fixed['sequential']:.2f} s sequential, {fixed['concurrent']:.2f} s "
             f"concurrent; {GOAL_SPEEDUP:.0f}x needs the concurrent one at {budget:.2f} s or less")
    if every != {label: wall for label, (wall, _) in medians.items()}:
        rep.line(f"every run, the disturbed ones too: median run s {every['sequential']:.2f} sequential, "
                 f"{every['concurrent']:.2f} concurrent: {every['sequential'] / every['concurrent']:.2f}x")
    ideal = args.pages * args.latency
    rep.line(f"for scale: {args.pages} x {args.latency * 1000:.0f} ms = {ideal:.1f} s of pure latency sequentially, "
             f"{ideal / args.concurrency:.2f} s at perfect {args.concurrency}-way overlap")


def throttled(rep: Report, args) -> None:
    rep.heading(f"429s: the server answers 429 (Retry-After: 1) above 2 requests in flight; "
                f"client concurrency {args.concurrency}", 3)
    table = Table(["run", "pages", "requests", "429s", "retries", "requests/page", "run s", "extract s",
                   "other load"])
    worst = 0.0
    for i in range(args.repeat):
        r = one_run(args.pages, args.per_page, args.latency, args.concurrency, max_in_flight=2,
                    quiet_wait=args.quiet_wait)
        per_page = r["requests"] / r["pages"]
        worst = max(worst, per_page)
        table.add(i + 1, r["pages"], r["requests"], r["throttled"], r["retries"], f"{per_page:.2f}",
                  r["wall"], r["extract"], f"{r['others']:.2f}")
    rep.table(table)
    rep.line(f"requests per page: worst {worst:.2f} (goal <= {GOAL_REQUESTS_PER_PAGE}): "
             f"{'MET' if worst <= GOAL_REQUESTS_PER_PAGE else 'NOT MET'}")


def rate_check(rep: Report, args) -> None:
    rep.heading(f"Rate limit: {RATE_PAGES} pages with max_requests_per_minute={RATE_LIMIT} "
                f"(concurrency {args.concurrency})", 3)
    r = one_run(RATE_PAGES, args.per_page, 0.0, args.concurrency, max_requests_per_minute=RATE_LIMIT,
                quiet_wait=args.quiet_wait)
    arrivals = r["arrivals"]
    worst = max_in_window(arrivals, 60.0)
    span = min((arrivals[i + RATE_LIMIT] - arrivals[i] for i in range(len(arrivals) - RATE_LIMIT)), default=None)
    loose = max_in_window(arrivals, 59.5)
    table = Table(["requests", "max in any 60 s window", "max in any 59.5 s window",
                   f"min span of {RATE_LIMIT + 1} requests", "run s", "verdict"])
    table.add(r["requests"], worst, loose, f"{span:.3f} s" if span is not None else "—", r["wall"],
              "OK" if worst <= RATE_LIMIT else "OVER LIMIT" + (" (by jitter < 0.5 s)" if loose <= RATE_LIMIT else ""))
    rep.table(table)
    rep.line(f"from the server's request log (arrival times): any {RATE_LIMIT + 1} consecutive requests must span "
             f">= 60 s; the 59.5 s column tells arrival jitter (client counts sends, server counts arrivals) "
             f"from a real burst")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="extract_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=200, help="pages the API serves (default %(default)s)")
    parser.add_argument("--per-page", type=int, default=100, help="records per page (default %(default)s)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per answer (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent run (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (default %(default)s)")
    parser.add_argument("--rate-check", action="store_true",
                        help=f"also check max_requests_per_minute={RATE_LIMIT} over {RATE_PAGES} requests (~70 s)")
    parser.add_argument("--skip-429", action="store_true", help="skip the 429 scenario")
    parser.add_argument("--quiet-wait", type=float, default=30.0, metavar="SECONDS",
                        help="before each run, wait up to this long for other processes to leave the CPUs "
                             "alone (default %(default)s; 0 = never wait)")
    parser.add_argument("--max-other-load", type=float, default=0.2, metavar="CORES",
                        help="speed runs during which other processes and the hypervisor used more cores than "
                             "this (on average) are repeated, up to 3x --repeat runs in all; the report lists "
                             "them (default %(default)s; inf keeps every run)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report as markdown here")
    args = parser.parse_args(argv)
    if args.pages < 2 or args.per_page < 1 or args.repeat < 1 or args.concurrency < 1 or args.latency < 0:
        parser.error("--pages >= 2, --per-page >= 1, --repeat >= 1, --concurrency >= 1, --latency >= 0")

    rep = Report()
    rep.heading("Extraction benchmark: the whole run against the demo API on 127.0.0.1", 1)
    rep.line(machine_line(machine()))
    rep.line("other load = average cores used by other processes on the machine (plus hypervisor steal) "
             f"during a run, the demo API's process not counted; a speed run above {args.max_other_load} "
             "is disturbed and repeated")
    started = time.perf_counter()
    speed(rep, args)
    if not args.skip_429:
        throttled(rep, args)
    if args.rate_check:
        rate_check(rep, args)
    rep.line(f"benchmark took {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.write_text(rep.markdown(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
