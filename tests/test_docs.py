"""Data docs: the page a demo warehouse produces, parsed back with html.parser and checked
against the warehouse and the export; plus a headless Chromium load without console errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest

from conftest import SQL_DIR, build, land_records, settings
from extract.demo_api import DemoAPI, Fault
from extract.errors import PipelineError
from transform import orchestrate
from transform.docs import render_docs, write_docs
from transform.project import Project

# -- parsing the page ---------------------------------------------------------------------------


class Element:
    def __init__(self, tag: str, attrs: dict, ancestors: list["Element"]):
        self.tag, self.attrs, self.ancestors = tag, attrs, list(ancestors)
        self.text = ""

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def inside(self, tag: str, cls: str | None = None) -> bool:
        return any(a.tag == tag and (cls is None or cls in a.classes) for a in self.ancestors)


class Page(HTMLParser):
    """Every element with its attributes, ancestors and own text (entities decoded)."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.stack: list[Element] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs), self.stack)
        self.elements.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.elements.append(Element(tag, dict(attrs), self.stack))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        for element in self.stack:
            element.text += data

    def find(self, tag: str, cls: str | None = None, **attrs) -> list[Element]:
        found = []
        for e in self.elements:
            if e.tag != tag or (cls and cls not in e.classes):
                continue
            if all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                found.append(e)
        return found


# -- a demo warehouse with three good runs and one failed one -------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    summaries = []
    with DemoAPI(dataset="demo", faults="none") as api:
        for _ in range(3):
            summaries.append(orchestrate.run(settings(tmp, api.base_url)))
    with DemoAPI(dataset="demo", faults=[Fault(page=2, attempt=0, kind="500")]) as api:
        with pytest.raises(PipelineError):
            orchestrate.run(settings(tmp, api.base_url))
    export = json.loads((tmp / "out.json").read_text(encoding="utf-8"))
    warehouse = tmp / "warehouse" / "customers.duckdb"
    output = tmp / "site" / "docs" / "index.html"  # parents do not exist yet
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        written = write_docs(con, Project(SQL_DIR), output)
        run_ids = [r[0] for r in con.execute("select run_id from raw.runs order by run_id").fetchall()]
        trend_rows = con.execute("select count(*) from meta.run_quality").fetchone()[0]
    finally:
        con.close()
    text = output.read_text(encoding="utf-8")
    return {"tmp": tmp, "output": output, "written": written, "text": text, "page": Page(text),
            "export": export, "run_ids": run_ids, "trend_rows": trend_rows, "summaries": summaries}


def test_write_docs_is_atomic_creates_folders_and_returns_the_path(site):
    assert site["written"] == site["output"]
    assert site["output"].is_file()
    assert sorted(p.name for p in site["output"].parent.iterdir()) == ["index.html"]  # no temp file left
    assert site["text"].startswith("<!DOCTYPE html>")


def test_write_page_clears_a_dead_process_temp_file_and_keeps_a_live_ones(tmp_path):
    # as for the export: a page written at once by another process keeps its own temp file
    import os
    import subprocess
    import sys

    from transform.docs import write_page

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    output = tmp_path / "index.html"
    stale, live = f".index.html.{dead.pid}-k3j4h5g6.tmp", f".index.html.{os.getppid()}-a1b2c3d4.tmp"
    for name in (stale, live):
        (tmp_path / name).write_text("partial")
    assert write_page("<p>page</p>", output) == output
    assert output.read_text() == "<p>page</p>"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, "index.html"])


def test_every_model_is_in_the_lineage_svg_with_its_current_version(site):
    project = Project(SQL_DIR)
    page = site["page"]
    nodes = {e.attrs["data-model"]: e for e in page.find("g", "node") if e.inside("svg", "lineage-graph")}
    for model in project.models.values():
        assert model.name in nodes, f"{model.name} missing from the lineage graph"
        node = nodes[model.name]
        assert node.attrs["data-version"] == model.version
        assert node.attrs["data-published-version"] == model.version  # the warehouse is built from this sql/
        assert model.version in node.text and model.name in node.text
    assert {"raw.api_pages", "raw.runs"} <= set(nodes)
    # edges come from refs/sources: one per dependency, nothing hand-drawn
    edges = {(e.attrs["data-from"], e.attrs["data-to"]) for e in page.find("path", "edge")}
    expected = {(parent, m.name) for m in project.models.values() for parent in m.refs}
    expected |= {(f"{s}.{t}", m.name) for m in project.models.values() for s, t in m.sources}
    assert edges == expected
    # test status per box: dim_customers is read by every data test, all of which passed
    assert nodes["dim_customers"].attrs["data-tests"] == "pass"
    assert f"{len(project.tests)} tests pass" in nodes["dim_customers"].text


