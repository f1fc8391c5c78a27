"""Data docs: one static HTML page that shows what is in the warehouse.

    render_docs(con, project) -> str            the page
    write_docs(con, project, output) -> Path    written atomically (temp file + os.replace)

The page answers "what is in the warehouse, where did it come from, and can I trust it?":
a verdict, the lineage graph (drawn from the same ``Project`` dependency graph the runner
builds from), the quality distribution and its trend, the data tests, the runs, and every
model with its columns and SQL.

Every number on it is read from the warehouse with SQL (``meta.*``, ``raw.runs``,
``marts.*``, ``duckdb_columns()``), so the page and a query in DBeaver never disagree;
Python only lays it out. The page is self-contained: inline CSS and inline SVG, no script,
no external URL of any kind, and a Content-Security-Policy that forbids loading anything.
Everything that comes from data or SQL is HTML-escaped (and ``://`` is written as
``&#58;//`` so that even a URL in an error message is text, never a reference).

``con`` may be read-only. A warehouse that lacks some tables (nothing built yet, an older
file without ``meta.run_quality``) gets a page that says so instead of an error.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from .export import clear_leftovers, temp_beside
from .project import LAYERS, Project
from .warehouse import check_replaceable, fetch_dicts as _rows, sql_literal

__all__ = ["render_docs", "write_docs", "write_page", "DEFAULT_OUTPUT"]

DEFAULT_OUTPUT = Path("warehouse/docs/index.html")
RUNS_SHOWN = 20
TREND_SHOWN = 12
ISSUES_SHOWN = 10
RAW_LAYER = "raw"
TS = "%Y-%m-%d %H:%M:%S"  # every timestamp on the page is UTC, formatted by DuckDB


# -- small helpers ------------------------------------------------------------------------------


def esc(value) -> str:
    """HTML-escape text from data or SQL; ``://`` becomes ``&#58;//`` (text, never a link)."""
    if value is None:
        return ""
    return html.escape(str(value), quote=True).replace("://", "&#58;//")


def _num(value, digits: int = 0) -> str:
    if value is None:
        return "—"
    if digits:
        return f"{float(value):,.{digits}f}"
    return f"{int(value):,}"


def _secs(value) -> str:
    if value is None:
        return "—"
    value = float(value)
    return f"{value:.3f}s" if value < 1 else f"{value:,.2f}s"


def _clip(text, limit: int = 240) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _ts(column: str) -> str:
    """SQL that formats a timestamptz column as UTC text."""
    return f"strftime(timezone('UTC', {column}), '{TS}')"


@dataclass
class _Warehouse:
    """What the page reads, all fetched up front with SQL."""

    relations: set[str] = field(default_factory=set)
    info: dict = field(default_factory=dict)
    published: dict[str, dict] = field(default_factory=dict)
    last_built: dict[str, dict] = field(default_factory=dict)
    last_attempt: dict[str, dict] = field(default_factory=dict)
    tests_latest: dict[str, dict] = field(default_factory=dict)
    tests_at_publish: dict[str, dict] = field(default_factory=dict)
    columns: dict[str, list[dict]] = field(default_factory=dict)
    raw_counts: dict[str, dict] = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    runs_total: int = 0
    latest_run: dict | None = None
    histogram: list[dict] = field(default_factory=list)
    buckets: list[dict] = field(default_factory=list)
    issues: list[dict] = field(default_factory=list)
    customers: dict = field(default_factory=dict)
    trend: list[dict] | None = None  # None: no meta.run_quality table
    trend_total_column: str = "customers"


def _relations(con) -> set[str]:
    rows = con.execute(
        """
        select schema_name || '.' || table_name from duckdb_tables() where database_name = current_database()
        union all
        select schema_name || '.' || view_name from duckdb_views()
        where database_name = current_database() and not internal
        """
    ).fetchall()
    return {r[0] for r in rows}


def _runs(pending_run: dict | None) -> str:
    """``raw.runs``, or with the final status a run is about to record laid over its row
    (``pending_run``: run_id, status, finished_at, customers_exported, export_path)."""
    if not pending_run:
        return "raw.runs"
    run_id = int(pending_run["run_id"])
    exported = pending_run.get("customers_exported")
    path = pending_run.get("export_path")
    values = {
        "status": sql_literal(str(pending_run["status"])),
        "finished_at": f"{sql_literal(pending_run['finished_at'].isoformat())}::timestamptz",
        "customers_exported": str(int(exported)) if exported is not None else "null",
        "export_path": sql_literal(str(path)) if path is not None else "null",
    }
    replaced = ", ".join(f"case when run_id = {run_id} then {value} else {column} end as {column}"
                         for column, value in values.items())
    return f"(select * replace ({replaced}) from raw.runs)"


