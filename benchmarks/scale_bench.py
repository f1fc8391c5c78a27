#!/usr/bin/env python3
"""Performance at scale: the pipeline per stage against a hand-written floor and a plain-Python baseline.

    python benchmarks/scale_bench.py [--sizes 10000,100000,1000000] [--out results.md]
    python benchmarks/scale_bench.py --smoke          # 2,000 customers, < 60 s; CI runs this

For each size N the demo API (dataset "scale": N distinct customers, duplicate_rate 0.2,
damaged_rate 0.05, no faults, no latency) serves pages of 100 on 127.0.0.1 from this
process, and every measured job runs in a fresh subprocess, so its peak RSS (os.wait4's
ru_maxrss) is its own:

1. the pipeline, stage by stage: extract (+ landing), build (models + data tests +
   publish), export -- ``transform.orchestrate.run`` with one step, as ``pipeline.py
   extract|build|export`` runs it; build is split into models / tests / the rest using
   the seconds the runner records in meta.model_builds and meta.test_results;
2. the floor: benchmarks/floor.sql, one hand-written DuckDB script over a copy of the same
   landed raw.api_pages (copied right after extract), doing the same rules in as few
   passes as possible; and for extraction, a fetch-only client (4 threads, no parse, no
   landing);
3. the plain-Python baseline (benchmarks/python_baseline.py): sequential requests, dicts,
   sorted, json.dump -- fetching included.

Outputs are checked: the floor's and the baseline's customers must match the pipeline's
export (count and customer_id order; every field too for N <= 20,000). Any mismatch is
printed as MISMATCH and the exit status is 1. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import mmap
import re
import shutil
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

from _bench import PYTHON, Report, Table, fmt, machine, machine_line, ratio, run_child, wait_quiet  # noqa: E402

CHILD = str(HERE / "_child.py")
BASELINE = str(HERE / "python_baseline.py")
PER_PAGE = 100
CONCURRENCY = 4
FULL_COMPARE_MAX = 20_000
ID_PATTERN = re.compile(rb'"customer_id"\s*:\s*(-?\d+)')

GOAL_FLOOR_RATIO = 1.5
GOAL_RSS_MB = 2048
GOAL_LINEAR = 12.0


# -- one size -------------------------------------------------------------------------------


def _copy_db(source: Path, target: Path) -> None:
    """A DuckDB file and its WAL (if any), replacing whatever was at ``target``."""
    for suffix in ("", ".wal"):
        Path(str(target) + suffix).unlink(missing_ok=True)
        if Path(str(source) + suffix).exists():
            shutil.copyfile(Path(str(source) + suffix), Path(str(target) + suffix))


def _median_run(runs: list[dict]) -> dict:
    """Per key: the median of the seconds, the largest RSS and load, the last of the rest."""
    merged = dict(runs[-1])
    for key in ("seconds", "wall", "cpu"):
        if all(key in r for r in runs):
            merged[key] = statistics.median(r[key] for r in runs)
    for key in ("rss", "others"):
        if all(key in r for r in runs):
            merged[key] = max(r[key] for r in runs)
    if "phases" in merged:
        merged["phases"] = {k: statistics.median(r["phases"].get(k) or 0 for r in runs) for k in merged["phases"]}
    return merged


def measure(n: int, workdir: Path, timeout: float, quiet_wait: float = 0.0, repeat: int = 1) -> dict:
    from extract.demo_api import DemoAPI

    warehouse = workdir / "pipeline.duckdb"
    landed = workdir / "landed.duckdb"
    floor_warehouse = workdir / "floor.duckdb"
    outputs = {"pipeline": workdir / "pipeline.json", "floor": workdir / "floor.json",
               "baseline": workdir / "baseline.json"}
    result: dict = {"n": n, "waited": 0.0, "repeat": repeat}

    def child(cmd):
        result["waited"] += wait_quiet(quiet_wait) if quiet_wait else 0.0
        return run_child(cmd, timeout)

    def load(c) -> dict:
        return {"others": c.others + c.steal, "cpu": c.cpu}
    with DemoAPI(dataset="scale", customers=n, duplicate_rate=0.2, damaged_rate=0.05, faults="none") as api:
        url = api.base_url
        result["records_served"] = api.total_records

        def stage(step: str, **extra):
            cmd = [PYTHON, CHILD, "stage", step, "--warehouse", str(warehouse), "--base-url", url,
                   "--per-page", str(PER_PAGE), "--concurrency", str(CONCURRENCY)]
            for key, value in extra.items():
                cmd += [f"--{key}", str(value)]
            done = child(cmd)
            return done, done.json()

        _log(f"N={n:,}: extract")
        done, info = stage("extract")
        result["extract"] = {"seconds": info["seconds"], "wall": done.wall, "rss": done.max_rss_mb, **load(done),
                             "pages": info["pages"], "records": info["records"], "requests": info["requests"]}
        _copy_db(warehouse, landed)  # every build and every floor run starts from the very same raw pages

        # build, export and the floor, interleaved: with --repeat, each round restores the
        # landed warehouse and runs all three, so drifts in machine speed hit both sides alike
        builds, exports, floors, ratios = [], [], [], []
        for round_no in range(1, repeat + 1):
            tag = f" (round {round_no} of {repeat})" if repeat > 1 else ""
            if round_no > 1:
                _copy_db(landed, warehouse)
            _log(f"N={n:,}: build{tag}")
            done, info = stage("build")
            models, tests = build_details(warehouse)
            builds.append({"seconds": info["seconds"], "wall": done.wall, "rss": done.max_rss_mb, **load(done),
                           "models_seconds": sum(m[3] or 0 for m in models),
                           "tests_seconds": sum(t[1] or 0 for t in tests)})

            _log(f"N={n:,}: export{tag}")
            done, info = stage("export", output=outputs["pipeline"])
            exports.append({"seconds": info["seconds"], "wall": done.wall, "rss": done.max_rss_mb, **load(done),
                            "customers": info["total_customers"]})

            _log(f"N={n:,}: floor{tag}")
            _copy_db(landed, floor_warehouse)
            done = child([PYTHON, CHILD, "floor", "--warehouse", str(floor_warehouse),
                          "--output", str(outputs["floor"])])
            info = done.json()
            floors.append({"phases": info["phases"], "seconds": info["seconds"], "wall": done.wall,
                           "rss": done.max_rss_mb, **load(done), "result": info["result"]})
            floor_bte = sum(info["phases"].get(k) or 0 for k in ("transform", "export", "metadata"))
            ratios.append((builds[-1]["seconds"] + exports[-1]["seconds"]) / floor_bte if floor_bte else None)
        result["build"], result["export"], result["floor"] = _median_run(builds), _median_run(exports), _median_run(floors)
        for key in ("models_seconds", "tests_seconds"):
            result["build"][key] = statistics.median(b[key] for b in builds)
        result["round_ratios"] = ratios
        result["models"], result["tests"] = models, tests  # per model: the last round's
        result["warehouse_mb"] = warehouse.stat().st_size / 2**20

        _log(f"N={n:,}: fetch-only floor")
        done = child([PYTHON, CHILD, "fetch", "--base-url", url, "--per-page", str(PER_PAGE),
                      "--concurrency", str(CONCURRENCY)])
        info = done.json()
        result["fetch"] = {"seconds": info["seconds"], "wall": done.wall, "rss": done.max_rss_mb, **load(done)}

        _log(f"N={n:,}: python baseline")
        done = child([PYTHON, BASELINE, "--base-url", url, "--per-page", str(PER_PAGE),
                      "--output", str(outputs["baseline"])])
        info = done.json()
        result["baseline"] = {**info, "wall": done.wall, "rss": done.max_rss_mb, **load(done)}

    _log(f"N={n:,}: comparing outputs")
    result["checks"] = compare(outputs, n)
    return result


def build_details(warehouse: Path) -> tuple[list[tuple], list[tuple]]:
    """Per-model and per-test seconds of the latest build, as the runner recorded them."""
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        models = con.execute(
            """
            select model, materialized, rows, seconds from meta.model_builds
            where built_at = (select max(built_at) from meta.model_builds)
            """
        ).fetchall()
        tests = con.execute(
            """
            select test, seconds from meta.test_results
            where tested_at = (select max(tested_at) from meta.test_results)
            order by test
            """
        ).fetchall()
    finally:
        con.close()
    return models, tests


def customer_ids(path: Path) -> list[int]:
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return [int(m[1]) for m in ID_PATTERN.finditer(data)]


def compare(outputs: dict[str, Path], n: int) -> dict[str, dict]:
    """Floor and baseline against the pipeline's export: count, id order, (small N) every field."""
    reference = customer_ids(outputs["pipeline"])
    checks = {}
    full = n <= FULL_COMPARE_MAX
    if full:
        with open(outputs["pipeline"], encoding="utf-8") as fh:
            pipeline_customers = json.load(fh)["customers"]
    for name in ("floor", "baseline"):
        ids = customer_ids(outputs[name])
        check = {"count": len(ids), "reference": len(reference), "order": ids == reference, "fields": None}
        if full:
            with open(outputs[name], encoding="utf-8") as fh:
                doc = json.load(fh)
            customers = doc if isinstance(doc, list) else doc["customers"]
            check["fields"] = customers == pipeline_customers
            if not check["fields"]:
                diff = next((i for i, (a, b) in enumerate(zip(customers, pipeline_customers)) if a != b), None)
                if diff is not None:
                    check["first_difference"] = {"index": diff, name: customers[diff],
                                                 "pipeline": pipeline_customers[diff]}
        check["ok"] = check["count"] == check["reference"] and check["order"] and check["fields"] is not False
        checks[name] = check
    return checks