def test_histogram_and_buckets_agree_with_the_export(site):
    page, meta = site["page"], site["export"]["metadata"]
    bars = [e for e in page.find("rect", "bar") if e.inside("svg", "histogram")]
    assert [int(b.attrs["data-score"]) for b in bars] == list(range(0, 101, 10))
    assert sum(int(b.attrs["data-count"]) for b in bars) == meta["total_customers"]
    scores = Counter(c["data_quality_score"] for c in site["export"]["customers"])
    assert {int(b.attrs["data-score"]): int(b.attrs["data-count"]) for b in bars if b.attrs["data-count"] != "0"} == scores
    buckets = {e.attrs["data-bucket"]: int(e.attrs["data-count"]) for e in page.find("tr", "bucket")}
    summary = meta["data_quality_summary"]
    assert buckets == {"high": summary["high_quality"], "medium": summary["medium_quality"],
                       "low": summary["low_quality"]}
    issues = {e.attrs["data-issue"]: int(e.attrs["data-count"]) for e in page.find("tr", "issue")}
    expected = Counter(i for c in site["export"]["customers"] for i in c["quality_issues"])
    assert issues == dict(expected.most_common(len(issues))) and issues
    totals = page.find("div", "kpi", data_total_customers=str(meta["total_customers"]))
    assert totals, "the customers card shows the export's total"


def test_the_quality_trend_has_one_point_per_publish(site):
    page = site["page"]
    points = [e for e in page.find("circle", "point") if e.inside("svg", "trend")]
    assert site["trend_rows"] == 3  # three good runs published; the failed one did not
    assert Counter(p.attrs["data-bucket"] for p in points) == {"high": 3, "medium": 3, "low": 3}
    assert {p.attrs["data-run"] for p in points} == {str(r) for r in site["run_ids"][:3]}


def test_page_references_no_external_url(site):
    text = site["text"]
    for needle in ("http://", "https://", "@import", "<script", "<link", "<img", "<iframe"):
        assert needle not in text.lower(), needle
    assert "url(#" in text and not re.search(r"url\(\s*(?!#)", text), "url() only for in-page ids"
    for element in site["page"].elements:
        for name in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
            value = element.attrs.get(name)
            if value is not None:
                assert value.startswith("#"), f"<{element.tag} {name}={value!r}> leaves the page"
    csp = site["page"].find("meta", http_equiv="Content-Security-Policy")
    assert csp and "default-src 'none'" in csp[0].attrs["content"]
    # the source URL is still shown, as text (its :// written as &#58;//)
    assert "&#58;//127.0.0.1" in text


def test_runs_table_lists_every_run_with_its_status_and_error(site):
    rows = {e.attrs["data-run"]: e for e in site["page"].find("tr", "run")}
    assert set(rows) == {str(r) for r in site["run_ids"]} and len(rows) == 4
    failed = rows[str(site["run_ids"][-1])]
    assert failed.attrs["data-status"] == "failed"
    assert "extract" in failed.text and "page 2" in failed.text
    assert rows[str(site["run_ids"][0])].attrs["data-status"] == "succeeded"
    # the verdict notices the failed latest run and says what the marts still show
    verdict = site["page"].find("div", "verdict")[0]
    assert verdict.attrs["data-verdict"] == "warn"
    assert f"marts still show run {site['run_ids'][2]}" in verdict.text