def _read(con, project: Project, pending_run: dict | None = None) -> _Warehouse:
    w = _Warehouse(relations=_relations(con))
    has = w.relations.__contains__
    runs = _runs(pending_run)
    w.info = _rows(
        con,
        f"""
        select {_ts('now()')} as generated_at, version() as duckdb_version,
               (select path from duckdb_databases() where database_name = current_database()) as path
        """,
    )[0]

    if has("meta.published_models"):
        for row in _rows(
            con,
            f"""
            select model, relation, materialized, version, rows, run_id, {_ts('published_at')} as published_at
            from meta.published_models
            """,
        ):
            w.published[row["model"]] = row
    if has("meta.model_builds"):
        for row in _rows(
            con,
            f"""
            select model, version, status, rows, seconds, run_id, {_ts('built_at')} as built_at, error
            from meta.model_builds
            where status = 'built'
            qualify row_number() over (partition by model order by built_at desc) = 1
            """,
        ):
            w.last_built[row["model"]] = row
        for row in _rows(
            con,
            f"""
            select model, version, status, run_id, {_ts('built_at')} as built_at, error
            from meta.model_builds
            qualify row_number() over (partition by model order by built_at desc, status = 'built') = 1
            """,
        ):
            w.last_attempt[row["model"]] = row
    if has("meta.test_results"):
        runs_join = has("raw.runs")
        for row in _rows(
            con,
            f"""
            select t.test, t.failing_rows, t.status, t.seconds, t.run_id, {_ts('t.tested_at')} as tested_at,
                   {"r.status" if runs_join else "null"} as run_status,
                   {"r.failed_stage" if runs_join else "null"} as run_failed_stage
            from meta.test_results as t
            {f"left join {runs} as r on r.run_id = t.run_id" if runs_join else ""}
            qualify row_number() over (partition by t.test order by t.tested_at desc) = 1
            """,
        ):
            w.tests_latest[row["test"]] = row
        if has("meta.published_models"):
            # the results the published state passed: recorded in the same commit as the last publish
            for row in _rows(
                con,
                f"""
                select test, failing_rows, status, run_id, {_ts('tested_at')} as tested_at
                from meta.test_results
                where tested_at = (select max(published_at) from meta.published_models)
                """,
            ):
                w.tests_at_publish[row["test"]] = row
    for row in _rows(
        con,
        """
        select schema_name || '.' || table_name as relation, column_name, data_type, comment
        from duckdb_columns()
        where database_name = current_database()
        order by schema_name, table_name, column_index
        """,
    ):
        w.columns.setdefault(row["relation"], []).append(row)

    if has("raw.api_pages") and has("raw.runs"):
        w.raw_counts["raw.api_pages"] = _rows(
            con,
            f"""
            select count(*) as rows, count(distinct run_id) as runs,
                   coalesce(sum(record_count), 0) as records, {_ts('max(fetched_at)')} as last_at,
                   (select count(*) from raw.runs where pages_landed > 0
                        and run_id not in (select distinct run_id from raw.api_pages)) as pruned_runs
            from raw.api_pages
            """,
        )[0]
        w.raw_counts["raw.runs"] = _rows(
            con, f"select count(*) as rows, count(*) as runs, {_ts('max(started_at)')} as last_at from raw.runs"
        )[0]
    if has("raw.runs"):
        w.runs = _rows(
            con,
            f"""
            select run_id, status, {_ts('started_at')} as started_at, {_ts('finished_at')} as finished_at,
                   date_diff('millisecond', started_at, finished_at) / 1000.0 as seconds,
                   failed_stage, error, source_url, per_page, concurrency, resumes,
                   pages_expected, pages_landed, records_landed, reported_total,
                   requests, retries, throttled, customers_exported
            from {runs}
            order by run_id desc
            limit {RUNS_SHOWN}
            """,
        )
        w.runs_total = con.execute("select count(*) from raw.runs").fetchone()[0]
        w.latest_run = w.runs[0] if w.runs else None

    dim = project.models.get("dim_customers")
    if dim is not None and has(dim.relation):
        w.customers = _rows(
            con,
            f"""
            select count(*) as total_customers,
                   round(avg(data_quality_score), 2) as average_quality_score,
                   count(*) filter (where len(quality_issues) = 0) as without_issues,
                   max(run_id) as run_id,
                   count(*) filter (where data_quality_score is null) as unscored
            from {dim.relation}
            """,
        )[0]
        # one bar per score value 0, 10, .., 100; the bar takes the bucket of its customers
        w.histogram = _rows(
            con,
            f"""
            with bins as (
                select unnest(generate_series(0, 100, 10)) as score_bin
            ),
            scored as (
                select
                    least(100, greatest(0, floor(data_quality_score / 10) * 10))::integer as score_bin,
                    quality_bucket
                from {dim.relation}
                where data_quality_score is not null
            )
            select
                bins.score_bin,
                count(scored.score_bin) as customers,
                mode(scored.quality_bucket) as quality_bucket
            from bins
            left join scored on scored.score_bin = bins.score_bin
            group by bins.score_bin
            order by bins.score_bin
            """,
        )
        w.issues = _rows(
            con,
            f"""
            with issues as (
                select unnest(quality_issues) as issue from {dim.relation}
            )
            select
                issue,
                count(*) as customers,
                round(count(*) / (select count(*) from {dim.relation}), 4) as share
            from issues
            group by issue
            order by customers desc, issue
            limit {ISSUES_SHOWN}
            """,
        )
        summary = project.models.get("customer_quality_summary")
        if summary is not None and has(summary.relation):
            w.buckets = _rows(
                con,
                f"select quality_bucket, customers, share, avg_data_quality_score from {summary.relation}",
            )
        else:
            w.buckets = _rows(
                con,
                f"""
                select quality_bucket, count(*) as customers,
                       round(count(*) / sum(count(*)) over (), 4) as share,
                       round(avg(data_quality_score), 2) as avg_data_quality_score
                from {dim.relation}
                group by quality_bucket
                order by min(data_quality_score) desc
                """,
            )
    if has("meta.run_quality"):
        names = {c["column_name"] for c in w.columns.get("meta.run_quality", [])}
        w.trend_total_column = "customers" if "customers" in names else "total"
        avg = "avg_score" if "avg_score" in names else "null"
        w.trend = _rows(
            con,
            f"""
            select * exclude (published_ts) from (
                select run_id, {_ts('published_at')} as published_at, published_at as published_ts,
                       {w.trend_total_column} as total, high, medium, low, round({avg}, 2) as avg_score
                from meta.run_quality
                order by published_ts desc
                limit {TREND_SHOWN}
            ) order by published_ts
            """,
        )
    return w


# -- the project side -----------------------------------------------------------------------------


@dataclass
class _Node:
    key: str  # model name, or the raw relation
    label: str
    layer: str
    parents: list[str]
    column: int = 0
    y: float = 0.0


def _test_targets(project: Project) -> dict[str, set[str]]:
    """Per test: the models (and raw sources) its SQL reads."""
    targets = {}
    for test in project.tests.values():
        _, refs, sources = project.render(test.template, test.path)
        targets[test.name] = set(refs) | {f"{s}.{t}" for s, t in sources}
    return targets


def _graph(project: Project) -> list[_Node]:
    """The lineage nodes, parents before children: the raw sources, then the models in build order.
    One column per layer (raw, staging, intermediate, marts)."""
    sources = sorted({f"{s}.{t}" for m in project.models.values() for s, t in m.sources})
    nodes: dict[str, _Node] = {s: _Node(s, s, RAW_LAYER, []) for s in sources}
    for model in project.order:  # topological: parents first
        parents = sorted(model.refs) + sorted(f"{s}.{t}" for s, t in model.sources)
        nodes[model.name] = _Node(model.name, model.relation, model.schema, parents)
    layers = [layer for layer in (RAW_LAYER, *LAYERS) if any(n.layer == layer for n in nodes.values())]
    for node in nodes.values():
        node.column = layers.index(node.layer)
    return list(nodes.values())


# -- page parts ------------------------------------------------------------------------------------