# -- reporting ---------------------------------------------------------------------------------


def stage_rows(r: dict) -> list[dict]:
    """The comparable stages of one size: name, pipeline s, floor s, peak RSS, process wall."""
    build, export, extract = r["build"], r["export"], r["extract"]
    models = build.get("models_seconds", sum(s or 0 for _, _, _, s in r["models"]))
    tests = build.get("tests_seconds", sum(s or 0 for _, s in r["tests"]))
    phases = r["floor"]["phases"]
    floor_transform = phases.get("transform")
    floor_export = (phases.get("export") or 0) + (phases.get("metadata") or 0)
    bte = build["seconds"] + export["seconds"]
    return [
        {"stage": "extract + land", "pipeline": extract["seconds"], "floor": r["fetch"]["seconds"],
         "rss": extract["rss"], "wall": extract["wall"], "key": "extract",
         "others": max(extract["others"], r["fetch"]["others"])},
        {"stage": "build: models", "pipeline": models, "floor": floor_transform, "key": "models"},
        {"stage": "build: data tests", "pipeline": tests, "floor": None, "key": "tests"},
        {"stage": "build: bookkeeping (hashes, meta, comments, commit)", "pipeline": build["seconds"] - models - tests,
         "floor": None, "key": "publish"},
        {"stage": "build (models+tests+publish)", "pipeline": build["seconds"], "floor": floor_transform,
         "rss": build["rss"], "wall": build["wall"], "key": "build",
         "others": max(build["others"], r["floor"]["others"])},
        {"stage": "export", "pipeline": export["seconds"], "floor": floor_export,
         "rss": export["rss"], "wall": export["wall"], "key": "export",
         "others": max(export["others"], r["floor"]["others"])},
        {"stage": "build + test + export", "pipeline": bte, "floor": floor_transform + floor_export,
         "rss": max(build["rss"], export["rss"]), "wall": build["wall"] + export["wall"], "key": "bte",
         "others": max(build["others"], export["others"], r["floor"]["others"])},
        {"stage": "end to end", "pipeline": extract["seconds"] + bte, "floor": None,
         "rss": max(extract["rss"], build["rss"], export["rss"]),
         "wall": extract["wall"] + build["wall"] + export["wall"], "key": "e2e",
         "others": max(extract["others"], build["others"], export["others"])},
    ]


