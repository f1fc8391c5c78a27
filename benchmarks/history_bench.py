#!/usr/bin/env python3
"""Daily syncs over a growing history: does a sync get slower with every run before it?

    python benchmarks/history_bench.py [--syncs 20] [--pages 200] [--per-page 100]

The demo API (dataset "scale", no latency, its pages pre-rendered) runs in a process of its
own; the whole pipeline (``transform.orchestrate.run``) syncs from it ``--syncs`` times into
one temp warehouse, as a daily job would, twice: as it runs by default (the
``incremental: by_run`` models kept run by run) and with ``--full-refresh`` on every sync
(every model rebuilt from raw, which parses every earlier run's pages again). Per group of
syncs: the build's and the whole run's median seconds, and the warehouse file's size.

Timings are reported, never asserted; the exit status is 0 unless a run fails.
"""

from __future__ import annotations

import argparse
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

from _bench import Report, Table, machine, machine_line  # noqa: E402
from extract_bench import _ServerProcess, customers_for  # noqa: E402


def syncs(base_url: str, count: int, per_page: int, full_refresh: bool) -> list[dict]:
    """``count`` runs into one fresh warehouse; per run: its seconds, the build's, the file's size."""
    from transform import orchestrate
    from transform.orchestrate import Settings

    results = []
    with tempfile.TemporaryDirectory(prefix="history_bench_") as tmp:
        settings = Settings(base_url=base_url, per_page=per_page, concurrency=8, warehouse=Path(tmp) / "w.duckdb",
                            output=Path(tmp) / "out.json", quiet=True, full_refresh=full_refresh)
        for _ in range(count):
            started = time.perf_counter()
            summary = orchestrate.run(settings)
            results.append({"run": time.perf_counter() - started, "build": summary.stage_seconds["build"],
                            "mb": settings.warehouse.stat().st_size / 1e6})
    return results


def groups(count: int) -> list[tuple[int, int]]:
    """Sync numbers in four groups after the first (which has no history), e.g. 2-5, 6-10, ..."""
    if count < 2:
        return [(1, count)]
    size = max(1, (count - 1) // 4)
    bounds, start = [], 2
    while start <= count:
        end = min(count, start + size - 1) if len(bounds) < 3 else count
        bounds.append((start, end))
        start = end + 1
    return bounds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="history_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--syncs", type=int, default=20, help="syncs into one warehouse (default %(default)s)")
    parser.add_argument("--pages", type=int, default=200, help="pages the API serves (default %(default)s)")
    parser.add_argument("--per-page", type=int, default=100, help="records per page (default %(default)s)")
    args = parser.parse_args(argv)
    if args.syncs < 2 or args.pages < 2 or args.per_page < 1:
        parser.error("--syncs >= 2, --pages >= 2, --per-page >= 1")

    rep = Report()
    rep.heading("History benchmark: the same sync again and again into one warehouse", 1)
    rep.line(machine_line(machine()))
    rep.line(f"{args.syncs} syncs of {args.pages} pages x {args.per_page} records from the demo API on 127.0.0.1 "
             "(no latency); medians per group of syncs")
    started = time.perf_counter()
    with _ServerProcess(customers_for(args.pages, args.per_page), 0.0) as server:
        server.warm(args.pages, args.per_page)
        measured = {label: syncs(server.base_url, args.syncs, args.per_page, full_refresh)
                    for label, full_refresh in (("kept run by run", False), ("--full-refresh", True))}
    table = Table(["syncs", *(f"build s ({label})" for label in measured), *(f"run s ({label})" for label in measured),
                   "file MB"])
    for lo, hi in groups(args.syncs):
        picked = {label: results[lo - 1:hi] for label, results in measured.items()}
        table.add(f"{lo}-{hi}" if hi > lo else str(lo),
                  *(statistics.median(r["build"] for r in rs) for rs in picked.values()),
                  *(statistics.median(r["run"] for r in rs) for rs in picked.values()),
                  picked["kept run by run"][-1]["mb"])
    rep.table(table)
    rep.line(f"benchmark took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