CSS = """
:root { --ink:#1f2430; --muted:#5b6475; --line:#d9dee7; --bg:#f5f7fa; --card:#fff;
        --ok:#1a7f37; --okbg:#e6f4ea; --bad:#c62828; --badbg:#fdecea; --warn:#9a6700; --warnbg:#fff4d6;
        --high:#2e7d32; --medium:#ef9f00; --low:#d32f2f; --accent:#3157d5; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:#1f2a44; color:#fff; padding:18px 28px 14px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:650; }
header .sub { color:#c9d2e6; font-size:13px; }
header .sub code { color:#fff; background:rgba(255,255,255,.1); }
nav { background:#26324f; padding:0 28px; position:sticky; top:0; z-index:2; }
nav a { color:#dfe6f5; text-decoration:none; display:inline-block; padding:8px 12px 8px 0; margin-right:10px; font-size:13px; }
nav a:hover { color:#fff; text-decoration:underline; }
main { max-width:1400px; margin:0 auto; padding:18px 24px 60px; }
section { margin-top:22px; }
h2 { font-size:18px; margin:0 0 10px; padding-bottom:4px; border-bottom:2px solid var(--line); }
h3 { font-size:15px; margin:0 0 8px; }
p.note { color:var(--muted); margin:4px 0 10px; font-size:13px; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size:12px; }
code { background:#eef1f6; padding:1px 4px; border-radius:3px; }
a { color:var(--accent); text-decoration:none; }
a:hover { text-decoration:underline; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:14px 16px; }
.grid { display:grid; gap:16px; }
.grid.kpis { grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); }
.grid.two { grid-template-columns: minmax(0, 1.25fr) minmax(0, 1fr); }
.kpi .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.kpi .value { font-size:24px; font-weight:650; margin:2px 0; }
.kpi .detail { color:var(--muted); font-size:12.5px; overflow-wrap:anywhere; }
.verdict { border-left:6px solid var(--ok); background:var(--okbg); padding:10px 14px; border-radius:6px; margin-bottom:14px; }
.verdict.warn { border-color:var(--warn); background:var(--warnbg); }
.verdict.bad { border-color:var(--bad); background:var(--badbg); }
.verdict strong { font-size:15px; }
.verdict ul { margin:6px 0 0 18px; padding:0; }
table { border-collapse:collapse; width:100%; background:var(--card); }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#eef1f6; font-weight:600; font-size:12.5px; color:#38404f; white-space:nowrap; }
td.ts { white-space:nowrap; font-variant-numeric:tabular-nums; }
td.n, th.n { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.err { color:var(--bad); max-width:420px; overflow-wrap:anywhere; font-size:12.5px; }
.pill { display:inline-block; padding:0 8px; border-radius:10px; font-size:12px; font-weight:600; white-space:nowrap; }
.pill.pass, .pill.succeeded, .pill.built { background:var(--okbg); color:var(--ok); }
.pill.fail, .pill.failed, .pill.rolled_back { background:var(--badbg); color:var(--bad); }
.pill.none { background:#eef0f4; color:#5b6475; }
.pill.running, .pill.extracted, .pill.skipped, .pill.stale { background:var(--warnbg); color:var(--warn); }
.pill.view, .pill.table, .pill.source { background:#e8edfb; color:var(--accent); }
.lineage { overflow-x:auto; padding:10px; }
.lineage svg { display:block; width:100%; height:auto; min-width:900px; margin:0 auto; }
.legend { color:var(--muted); font-size:12.5px; margin-top:6px; }
.legend span { margin-right:16px; white-space:nowrap; }
.swatch { display:inline-block; width:11px; height:11px; border-radius:2px; vertical-align:-1px; margin-right:4px; }
.hbar { background:#eef1f6; border-radius:3px; height:14px; min-width:60px; }
.hbar > span { display:block; height:14px; border-radius:3px; background:#7b8fd6; }
.model { margin-top:14px; }
.model h3 { display:flex; flex-wrap:wrap; gap:8px; align-items:center; }
.model h3 .rel { font-family: ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size:15px; }
.model dl { display:grid; grid-template-columns: 150px 1fr; gap:2px 12px; margin:6px 0 10px; }
.model dt { color:var(--muted); }
.model dd { margin:0; overflow-wrap:anywhere; }
details { margin-top:8px; }
summary { cursor:pointer; color:var(--accent); font-size:13px; }
pre { background:#f3f5f9; border:1px solid var(--line); border-radius:6px; padding:10px; overflow-x:auto;
      white-space:pre; max-height:520px; margin:6px 0 0; }
td.col { font-family: ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size:12px; white-space:nowrap; }
td.type { color:var(--muted); font-size:12px; white-space:nowrap; }
.empty { color:var(--muted); font-style:italic; }
"""

LAYER_FILL = {"raw": "#eef0f4", "staging": "#eaf2fd", "intermediate": "#f1ecfb", "marts": "#e9f6ee"}
LAYER_INK = {"raw": "#5b6475", "staging": "#285ea8", "intermediate": "#6a3fb5", "marts": "#1f7a44"}
STALE_TSPAN = '<tspan fill="#c98a00"> · stale</tspan>'
BUCKET_COLOR = {"high": "#2e7d32", "medium": "#ef9f00", "low": "#d32f2f"}


def _pill(status, text=None) -> str:
    status = status or "none"
    return f'<span class="pill {esc(status)}">{esc(text or status)}</span>'


def _model_tests(project: Project, targets: dict[str, set[str]], key: str) -> list[str]:
    return sorted(t for t, reads in targets.items() if key in reads)


def _test_status(w: _Warehouse, tests: list[str]) -> tuple[str, str]:
    """(pass|fail|none, short text) over the latest results of ``tests``."""
    if not tests:
        return "none", "no data tests"
    results = [w.tests_latest.get(t) for t in tests]
    failing = sum(1 for r in results if r and r["status"] != "pass")
    missing = sum(1 for r in results if r is None)
    if failing:
        return "fail", f"✗ {failing} of {len(tests)} tests failing"
    if missing:
        return "none", f"{len(tests) - missing} of {len(tests)} tests run"
    return "pass", f"✓ {len(tests)} test{'s' if len(tests) != 1 else ''} pass"


def _char_width(text: str, size: float) -> float:
    """A rough width of bold sans-serif text (for box sizes; the page names no font file)."""
    widths = {**dict.fromkeys("ijl.,:;|!'", 0.34), **dict.fromkeys("ftr()[] ", 0.45), "_": 0.52,
              **dict.fromkeys("mwMW@", 0.98)}
    return sum(size * widths.get(c, 0.66) for c in text)  # wide enough for DejaVu Sans Bold


def _layout(nodes: list[_Node], box_h: float, gap_y: float, lane_gap: float) -> dict:
    """Rows within each layer column, and lanes for the edges that skip a column.

    Nodes come parents first. Each box goes to the free spot nearest the mean height of its
    parents in earlier columns, and below its parents in its own column (a chain inside a layer
    reads top to bottom). An edge that crosses a column passes it through a lane clear of the
    boxes there, so it never runs behind a box it does not touch.
    """
    by_key = {n.key: n for n in nodes}
    placed: dict[int, list[_Node]] = {}
    for node in nodes:
        boxes = placed.setdefault(node.column, [])
        parents = [by_key[p] for p in node.parents if p in by_key]
        same = [p for p in parents if p.column == node.column]
        cross = [p for p in parents if p.column < node.column]
        floor = max((p.y + box_h + gap_y for p in same), default=float("-inf"))
        if cross:
            want = sum(p.y for p in cross) / len(cross)
        elif boxes:
            want = max(b.y for b in boxes) + box_h + gap_y
        else:
            want = 0.0
        want = max(want, floor)
        candidates = [want] + [b.y + box_h + gap_y for b in boxes] + [b.y - box_h - gap_y for b in boxes]
        free = [c for c in candidates
                if c >= floor and all(abs(c - b.y) >= box_h + gap_y - 1e-6 for b in boxes)]
        node.y = min(free, key=lambda c: (abs(c - want), c))
        boxes.append(node)

    lanes: dict[tuple[str, str], list[tuple[int, float]]] = {}
    used: dict[int, list[float]] = {}
    for node in nodes:
        for parent in (by_key[p] for p in node.parents if p in by_key):
            span = node.column - parent.column
            if span < 2:
                continue
            points = []
            for col in range(parent.column + 1, node.column):
                t = (col - parent.column) / span
                ideal = parent.y + box_h / 2 + t * (node.y - parent.y)
                blocked = [(b.y - lane_gap, b.y + box_h + lane_gap) for b in placed.get(col, [])]
                blocked += [(y - lane_gap, y + lane_gap) for y in used.get(col, [])]
                options = [ideal] + [edge for lo, hi in blocked for edge in (lo, hi)]
                y = min((c for c in options if all(not lo < c < hi for lo, hi in blocked)),
                        key=lambda c: (abs(c - ideal), c))
                used.setdefault(col, []).append(y)
                points.append((col, y))
            lanes[(parent.key, node.key)] = points
    return lanes