def report_size(rep: Report, r: dict) -> None:
    n = r["n"]
    rep.heading(f"N = {n:,} customers ({r['extract']['records']:,} records, {r['extract']['pages']:,} pages "
                f"of {PER_PAGE}, concurrency {CONCURRENCY})", 3)
    table = Table(["stage", "pipeline s", "floor s", "ratio", "peak RSS MB", "process s", "other load"])
    for row in stage_rows(r):
        table.add(row["stage"], row["pipeline"], row["floor"], ratio(row["pipeline"], row["floor"]),
                  row.get("rss"), row.get("wall"), f"{row['others']:.2f}" if "others" in row else None)
    rep.table(table)
    rep.line("pipeline s = in-run seconds of the stage (RunSummary.stage_seconds); process s = the whole "
             "child process (interpreter start, connect, checkpoint); floor for extract = fetch only "
             "(4 threads, no parse/landing); floor for build = floor.sql transform pass, for export = its "
             "sort + COPY + metadata; other load = average cores used by other processes on the "
             "machine (plus hypervisor steal) while pipeline or floor ran: above ~0.2 the timing is disturbed"
             + (f"; waited {r['waited']:.0f} s in all for a quiet machine" if r["waited"] >= 1 else "") + ".")
    if r.get("repeat", 1) > 1:
        rep.line(f"build, export and floor ran {r['repeat']} times each, interleaved, from the same landed pages; "
                 "the table shows medians (peak RSS and load: the largest); build+test+export / floor per round: "
                 + ", ".join(f"{x:.2f}x" for x in r["round_ratios"] if x))
    fl, bl = r["floor"], r["baseline"]
    e2e_wall = r["extract"]["wall"] + r["build"]["wall"] + r["export"]["wall"]
    rep.line(f"floor.sql process: {fmt(fl['wall'])} s, peak RSS {fmt(fl['rss'])} MB, other load {fl['others']:.2f} "
             f"(phases: " + ", ".join(f"{k} {fmt(v)} s" for k, v in fl["phases"].items()) + ")")
    rep.line(f"python baseline: {fmt(bl['wall'])} s end to end (fetch {fmt(bl['fetch'])} s, rules+sort "
             f"{fmt(bl['transform'])} s, json.dump {fmt(bl['write'])} s), peak RSS {fmt(bl['rss'])} MB, "
             f"other load {bl['others']:.2f}")
    rep.line(f"pipeline end to end (3 processes): {fmt(e2e_wall)} s = {fmt(r['extract']['records'] / e2e_wall)} "
             f"records/s; python baseline {fmt(bl['records'] / bl['wall'])} records/s; pipeline/baseline = "
             f"{ratio(e2e_wall, bl['wall'])}; warehouse file {fmt(r['warehouse_mb'])} MB")
    for name, check in r["checks"].items():
        verdict = "OK" if check["ok"] else "MISMATCH"
        fields = {None: "not compared", True: "identical", False: "DIFFERENT"}[check["fields"]]
        rep.line(f"check {name} vs pipeline: {verdict} (customers {check['count']:,} vs {check['reference']:,}, "
                 f"customer_id order {'same' if check['order'] else 'DIFFERENT'}, all fields {fields})")
        if "first_difference" in check:
            rep.line(f"  first difference: {json.dumps(check['first_difference'], ensure_ascii=False)}")
    models = Table(["model / test", "kind", "rows", "seconds", "share of build"])
    build_s = r["build"]["seconds"] or 1
    for model, materialized, rows, seconds in r["models"]:
        models.add(model, materialized, rows, seconds, f"{100 * (seconds or 0) / build_s:.0f}%")
    for test, seconds in r["tests"]:
        models.add(test, "test", None, seconds, f"{100 * (seconds or 0) / build_s:.0f}%")
    rep.line(f"per model / test (meta.model_builds, meta.test_results), build stage {fmt(build_s)} s:")
    rep.table(models)


