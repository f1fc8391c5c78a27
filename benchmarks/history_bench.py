#!/usr/bin/env python3
"""Daily syncs over a growing history: does a sync get slower with every run before it?

    python benchmarks/history_bench.py [--syncs 20] [--pages 200] [--per-page 100] [--merge-row-groups]

The demo API (dataset "scale", no latency, its pages pre-rendered) runs in a process of its
own; the whole pipeline (``transform.orchestrate.run``) syncs from it ``--syncs`` times into
a temp warehouse per way of running, as a daily job would, the ways taking turns:

- as it runs: ``incremental: by_run`` models kept run by run, and DuckDB told not to merge
  the row groups of a table (``max_vacuum_tasks`` 0, ``transform/warehouse.py``);
- ``--full-refresh`` on every sync: every model rebuilt from raw, which parses every
  earlier run's pages again;
- with ``--merge-row-groups``, also DuckDB's default: each checkpoint merges the small row
  groups the syncs appended to ``raw.api_pages``, so it writes their pages again.

Per group of syncs: the build's and the whole run's median seconds, the slowest run, and the
warehouse file's size at the group's end. Timings are reported, never asserted; the exit
status is 0 unless a run fails.
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


class Way:
    """One way of running, syncing into a warehouse of its own in ``folder``; ``results``: per
    sync, its seconds, the build's, and the file's size after it."""

    def __init__(self, label: str, full_refresh: bool, merge_row_groups: bool, base_url: str, per_page: int,
                 folder: Path):
        from transform.orchestrate import Settings

        self.label, self.merge_row_groups, self.results = label, merge_row_groups, []
        folder.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(base_url=base_url, per_page=per_page, concurrency=8,
                                 warehouse=folder / "w.duckdb", output=folder / "out.json", quiet=True,
                                 full_refresh=full_refresh)

    def sync(self) -> None:
        from transform import orchestrate, warehouse

        own_config = warehouse._duckdb_config
        if self.merge_row_groups:  # DuckDB's default instead of the pipeline's setting
            warehouse._duckdb_config = lambda config: {k: v for k, v in own_config(config).items()
                                                       if k != "max_vacuum_tasks"}
        try:
            started = time.perf_counter()
            summary = orchestrate.run(self.settings)
            self.results.append({"run": time.perf_counter() - started, "build": summary.stage_seconds["build"],
                                 "mb": self.settings.warehouse.stat().st_size / 1e6})
        finally:
            warehouse._duckdb_config = own_config


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
    parser.add_argument("--merge-row-groups", action="store_true",
                        help="also sync with DuckDB's default row-group merging at each checkpoint")
    args = parser.parse_args(argv)
    if args.syncs < 2 or args.pages < 2 or args.per_page < 1:
        parser.error("--syncs >= 2, --pages >= 2, --per-page >= 1")

    ways = [("as it runs", False, False), ("--full-refresh", True, False)]
    if args.merge_row_groups:
        ways.append(("row groups merged", False, True))
    rep = Report()
    rep.heading("History benchmark: the same sync again and again into one warehouse", 1)
    rep.line(machine_line(machine()))
    rep.line(f"{args.syncs} syncs of {args.pages} pages x {args.per_page} records from the demo API on 127.0.0.1 "
             "(no latency), per way of running; medians per group of syncs")
    started = time.perf_counter()
    with _ServerProcess(customers_for(args.pages, args.per_page), 0.0) as server, \
            tempfile.TemporaryDirectory(prefix="history_bench_") as tmp:
        server.warm(args.pages, args.per_page)
        runners = [Way(label, full_refresh, merge, server.base_url, args.per_page, Path(tmp) / f"way{i}")
                   for i, (label, full_refresh, merge) in enumerate(ways)]
        for number in range(args.syncs):  # interleaved, the order alternating: a drifting machine hits all alike
            for way in runners if number % 2 == 0 else runners[::-1]:
                way.sync()
    table = Table(["syncs", "way", "build s", "run s", "slowest run s", "file MB"])
    for lo, hi in groups(args.syncs):
        for way in runners:
            picked = way.results[lo - 1:hi]
            table.add(f"{lo}-{hi}" if hi > lo else str(lo), way.label, statistics.median(r["build"] for r in picked),
                      statistics.median(r["run"] for r in picked), max(r["run"] for r in picked), picked[-1]["mb"])
    rep.table(table)
    rep.line(f"benchmark took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