def _lineage_svg(project: Project, w: _Warehouse, targets: dict[str, set[str]]) -> str:
    nodes = _graph(project)
    by_key = {n.key: n for n in nodes}
    columns = max(n.column for n in nodes) + 1
    name_size, text_size = 13.5, 11.5
    box_w = max(180.0, max(_char_width(n.key, name_size) for n in nodes) + 22)
    box_h, gap_x, gap_y, lane_gap, pad, band_top = 88.0, 84.0, 26.0, 13.0, 14.0, 32.0
    lanes = _layout(nodes, box_h, gap_y, lane_gap)
    top = min([n.y for n in nodes] + [y - lane_gap for pts in lanes.values() for _, y in pts])
    for node in nodes:
        node.y += band_top + pad - top
    lanes = {k: [(c, y + band_top + pad - top) for c, y in pts] for k, pts in lanes.items()}
    height = max([n.y + box_h for n in nodes] + [y + lane_gap for pts in lanes.values() for _, y in pts]) + pad
    width = pad * 2 + columns * box_w + (columns - 1) * gap_x

    def x_of(col: int) -> float:
        return pad + col * (box_w + gap_x)

    out = [
        f'<svg class="lineage-graph" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
        f'height="{height:.0f}" style="max-width:{width:.0f}px" role="img" '
        'aria-label="Lineage: raw, staging, intermediate, marts">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8792a8"/></marker></defs>',
    ]
    # layer bands
    for layer in (RAW_LAYER, *LAYERS):
        cols = sorted({n.column for n in nodes if n.layer == layer})
        if not cols:
            continue
        x0, x1 = x_of(cols[0]) - 16, x_of(cols[-1]) + box_w + 16
        out.append(
            f'<g class="layer" data-layer="{esc(layer)}"><rect x="{x0:.1f}" y="4" width="{x1 - x0:.1f}" '
            f'height="{height - 8:.1f}" rx="10" fill="{LAYER_FILL.get(layer, "#f3f3f3")}"/>'
            f'<text x="{(x0 + x1) / 2:.1f}" y="25" text-anchor="middle" font-size="13" font-weight="700" '
            f'letter-spacing="1" fill="{LAYER_INK.get(layer, "#555")}">{esc(layer.upper())}</text></g>'
        )
    # edges: across columns through their lanes; inside a layer, down to the next box (or around the side)
    bend = gap_x * 0.5
    for node in nodes:
        for parent in (by_key[p] for p in node.parents if p in by_key):
            if parent.column == node.column:
                cx = x_of(node.column) + box_w / 2
                between = [b for b in nodes if b.column == node.column and parent.y < b.y < node.y]
                if not between and node.y > parent.y:
                    d = f"M{cx:.1f},{parent.y + box_h:.1f} L{cx:.1f},{node.y - 2:.1f}"
                else:
                    xr, y1, y2 = x_of(node.column) + box_w, parent.y + box_h / 2, node.y + box_h / 2
                    d = f"M{xr:.1f},{y1:.1f} C{xr + 30:.1f},{y1:.1f} {xr + 30:.1f},{y2:.1f} {xr + 2:.1f},{y2:.1f}"
            else:
                x, y = x_of(parent.column) + box_w, parent.y + box_h / 2
                parts = [f"M{x:.1f},{y:.1f}"]
                for col, lane_y in lanes.get((parent.key, node.key), []):
                    x2 = x_of(col)
                    parts.append(f"C{x + bend:.1f},{y:.1f} {x2 - bend:.1f},{lane_y:.1f} {x2:.1f},{lane_y:.1f}")
                    x, y = x2 + box_w, lane_y
                    parts.append(f"L{x:.1f},{y:.1f}")
                x2, y2 = x_of(node.column) - 2, node.y + box_h / 2
                parts.append(f"C{x + bend:.1f},{y:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}")
                d = " ".join(parts)
            out.append(
                f'<path class="edge" data-from="{esc(parent.key)}" data-to="{esc(node.key)}" d="{d}" '
                'fill="none" stroke="#8792a8" stroke-width="1.4" marker-end="url(#arrow)"/>'
            )
    # boxes
    for node in nodes:
        x, y = x_of(node.column), node.y
        tests = _model_tests(project, targets, node.key)
        status, test_text = _test_status(w, tests)
        if node.layer == RAW_LAYER:
            counts = w.raw_counts.get(node.key)
            pruned = (counts or {}).get("pruned_runs")  # --keep-runs deleted their pages
            version, kind = "source", f"older runs pruned ({_num(pruned)})" if pruned else "append-only"
            rows = f"{_num(counts['rows'])} rows" if counts else "not created yet"
            build = f"last {esc(counts['last_at'])}" if counts and counts["last_at"] else "nothing landed"
            stale = False
            anchor = "#runs"
            attrs = f'data-model="{esc(node.key)}" data-kind="source"'
        else:
            model = project.models[node.key]
            pub, built = w.published.get(model.name), w.last_built.get(model.name)
            stale = pub is None or pub["version"] != model.version or model.relation not in w.relations
            version = f"v {model.version}"
            kind = model.materialized
            if model.relation not in w.relations:
                rows = "not in warehouse"
            elif model.materialized == "view":
                rows = "no stored rows"
            else:
                rows = f"{_num(pub['rows'])} rows" if pub and pub["rows"] is not None else "rows unknown"
            build = f"built in {_secs(built['seconds'])} (run {esc(built['run_id'])})" if built else "never built"
            anchor = f"#model-{esc(model.name)}"
            attrs = (
                f'data-model="{esc(model.name)}" data-version="{esc(model.version)}" '
                f'data-published-version="{esc(pub["version"]) if pub else ""}" data-tests="{esc(status)}"'
            )
        border = {"fail": "#c62828", "pass": "#2e7d32"}.get(status, "#9aa3b5")
        if stale:
            border = "#c98a00"
        test_fill = {"fail": "#c62828", "pass": "#1a7f37"}.get(status, "#5b6475")
        title = f"{node.label}: {version}, {kind}, {rows}, {build}, {test_text}"
        if stale and node.layer != RAW_LAYER:
            pub = w.published.get(node.key)
            title += f" — warehouse has {pub['version'] if pub else 'no build'}: run the pipeline to rebuild"
        out.append(
            f'<a href="{anchor}"><g class="node" {attrs}>'
            f"<title>{esc(title)}</title>"
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{box_w:.1f}" height="{box_h:.1f}" rx="7" fill="#fff" '
            f'stroke="{border}" stroke-width="{2.2 if status == "fail" or stale else 1.4}"/>'
            f'<text x="{x + 10:.1f}" y="{y + 21:.1f}" font-size="{name_size}" font-weight="700" fill="#1f2430">{esc(node.key)}</text>'
            f'<text x="{x + 10:.1f}" y="{y + 38:.1f}" font-size="{text_size}" fill="#3157d5" class="mono">'
            f'<tspan class="version">{esc(version)}</tspan><tspan fill="#5b6475"> · {esc(kind)}</tspan>'
            f"{STALE_TSPAN if stale and node.layer != RAW_LAYER else ''}</text>"
            f'<text x="{x + 10:.1f}" y="{y + 54:.1f}" font-size="{text_size}" fill="#38404f">{esc(rows)}</text>'
            f'<text x="{x + 10:.1f}" y="{y + 69:.1f}" font-size="{text_size}" fill="#5b6475">{build}</text>'
            f'<text x="{x + 10:.1f}" y="{y + 83:.1f}" font-size="{text_size}" font-weight="600" fill="{test_fill}" '
            f'class="tests">{esc(test_text)}</text>'
            "</g></a>"
        )
    out.append("</svg>")
    return "".join(out)