def report_linearity(rep: Report, results: dict[int, dict]) -> dict | None:
    sizes = sorted(results)
    pairs = [(a, b) for a in sizes for b in sizes if b == 10 * a]
    if not pairs:
        return None
    small, big = pairs[-1]
    rep.heading(f"Linearity: {big:,} vs {small:,} customers (goal: each stage <= {GOAL_LINEAR:.0f}x)", 3)
    table = Table(["stage", f"s at {small:,}", f"s at {big:,}", "ratio", "verdict"])
    worst = 0.0
    rows_small = {row["key"]: row for row in stage_rows(results[small])}
    for row in stage_rows(results[big]):
        a, b = rows_small[row["key"]]["pipeline"], row["pipeline"]
        x = b / a if a and a > 0.001 else None
        tiny = a is None or a < 0.1 or row["key"] == "publish"  # fixed costs and timer noise
        if x is not None and not tiny:
            worst = max(worst, x)
        verdict = "—" if x is None else "ok" if x <= GOAL_LINEAR else "SUPERLINEAR"
        table.add(row["stage"], a, b, f"{x:.1f}x" if x else "—", verdict + (" (not counted)" if tiny else ""))
    rep.table(table)
    rep.line("not counted: stages under 0.1 s at the smaller size, and the build's bookkeeping (mostly fixed costs)")
    return {"small": small, "big": big, "worst": worst}