def test_models_section_documents_every_model_with_columns_sql_and_tests(site):
    project = Project(SQL_DIR)
    page = site["page"]
    cards = {e.attrs["data-model"]: e for e in page.find("div", "model")}
    assert set(cards) == set(project.models)
    sql_blocks = {}
    for pre in page.find("pre", "sql"):
        card = next(a for a in reversed(pre.ancestors) if "model" in a.classes)
        sql_blocks[card.attrs["data-model"]] = pre.text
    materialized = {}  # model -> its card's "materialized" entry
    for i, element in enumerate(page.elements):
        if element.tag == "dt" and element.text == "materialized":
            card = next(a for a in reversed(element.ancestors) if "model" in a.classes)
            materialized[card.attrs["data-model"]] = next(e for e in page.elements[i + 1:] if e.tag == "dd").text
    for model in project.models.values():
        card = cards[model.name]
        assert sql_blocks[model.name] == model.sql  # escaped, and decodes back to the exact SQL
        assert model.description in card.text and model.grain in card.text
        assert materialized[model.name] == model.materialized + (
            f" · inputs: {model.inputs}" if model.sources else "") + (
            f" · incremental: {model.incremental}" if model.incremental else "")
        for column, comment in model.columns.items():
            assert column in card.text and comment in card.text, (model.name, column)
    assert "dim_customers__customer_id_unique" in cards["dim_customers"].text
    tests = {e.attrs["data-test"]: e.attrs["data-status"] for e in page.find("tr", "test")}
    assert tests == {name: "pass" for name in project.tests}


# -- small warehouses: escaping, nothing built, no run_quality table ------------------------------------


def test_data_from_the_warehouse_is_escaped(con):
    land_records(con, [[{"id": 1, "first_name": "A", "last_name": "B", "email": "a@b.co", "avatar": "x"}]])
    build(con)
    nasty = "<script>alert(1)</script><img src=https://evil.example/x.png onerror=alert(2)> \"quoted\" & 'x'"
    con.execute(
        "insert into raw.runs (run_id, started_at, status, failed_stage, error, source_url, resumes) "
        "values (2, now(), 'failed', 'extract', ?, 'https://user.example/api', 0)",
        [nasty],
    )
    text = render_docs(con, Project(SQL_DIR))
    assert "<script" not in text and "<img" not in text and "https://" not in text
    page = Page(text)
    failed = {e.attrs["data-run"]: e for e in page.find("tr", "run")}["2"]
    assert nasty in failed.text  # shown exactly, as text
    titles = {e.attrs.get("title") for e in page.elements if failed in e.ancestors}
    assert "source: https://user.example/api" in titles  # decoded back from &#58;//


def test_a_fresh_warehouse_renders_with_nothing_built(con, tmp_path):
    out = write_docs(con, Project(SQL_DIR), tmp_path / "docs" / "index.html")
    page = Page(out.read_text(encoding="utf-8"))
    assert page.find("div", "verdict")[0].attrs["data-verdict"] == "bad"
    assert not page.find("rect", "bar")
    nodes = {e.attrs["data-model"] for e in page.find("g", "node")}
    assert set(Project(SQL_DIR).models) <= nodes
    assert "not built yet" in out.read_text(encoding="utf-8")


def test_no_run_quality_table_says_no_history_yet(con):
    land_records(con, [[{"id": 1, "first_name": "A", "last_name": "B", "email": "a@b.co", "avatar": "x"}]])
    build(con)
    con.execute("drop table if exists meta.run_quality")
    page = Page(render_docs(con, Project(SQL_DIR)))
    note = page.find("p", "empty", id="trend-empty")
    assert note and "No history yet" in note[0].text
    assert sum(int(b.attrs["data-count"]) for b in page.find("rect", "bar")) == 1