def _histogram_svg(w: _Warehouse) -> str:
    bins = w.histogram
    width, height, left, bottom, top = 560.0, 250.0, 44.0, 34.0, 22.0
    plot_h = height - bottom - top
    bar_slot = (width - left - 10) / max(1, len(bins))
    peak = max((b["customers"] for b in bins), default=0) or 1
    out = [
        f'<svg class="histogram" viewBox="0 0 {width:.0f} {height:.0f}" width="100%" role="img" '
        'aria-label="Customers per data_quality_score">'
    ]
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        out.append(
            f'<line x1="{left:.0f}" x2="{width - 6:.0f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e7ee"/>'
            f'<text x="{left - 6:.0f}" y="{y + 4:.1f}" font-size="10.5" text-anchor="end" fill="#5b6475">'
            f"{_num(round(peak * frac))}</text>"
        )
    for i, b in enumerate(bins):
        count = int(b["customers"])
        h = plot_h * count / peak
        if count:
            h = max(h, 2.5)
        x = left + i * bar_slot + bar_slot * 0.14
        bw = bar_slot * 0.72
        y = top + plot_h - h
        color = BUCKET_COLOR.get(b["quality_bucket"] or "", "#9aa3b5")
        out.append(
            f'<rect class="bar" data-score="{esc(b["score_bin"])}" data-count="{count}" '
            f'data-bucket="{esc(b["quality_bucket"] or "")}" x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" '
            f'height="{h:.1f}" rx="2" fill="{color}"><title>score {esc(b["score_bin"])}: {_num(count)} customers'
            "</title></rect>"
            f'<text x="{x + bw / 2:.1f}" y="{y - 4:.1f}" font-size="10.5" text-anchor="middle" '
            f'fill="#38404f">{_num(count) if count else ""}</text>'
            f'<text x="{x + bw / 2:.1f}" y="{height - bottom + 15:.1f}" font-size="11" text-anchor="middle" '
            f'fill="#5b6475">{esc(b["score_bin"])}</text>'
        )
    out.append(
        f'<line x1="{left:.0f}" x2="{width - 6:.0f}" y1="{top + plot_h:.1f}" y2="{top + plot_h:.1f}" stroke="#8792a8"/>'
        f'<text x="{(left + width) / 2:.0f}" y="{height - 3:.0f}" font-size="11" text-anchor="middle" '
        'fill="#5b6475">data_quality_score</text></svg>'
    )
    return "".join(out)


def _trend_svg(trend: list[dict]) -> str:
    series = ("high", "medium", "low")
    width, row_h, left, right = 600.0, 52.0, 96.0, 64.0
    height = row_h * len(series) + 24
    n = len(trend)
    step = (width - left - right) / max(1, n - 1)
    out = [
        f'<svg class="trend" viewBox="0 0 {width:.0f} {height:.0f}" width="100%" role="img" '
        'aria-label="Customers per quality bucket over the last publishes">'
    ]
    for r, key in enumerate(series):
        values = [int(t[key] or 0) for t in trend]
        lo, hi = min(values), max(values)
        y0 = 6 + r * row_h
        color = BUCKET_COLOR[key]
        pts = []
        for i, v in enumerate(values):
            x = left + (i * step if n > 1 else (width - left - right) / 2)
            y = y0 + 36 - (28 * (v - lo) / (hi - lo) if hi != lo else 14)
            pts.append((x, y, v, trend[i]))
        out.append(
            f'<text x="4" y="{y0 + 22:.0f}" font-size="13" font-weight="700" fill="{color}">{esc(key)}</text>'
            f'<text x="4" y="{y0 + 38:.0f}" font-size="10.5" fill="#5b6475">{_num(lo)}–{_num(hi)}</text>'
            f'<line x1="{left - 8:.0f}" x2="{width - right + 8:.0f}" y1="{y0 + 44:.0f}" y2="{y0 + 44:.0f}" '
            'stroke="#eef1f6"/>'
        )
        if len(pts) > 1:
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                + " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in pts)
                + '"/>'
            )
        for x, y, v, t in pts:
            out.append(
                f'<circle class="point" data-bucket="{key}" data-run="{esc(t["run_id"])}" data-count="{v}" '
                f'cx="{x:.1f}" cy="{y:.1f}" r="3.2" fill="{color}"><title>run {esc(t["run_id"])} '
                f'({esc(t["published_at"])} UTC): {_num(v)} {key}</title></circle>'
            )
        out.append(
            f'<text x="{width - right + 16:.0f}" y="{y0 + 27:.0f}" font-size="13" font-weight="600" '
            f'fill="#38404f">{_num(values[-1])}</text>'
        )
    first, last = trend[0], trend[-1]
    out.append(
        f'<text x="{left:.0f}" y="{height - 4:.0f}" font-size="10.5" fill="#5b6475">run {esc(first["run_id"])}</text>'
        f'<text x="{width - right:.0f}" y="{height - 4:.0f}" font-size="10.5" text-anchor="end" fill="#5b6475">'
        f'run {esc(last["run_id"])}</text></svg>'
    )
    return "".join(out)


