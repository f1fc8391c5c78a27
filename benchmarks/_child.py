"""The processes the benchmarks measure, one job per process (so peak RSS is that job's).

    python benchmarks/_child.py stage extract|build|export --warehouse W [--output O] [--base-url U]
    python benchmarks/_child.py floor --warehouse W --output O      # benchmarks/floor.sql
    python benchmarks/_child.py fetch --base-url U --per-page N --concurrency C

``stage`` runs one step through ``transform.orchestrate.run`` -- exactly what
``python pipeline.py extract|build|export -q`` runs, minus argument parsing -- and prints
one JSON line with the in-run seconds of the stage (``RunSummary.stage_seconds``).
``fetch`` is the extraction floor: every page fetched by C threads with pooled sessions,
bodies read and thrown away (no JSON parse, no landing).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def stage(args) -> dict:
    from transform import orchestrate
    from transform.orchestrate import Settings

    settings = Settings(
        base_url=args.base_url or "http://127.0.0.1:1/api",
        per_page=args.per_page,
        concurrency=args.concurrency,
        warehouse=Path(args.warehouse),
        output=Path(args.output or (Path(args.warehouse).parent / "out.json")),
        quiet=True,
        threads=args.threads,
    )
    started = time.perf_counter()
    summary = orchestrate.run(settings, (args.step,))
    return {
        "step": args.step,
        "seconds": summary.stage_seconds.get(args.step),
        "run_seconds": time.perf_counter() - started,
        "pages": summary.pages,
        "records": summary.records,
        "requests": summary.requests,
        "retries": summary.retries,
        "total_customers": (summary.metadata or {}).get("total_customers"),
    }


def split_phases(script: str) -> list[tuple[str, str]]:
    """``-- @phase name`` lines split the script into (name, sql) parts."""
    phases: list[tuple[str, list[str]]] = []
    for line in script.splitlines():
        stripped = line.strip()
        if stripped.startswith("-- @phase"):
            phases.append((stripped.split(None, 2)[2].strip(), []))
        elif phases:
            phases[-1][1].append(line)
    return [(name, "\n".join(lines).strip()) for name, lines in phases if "\n".join(lines).strip()]


def floor(args) -> dict:
    import duckdb

    script = Path(args.sql).read_text(encoding="utf-8")
    literal = "'" + str(Path(args.output).resolve()).replace("'", "''") + "'"
    config = {"threads": args.threads} if args.threads else {}
    started = time.perf_counter()
    con = duckdb.connect(args.warehouse, read_only=True, config=config)
    timings: dict[str, float] = {"connect": time.perf_counter() - started}
    result: dict = {}
    for name, sql in split_phases(script):
        t0 = time.perf_counter()
        cursor = con.execute(sql.replace("__OUTPUT__", literal))
        if cursor.description:
            names = [d[0] for d in cursor.description]
            row = cursor.fetchone()
            if row is not None:
                result = dict(zip(names, row))  # the last query's row (metadata) is kept
        timings[name] = time.perf_counter() - t0
    con.close()
    return {"phases": timings, "seconds": time.perf_counter() - started, "result": result}


def fetch(args) -> dict:
    import requests

    local = threading.local()

    def get(page: int) -> bytes:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        response = session.get(f"{args.base_url}/users", params={"page": page, "per_page": args.per_page},
                                timeout=30)
        response.raise_for_status()
        return response.content

    started = time.perf_counter()
    first = json.loads(get(1))
    total_pages = int(first["total_pages"])
    size = 0
    with futures.ThreadPoolExecutor(args.concurrency) as pool:
        for body in pool.map(get, range(2, total_pages + 1)):
            size += len(body)
    return {"seconds": time.perf_counter() - started, "pages": total_pages, "bytes": size}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="_child.py")
    sub = parser.add_subparsers(dest="job", required=True)
    s = sub.add_parser("stage")
    s.add_argument("step", choices=("extract", "build", "export"))
    f = sub.add_parser("floor")
    f.add_argument("--sql", default=str(HERE / "floor.sql"))
    g = sub.add_parser("fetch")
    for p in (s, f, g):
        p.add_argument("--warehouse", default=None)
        p.add_argument("--output", default=None)
        p.add_argument("--base-url", default=None)
        p.add_argument("--per-page", type=int, default=100)
        p.add_argument("--concurrency", type=int, default=4)
        p.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    result = {"stage": stage, "floor": floor, "fetch": fetch}[args.job](args)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