def report_goals(rep: Report, results: dict[int, dict], linear: dict | None) -> None:
    n = max(results)
    r = results[n]
    rows = {row["key"]: row for row in stage_rows(r)}
    rep.heading(f"Goals (measured at N = {n:,}{'' if n >= 1_000_000 else '; the goals are stated for 1,000,000'})", 3)
    table = Table(["goal", "measured", "verdict"])
    bte = rows["bte"]
    x = bte["pipeline"] / bte["floor"] if bte["floor"] else None
    rounds = [v for v in r.get("round_ratios") or [] if v]
    per_round = (f"; per round {', '.join(f'{v:.2f}x' for v in rounds)}, median {statistics.median(rounds):.2f}x"
                 if len(rounds) > 1 else "")
    table.add(f"build+test+export within {GOAL_FLOOR_RATIO}x of the floor",
              f"{fmt(bte['pipeline'])} s vs {fmt(bte['floor'])} s = {x:.2f}x{per_round}" if x else "—",
              "MET" if x and x <= GOAL_FLOOR_RATIO else "NOT MET")
    peak = rows["e2e"]["rss"]
    table.add(f"peak RSS of a run < {GOAL_RSS_MB} MB", f"{fmt(peak)} MB (max over stages)",
              "MET" if peak < GOAL_RSS_MB else "NOT MET")
    if linear:
        table.add(f"linear growth ({linear['big']:,} / {linear['small']:,} <= {GOAL_LINEAR:.0f}x per stage)",
                  f"worst stage {linear['worst']:.1f}x", "MET" if linear["worst"] <= GOAL_LINEAR else "NOT MET")
    else:
        table.add("linear growth", "needs two sizes 10x apart", "—")
    e2e = rows["e2e"]["wall"]
    base = r["baseline"]["wall"]
    table.add("pipeline end to end beats the Python baseline", f"{fmt(e2e)} s vs {fmt(base)} s",
              "MET" if e2e < base else "NOT MET")
    rep.table(table)


def code_version() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sql", "transform", "extract", "pipeline.py"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"commit {head or 'unknown'}" + (" + uncommitted changes in sql/transform/extract" if dirty else "")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- main --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scale_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated customer counts (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report as markdown here")
    parser.add_argument("--smoke", action="store_true", help="2,000 customers only, < 60 s (CI)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep warehouses and exports here (default: a temp dir, removed)")
    parser.add_argument("--repeat", type=int, default=1, metavar="K",
                        help="build, export and floor K times each, interleaved, from the same landed pages; "
                             "report medians (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=3600, help="per child process, seconds")
    parser.add_argument("--quiet-wait", type=float, default=None, metavar="SECONDS",
                        help="before each measured process, wait up to this long for other processes to "
                             "leave the CPUs alone (default 60; 0 with --smoke)")
    args = parser.parse_args(argv)
    try:
        sizes = [2000] if args.smoke else [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated whole numbers, not {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--sizes needs at least one positive size")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.smoke else 60.0)
    rep = Report()
    rep.heading("Scale benchmark: customers pipeline vs floor.sql vs plain Python", 1)
    info = machine()
    rep.line(machine_line(info))
    rep.line(f"code: {code_version()}")
    rep.line(f"sizes: {', '.join(f'{n:,}' for n in sizes)}; demo API dataset=scale, duplicate_rate=0.2, "
             f"damaged_rate=0.05, per_page={PER_PAGE}, no latency, no faults; pipeline concurrency {CONCURRENCY}")
    started = time.perf_counter()
    results: dict[int, dict] = {}
    for n in sizes:
        if args.workdir:
            workdir = args.workdir / f"n{n}"
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            results[n] = measure(n, workdir, args.timeout, quiet_wait, args.repeat)
        else:
            with tempfile.TemporaryDirectory(prefix=f"scale_bench_{n}_") as tmp:
                results[n] = measure(n, Path(tmp), args.timeout, quiet_wait, args.repeat)
        report_size(rep, results[n])
    linear = report_linearity(rep, results)
    report_goals(rep, results, linear)
    ok = all(check["ok"] for r in results.values() for check in r["checks"].values())
    rep.line(f"outputs: {'OK' if ok else 'MISMATCH'} (floor and baseline vs pipeline export); "
             f"benchmark took {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.write_text(rep.markdown(), encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