def _verdict(project: Project, w: _Warehouse) -> str:
    problems: list[tuple[str, str]] = []  # (severity, html)
    latest = w.latest_run
    dim = project.models.get("dim_customers")
    if not w.customers:
        problems.append(("bad", f"<code>{esc(dim.relation if dim else 'marts.dim_customers')}</code> is not built yet: "
                                "no run has published data."))
    if latest and latest["status"] == "failed":
        shown = w.customers.get("run_id")
        problems.append(
            ("bad" if not w.customers else "warn",
             f"The latest run, {esc(latest['run_id'])}, failed"
             f"{' in ' + esc(latest['failed_stage']) if latest['failed_stage'] else ''}: {esc(_clip(latest['error']))} "
             '(full error under <a href="#runs">Runs</a>). '
             + (f"The marts still show run {esc(shown)}." if shown is not None else ""))
        )
    elif latest and latest["status"] == "running":
        problems.append(("warn", f"Run {esc(latest['run_id'])} is still running (or its process died)."))
    failing_now = sorted(t for t, r in w.tests_latest.items() if t in project.tests and r["status"] != "pass")
    if failing_now:
        problems.append(("warn", "The last build's data tests failed and it was rolled back: "
                                 + ", ".join(f"<code>{esc(t)}</code>" for t in failing_now)
                                 + ". Published data is the last build that passed."))
    failing_published = sorted(t for t, r in w.tests_at_publish.items() if r["status"] != "pass")
    if failing_published:
        problems.append(("bad", "Published data failed tests: " + ", ".join(esc(t) for t in failing_published)))
    untested = sorted(t for t in project.tests if t not in w.tests_at_publish)
    if w.tests_at_publish and untested:
        problems.append(("warn", "Not run at the last publish (new tests?): "
                                 + ", ".join(f"<code>{esc(t)}</code>" for t in untested)))
    stale = [m for m in project.order if (w.published.get(m.name) or {}).get("version") != m.version]
    if stale and w.published:
        problems.append(("warn", "The SQL in <code>sql/</code> is ahead of the warehouse for "
                                 + ", ".join(f"<code>{esc(m.relation)}</code>" for m in stale)
                                 + ": the next run rebuilds them."))
    if w.customers and w.customers.get("unscored"):
        problems.append(("bad", f"{_num(w.customers['unscored'])} customers have no data_quality_score."))
    if not problems:
        passed = len(w.tests_at_publish)
        pub = w.published.get("dim_customers", {})
        return (
            '<div class="verdict ok" id="verdict" data-verdict="ok"><strong>Trustworthy.</strong> '
            f"The marts show run {esc(w.customers.get('run_id'))}, published {esc(pub.get('published_at'))} UTC; "
            f"all {passed} data tests passed at that publish, and every model is at the version of the SQL in "
            "<code>sql/</code>.</div>"
        )
    level = "bad" if any(s == "bad" for s, _ in problems) else "warn"
    items = "".join(f"<li>{text}</li>" for _, text in problems)
    head = "Do not trust it yet." if level == "bad" else "Usable, with caveats."
    return f'<div class="verdict {level}" id="verdict" data-verdict="{level}"><strong>{head}</strong><ul>{items}</ul></div>'


def _kpis(project: Project, w: _Warehouse) -> str:
    cards = []
    c = w.customers
    total = c.get("total_customers")
    cards.append(("Customers", _num(total),
                  f"run {esc(c.get('run_id'))} · avg score {_num(c.get('average_quality_score'), 2)}" if c else "not built yet",
                  'data-total-customers="%s"' % esc(total if total is not None else "")))
    latest = w.latest_run
    if latest:
        cards.append(("Latest run", f"#{esc(latest['run_id'])} {_pill(latest['status'])}",
                      f"{esc(latest['started_at'])} UTC · {_secs(latest['seconds'])}", ""))
    else:
        cards.append(("Latest run", "—", "no run yet", ""))
    at_pub = w.tests_at_publish
    passed = sum(1 for r in at_pub.values() if r["status"] == "pass")
    cards.append(("Data tests at last publish", f"{passed} / {len(project.tests)}",
                  "pass" if at_pub and passed == len(at_pub) else "see Data tests", ""))
    up_to_date = sum(1 for m in project.order if (w.published.get(m.name) or {}).get("version") == m.version)
    cards.append(("Models at current version", f"{up_to_date} / {len(project.models)}",
                  f"{len(w.relations & {m.relation for m in project.models.values()})} relations in the warehouse", ""))
    cards.append(("Runs recorded", _num(w.runs_total),
                  f"{_num(w.raw_counts.get('raw.api_pages', {}).get('rows'))} raw pages kept", ""))
    return '<div class="grid kpis">' + "".join(
        f'<div class="card kpi" {attrs}><div class="label">{esc(label)}</div><div class="value">{value}</div>'
        f'<div class="detail">{detail}</div></div>'
        for label, value, detail, attrs in cards
    ) + "</div>"