def test_sql_ahead_of_the_warehouse_shows_current_and_published_versions(site, tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    path = sql_dir / "marts" / "customer_quality_summary.sql"
    path.write_text(path.read_text(encoding="utf-8") + "\n-- edited after the last build\n", encoding="utf-8")
    project, before = Project(sql_dir), Project(SQL_DIR)
    con = duckdb.connect(str(site["tmp"] / "warehouse" / "customers.duckdb"), read_only=True)
    try:
        page = Page(render_docs(con, project))
    finally:
        con.close()
    node = page.find("g", "node", data_model="customer_quality_summary")[0]
    assert node.attrs["data-version"] == project.models["customer_quality_summary"].version
    assert node.attrs["data-published-version"] == before.models["customer_quality_summary"].version
    assert node.attrs["data-version"] != node.attrs["data-published-version"] and "stale" in node.text
    assert page.find("g", "node", data_model="dim_customers")[0].attrs["data-published-version"] == \
        project.models["dim_customers"].version  # upstream of the edit: unchanged
    verdict = page.find("div", "verdict")[0]
    assert "ahead of the warehouse" in verdict.text and "marts.customer_quality_summary" in verdict.text


def test_a_failed_data_test_shows_on_the_boxes_it_reads_and_in_the_verdict(con):
    land_records(con, [[{"id": 1, "first_name": "A", "last_name": "B", "email": "a@b.co", "avatar": "x"}]])
    build(con)
    # what a rolled-back build leaves: a failed run and its failing test result
    con.execute("insert into raw.runs (run_id, started_at, status, failed_stage, error, resumes) "
                "values (2, now(), 'failed', 'build', 'data tests failed, nothing was published', 0)")
    con.execute("insert into meta.test_results values (2, 'dim_customers__customer_id_unique', 3, 'fail', 0.01, "
                "now() + interval 1 second, null)")
    page = Page(render_docs(con, Project(SQL_DIR)))
    assert page.find("g", "node", data_model="dim_customers")[0].attrs["data-tests"] == "fail"
    assert page.find("g", "node", data_model="stg_reqres__users")[0].attrs["data-tests"] == "pass"
    assert page.find("g", "node", data_model="int_customers_scored")[0].attrs["data-tests"] == "none"
    tests = {e.attrs["data-test"]: e for e in page.find("tr", "test")}
    assert tests["dim_customers__customer_id_unique"].attrs["data-status"] == "fail"
    verdict = page.find("div", "verdict")[0]
    assert verdict.attrs["data-verdict"] == "warn"
    assert "rolled back" in verdict.text and "dim_customers__customer_id_unique" in verdict.text
    assert "marts still show run 1" in verdict.text


def test_lineage_is_drawn_for_any_graph_the_project_allows(con, tmp_path):
    """Edges that skip layers, chains inside a layer, a model reading raw directly: all drawn."""
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    (sql_dir / "marts" / "zz_pages_per_run.sql").write_text(
        "-- Pages per run, straight from raw.\n-- grain: one row per run_id\n-- materialized: view\n"
        "select run_id, count(*) as pages from {{ source('raw', 'api_pages') }} group by run_id\n",
        encoding="utf-8")
    (sql_dir / "marts" / "zz_summary_of_summary.sql").write_text(
        "-- A chain inside marts that is not adjacent to its parent.\n-- materialized: view\n"
        "select count(*) as buckets from {{ ref('customer_quality_summary') }}\n"
        "cross join (select count(*) from {{ ref('stg_reqres__users') }})\n",
        encoding="utf-8")
    project = Project(sql_dir)
    page = Page(render_docs(con, project))
    nodes = {e.attrs["data-model"] for e in page.find("g", "node")}
    assert set(project.models) <= nodes
    edges = page.find("path", "edge")
    assert len(edges) == sum(len(m.refs) + len(m.sources) for m in project.models.values())
    assert all(re.fullmatch(r"M[-0-9., CL]+", e.attrs["d"]) for e in edges)


# -- a real browser ---------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def test_page_loads_in_headless_chromium_without_console_errors(site, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium); the page was checked with html.parser only")
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--dump-dom", site["output"].resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    problems = [line for line in result.stderr.splitlines()
                if ":CONSOLE" in line or "Uncaught" in line or "net::ERR" in line]
    assert not problems, "\n".join(problems)
    dom = Page(result.stdout)
    nodes = [e for e in dom.find("g", "node") if e.inside("svg", "lineage-graph")]
    assert len(nodes) == len(Project(SQL_DIR).models) + 2
    assert len(dom.find("rect", "bar")) == 11


def test_the_page_a_run_writes_is_the_page_its_warehouse_renders_afterwards(tmp_path):
    # a run renders its page beside the checkpoint, before its final status is written, showing
    # that status as it will be; read back from the finished warehouse, the page is the same
    with DemoAPI(dataset="demo", faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
        orchestrate.run(settings(tmp_path, api.base_url))
    written = (tmp_path / "warehouse" / "docs" / "index.html").read_text(encoding="utf-8")
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    try:
        rendered = render_docs(con, Project(SQL_DIR))
        finished = con.execute("select status, customers_exported from raw.runs where run_id = 2").fetchone()
    finally:
        con.close()
    assert finished == ("succeeded", 270)

    def without_generation_time(text: str) -> str:
        return re.sub(r"Generated [0-9: -]+ UTC", "Generated", text)

    assert without_generation_time(written) == without_generation_time(rendered)