def _quality_section(project: Project, w: _Warehouse) -> str:
    dim = project.models.get("dim_customers")
    rel = esc(dim.relation if dim else "marts.dim_customers")
    if not w.customers:
        return (f'<section id="quality"><h2>Quality</h2><p class="empty">{rel} is not built yet: '
                "no quality to show.</p></section>")
    total = w.customers["total_customers"]
    bucket_rows = "".join(
        f'<tr class="bucket" data-bucket="{esc(b["quality_bucket"])}" data-count="{int(b["customers"])}">'
        f'<td><span class="swatch" style="background:{BUCKET_COLOR.get(b["quality_bucket"], "#9aa3b5")}"></span>'
        f'{esc(b["quality_bucket"])}</td><td class="n">{_num(b["customers"])}</td>'
        f'<td class="n">{_num(100 * float(b["share"] or 0), 1)}%</td>'
        f'<td class="n">{_num(b["avg_data_quality_score"], 2)}</td></tr>'
        for b in w.buckets
    )
    top = max((i["customers"] for i in w.issues), default=1) or 1
    issue_rows = "".join(
        f'<tr class="issue" data-issue="{esc(i["issue"])}" data-count="{int(i["customers"])}">'
        f'<td class="col">{esc(i["issue"])}</td><td class="n">{_num(i["customers"])}</td>'
        f'<td class="n">{_num(100 * float(i["share"] or 0), 1)}%</td>'
        f'<td style="width:40%"><div class="hbar"><span style="width:{100 * i["customers"] / top:.1f}%"></span></div></td></tr>'
        for i in w.issues
    ) or '<tr><td colspan="4" class="empty">no quality issues</td></tr>'
    if w.trend is None:
        trend = ('<p class="empty" id="trend-empty">No history yet: this warehouse has no <code>meta.run_quality</code> '
                 "table (it is filled at every publish by newer pipeline versions).</p>")
    elif not w.trend:
        trend = ('<p class="empty" id="trend-empty">No history yet: <code>meta.run_quality</code> is empty; '
                 "the next successful run adds its first row.</p>")
    else:
        trend_rows = "".join(
            f'<tr class="trend-row" data-run="{esc(t["run_id"])}"><td class="n">{esc(t["run_id"])}</td>'
            f'<td class="ts">{esc(t["published_at"])}</td><td class="n">{_num(t["total"])}</td><td class="n">{_num(t["high"])}</td>'
            f'<td class="n">{_num(t["medium"])}</td><td class="n">{_num(t["low"])}</td>'
            f'<td class="n">{_num(t["avg_score"], 2)}</td></tr>'
            for t in reversed(w.trend)
        )
        trend = (
            f'<div class="grid two"><div>{_trend_svg(w.trend)}</div><div><table class="trend-table">'
            '<tr><th class="n">run</th><th>published (UTC)</th><th class="n">customers</th><th class="n">high</th>'
            f'<th class="n">medium</th><th class="n">low</th><th class="n">avg score</th></tr>{trend_rows}</table></div></div>'
        )
    legend = "".join(
        f'<span><span class="swatch" style="background:{c}"></span>{esc(k)}</span>' for k, c in BUCKET_COLOR.items()
    )
    return f"""
<section id="quality"><h2>Quality</h2>
<p class="note">Of the {_num(total)} customers in <code>{rel}</code> (run {esc(w.customers['run_id'])}),
{_num(w.customers['without_issues'])} have no quality issue; average score {_num(w.customers['average_quality_score'], 2)}.</p>
<div class="grid two">
  <div class="card"><h3>data_quality_score distribution</h3>{_histogram_svg(w)}
    <div class="legend">{legend}<span>bar colour = quality_bucket</span></div></div>
  <div class="card"><h3>Quality buckets</h3>
    <table class="buckets"><tr><th>bucket</th><th class="n">customers</th><th class="n">share</th><th class="n">avg score</th></tr>
    {bucket_rows}</table>
    <h3 style="margin-top:16px">Top quality issues</h3>
    <table class="issues"><tr><th>issue</th><th class="n">customers</th><th class="n">share</th><th></th></tr>{issue_rows}</table>
  </div>
  <div class="card" style="grid-column:1 / -1"><h3>Bucket counts over the last publishes</h3>
    <p class="note">From <code>meta.run_quality</code>, one row per publish; each line has its own scale (min–max in brackets).</p>
    {trend}</div>
</div></section>"""


def _tests_section(project: Project, w: _Warehouse, targets: dict[str, set[str]]) -> str:
    rows = []
    for test in project.tests.values():
        latest, at_pub = w.tests_latest.get(test.name), w.tests_at_publish.get(test.name)
        reads = ", ".join(
            f'<a href="#model-{esc(t)}"><code>{esc(project.models[t].relation)}</code></a>' if t in project.models
            else f"<code>{esc(t)}</code>"
            for t in sorted(targets.get(test.name, ()))
        )
        rows.append(
            f'<tr class="test" data-test="{esc(test.name)}" data-status="{esc(latest["status"] if latest else "none")}">'
            f'<td class="col">{esc(test.name)}<details><summary>SQL</summary><pre>{esc(test.sql)}</pre></details></td>'
            f"<td>{esc(test.description)}</td><td>{reads}</td>"
            f'<td>{_pill(latest["status"]) if latest else _pill("none", "not run")}</td>'
            f'<td class="n">{_num(latest["failing_rows"]) if latest else "—"}</td>'
            f'<td class="n">{esc(latest["run_id"]) if latest else ""}</td>'
            f'<td class="ts">{esc(latest["tested_at"]) if latest else ""}</td>'
            f'<td>{_pill(at_pub["status"]) if at_pub else _pill("none", "—")}</td></tr>'
        )
    return f"""
<section id="tests"><h2>Data tests</h2>
<p class="note">Each test is a query under <code>sql/tests/</code> that must return zero rows; a failing test rolls the
build back, so published data always passed them. Latest results from <code>meta.test_results</code>.</p>
<table><tr><th>test</th><th>checks</th><th>reads</th><th>last result</th><th class="n">failing rows</th>
<th class="n">run</th><th>tested (UTC)</th><th>at last publish</th></tr>{"".join(rows)}</table></section>"""


def _runs_section(w: _Warehouse) -> str:
    if not w.runs:
        return '<section id="runs"><h2>Runs</h2><p class="empty">No run recorded yet (<code>raw.runs</code> is empty).</p></section>'
    rows = "".join(
        f'<tr class="run" data-run="{esc(r["run_id"])}" data-status="{esc(r["status"])}">'
        f'<td class="n" title="source: {esc(r["source_url"])}">{esc(r["run_id"])}</td><td>{_pill(r["status"])}</td>'
        f'<td class="ts">{esc(r["started_at"])}</td><td class="n">{_secs(r["seconds"])}</td>'
        f'<td class="n">{_num(r["pages_landed"])} / {_num(r["pages_expected"])}</td>'
        f'<td class="n">{_num(r["records_landed"])}</td><td class="n">{_num(r["requests"])}</td>'
        f'<td class="n">{_num(r["retries"])}</td><td class="n">{_num(r["throttled"])}</td>'
        f'<td class="n">{_num(r["resumes"])}</td><td class="n">{_num(r["customers_exported"])}</td>'
        f'<td class="err">{esc(r["failed_stage"]) + ": " if r["failed_stage"] else ""}{esc(r["error"])}</td></tr>'
        for r in w.runs
    )
    shown = f"the last {len(w.runs)} of {_num(w.runs_total)}" if w.runs_total > len(w.runs) else f"all {_num(w.runs_total)}"
    source = w.runs[0]["source_url"]
    return f"""
<section id="runs"><h2>Runs</h2>
<p class="note">{shown} runs in <code>raw.runs</code>, newest first (latest source: <span class="mono">{esc(source)}</span>).
Duration is finished_at − started_at; a failed run keeps what it landed and leaves the marts untouched.</p>
<table class="runs"><tr><th class="n">run</th><th>status</th><th>started (UTC)</th><th class="n">duration</th>
<th class="n">pages</th><th class="n">records</th><th class="n">requests</th><th class="n">retries</th>
<th class="n">throttled</th><th class="n">resumes</th><th class="n">customers</th><th>error</th></tr>{rows}</table></section>"""


def _models_section(project: Project, w: _Warehouse, targets: dict[str, set[str]]) -> str:
    parts = ['<section id="models"><h2>Models</h2><p class="note">In build order within each layer. Columns and '
             "comments as the warehouse has them (<code>duckdb_columns()</code>); SQL as rendered from "
             "<code>sql/</code> now.</p>"]
    children: dict[str, list[str]] = {m: [] for m in project.models}
    for model in project.models.values():
        for parent in model.refs:
            children[parent].append(model.name)
    for layer in LAYERS:
        for model in [m for m in project.order if m.schema == layer]:
            pub, built, attempt = (w.published.get(model.name), w.last_built.get(model.name),
                                   w.last_attempt.get(model.name))
            tests = _model_tests(project, targets, model.name)
            status, test_text = _test_status(w, tests)
            in_wh = model.relation in w.relations
            stale = pub is None or pub["version"] != model.version or not in_wh
            columns = w.columns.get(model.relation) if in_wh else None
            if columns:
                col_rows = "".join(
                    f'<tr><td class="col">{esc(c["column_name"])}</td><td class="type">{esc(c["data_type"])}</td>'
                    f'<td>{esc(c["comment"]) if c["comment"] else "<span class=empty>no comment</span>"}</td></tr>'
                    for c in columns
                )
            else:
                col_rows = "".join(
                    f'<tr><td class="col">{esc(n)}</td><td class="type">not built</td><td>{esc(c)}</td></tr>'
                    for n, c in model.columns.items()
                ) or '<tr><td colspan="3" class="empty">not in the warehouse yet</td></tr>'
            upstream = sorted([project.models[r].relation for r in model.refs] + [f"{s}.{t}" for s, t in model.sources])
            downstream = sorted(project.models[c].relation for c in children[model.name])

            def links(rels):
                return ", ".join(
                    f'<a href="#model-{esc(r.split(".", 1)[1])}"><code>{esc(r)}</code></a>' if not r.startswith("raw.")
                    else f"<code>{esc(r)}</code>" for r in rels
                ) or "—"

            if pub:
                published = (f'version <code>{esc(pub["version"])}</code> at {esc(pub["published_at"])} UTC '
                             f'(run {esc(pub["run_id"])})'
                             + (f', {_num(pub["rows"])} rows' if pub["rows"] is not None else ""))
            else:
                published = "never published"
            last = (f'{_secs(built["seconds"])} at {esc(built["built_at"])} UTC (run {esc(built["run_id"])})'
                    if built else "never built")
            if attempt and attempt["status"] not in ("built", "skipped"):
                last += f' — last attempt {_pill(attempt["status"])} {esc(attempt["error"] or "")}'
            test_list = ", ".join(
                f'<code>{esc(t)}</code> {_pill(w.tests_latest[t]["status"]) if t in w.tests_latest else _pill("none", "not run")}'
                for t in tests
            ) or '<span class="empty">none read this model directly</span>'
            parts.append(f"""
<div class="card model" id="model-{esc(model.name)}" data-model="{esc(model.name)}">
<h3><span class="rel">{esc(model.relation)}</span>{_pill(model.materialized)}
{_pill("stale", "warehouse is behind sql/") if stale else ""}{_pill(status, test_text)}</h3>
<p>{esc(model.description)}</p>
<dl>
<dt>grain</dt><dd>{esc(model.grain) or "—"}</dd>
<dt>materialized</dt><dd>{esc(model.materialized)}{" · inputs: " + esc(model.inputs) if model.sources else ""}{
    " · incremental: " + esc(model.incremental) if model.incremental else ""}</dd>
<dt>current version</dt><dd><code>{esc(model.version)}</code> (hash of the rendered SQL and its parents' versions)</dd>
<dt>in the warehouse</dt><dd>{published}</dd>
<dt>last build</dt><dd>{last}</dd>
<dt>reads</dt><dd>{links(upstream)}</dd>
<dt>read by</dt><dd>{links(downstream)}</dd>
<dt>data tests</dt><dd>{test_list}</dd>
<dt>file</dt><dd><code>{esc(project.rel(model.path))}</code></dd>
</dl>
<details><summary>Columns ({len(columns) if columns else len(model.columns)})</summary>
<table class="columns"><tr><th>column</th><th>type</th><th>comment</th></tr>{col_rows}</table></details>
<details><summary>SQL (rendered)</summary><pre class="sql">{esc(model.sql)}</pre></details>
</div>""")
    parts.append("</section>")
    return "".join(parts)


def render_docs(con, project: Project, pending_run: dict | None = None) -> str:
    """The data docs page for the warehouse behind ``con``, as one self-contained HTML text.

    ``pending_run``: the final status a run is about to record (run_id, status, finished_at,
    customers_exported, export_path), shown as if recorded: a run renders its page while the
    warehouse checkpoints, and puts it in place (``write_page``) once that status is committed.
    """
    w = _read(con, project, pending_run)
    targets = _test_targets(project)
    legend = "".join(
        f'<span><span class="swatch" style="background:{LAYER_FILL[k]};border:1px solid {LAYER_INK[k]}"></span>{k}</span>'
        for k in (RAW_LAYER, *LAYERS)
    )
    lineage = f"""
<section id="lineage"><h2>Lineage</h2>
<p class="note">Drawn from the models' <code>ref()</code> and <code>source()</code> calls — the graph the runner builds
in. Each box: current version, rows as published (tables), last build time, and the data tests that read it.
Click a box for the model.</p>
<div class="card lineage">{_lineage_svg(project, w, targets)}
<div class="legend">{legend}<span>border: <b style="color:#2e7d32">tests pass</b> ·
<b style="color:#c62828">tests fail</b> · <b style="color:#c98a00">warehouse behind sql/</b> · grey: no tests</span></div>
</div></section>"""
    nav = "".join(
        f'<a href="#{k}">{v}</a>'
        for k, v in (("summary", "Summary"), ("lineage", "Lineage"), ("quality", "Quality"), ("tests", "Data tests"),
                     ("runs", "Runs"), ("models", "Models"))
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="referrer" content="no-referrer">
<title>Customer warehouse — data docs</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>Customer warehouse — data docs</h1>
<div class="sub">Generated {esc(w.info["generated_at"])} UTC from <code>{esc(w.info["path"])}</code> ·
DuckDB {esc(w.info["duckdb_version"])} · {len(project.models)} models, {len(project.tests)} data tests</div></header>
<nav>{nav}</nav>
<main>
<section id="summary"><h2>Can I trust it?</h2>{_verdict(project, w)}{_kpis(project, w)}</section>
{lineage}
{_quality_section(project, w)}
{_tests_section(project, w, targets)}
{_runs_section(w)}
{_models_section(project, w, targets)}
</main>
</body>
</html>
"""


def write_docs(con, project: Project, output: Path) -> Path:
    """Render and write the page atomically (temp file beside it + ``os.replace``); returns the path."""
    return write_page(render_docs(con, project), output)


def write_page(text: str, output: Path) -> Path:
    """Write a rendered page atomically (temp file beside it + ``os.replace``); returns the path."""
    output = Path(output)
    check_replaceable(output, "the data docs page")  # a FIFO or a device: the rename would replace it
    directory = output.parent if str(output.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    clear_leftovers(output)  # of a process killed while writing the page
    tmp_name = temp_beside(output)  # this process's own: a page written beside it at once keeps its own
    try:
        with open(tmp_name, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, output)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return output
