"""The warehouse analysts trust: write-audit-publish, versions, locks, compatibility, comments."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from conftest import ROOT, SQL_DIR, dicts, error_lines, free_port, rows, run_cli, settings
from extract.demo_api import DemoAPI
from extract.errors import DataTestError
from transform import orchestrate
from transform.project import Project


@pytest.fixture(scope="module")
def api():
    with DemoAPI(dataset="demo", faults="none") as server:
        yield server


def snapshot(warehouse: Path) -> list[tuple]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return rows(con, "select * from marts.dim_customers order by customer_id")
    finally:
        con.close()


def copy_sql(tmp_path: Path) -> Path:
    target = tmp_path / "sql"
    shutil.copytree(SQL_DIR, target)
    return target


# -- write-audit-publish -------------------------------------------------------------------------


def test_a_failing_export_query_fails_the_run_at_export_and_keeps_the_last_document(tmp_path, api):
    # the export's error reaches the user as one line, marks the run failed at 'export' and
    # leaves the old file
    orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    export_before = (tmp_path / "out.json").read_bytes()
    sql = copy_sql(tmp_path)
    query = sql / "export" / "customers.sql"
    query.write_text(query.read_text() + "\nlimit (select no_such_column from {{ ref('dim_customers') }} limit 1)\n")
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                     "--output", str(tmp_path / "out.json"), "--sql-dir", str(sql))
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "export query failed" in errors[0] and "no_such_column" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out.json").read_bytes() == export_before
    assert [p.name for p in tmp_path.glob(".out.json.*")] == []
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select status, failed_stage from raw.runs where run_id = 2") == [("failed", "export")]
    con.close()


def test_a_missing_export_query_is_one_line_and_publishes_nothing(tmp_path, api):
    orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    before, export_before = snapshot(warehouse), (tmp_path / "out.json").read_bytes()
    sql = copy_sql(tmp_path)
    (sql / "export" / "customers.sql").unlink()
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                     "--output", str(tmp_path / "out.json"), "--sql-dir", str(sql))
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: sql/export/customers.sql and sql/export/metadata.sql are both required"], result.stderr
    assert snapshot(warehouse) == before and (tmp_path / "out.json").read_bytes() == export_before
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select status, failed_stage from raw.runs where run_id = 2") == [("failed", "export")]
    con.close()


def test_a_failing_data_test_publishes_nothing(tmp_path, api):
    orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    before, export_before = snapshot(warehouse), (tmp_path / "out.json").read_bytes()
    sql = copy_sql(tmp_path)
    (sql / "tests" / "always_fails.sql").write_text(
        "-- a test that flags every customer\nselect customer_id from {{ ref('dim_customers') }}\n"
    )
    # and a model change that would alter the mart if it were published
    scored = sql / "intermediate" / "int_customers_scored.sql"
    assert "100 - 10 * len(quality_issues)" in scored.read_text()
    scored.write_text(scored.read_text().replace("100 - 10 * len(quality_issues)", "90 - 10 * len(quality_issues)"))
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                     "--output", str(tmp_path / "out.json"), "--sql-dir", str(sql))
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "data tests failed, nothing was published: always_fails" in errors[0]
    assert snapshot(warehouse) == before
    assert (tmp_path / "out.json").read_bytes() == export_before
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select status, failed_stage from raw.runs where run_id = 2") == [("failed", "build")]
    assert rows(con, "select failing_rows, status from meta.test_results where run_id = 2 and test = 'always_fails'") \
        == [(270, "fail")]
    assert rows(con, "select distinct status from meta.model_builds where run_id = 2") == [("rolled_back",)]
    con.close()


def test_after_a_failed_build_the_views_still_describe_the_published_run(tmp_path, api):
    # the views are live SQL over published tables: the run they describe is published with the
    # marts (stg_pipeline__current_run is a table), so a failed build does not show through them
    orchestrate.run(settings(tmp_path, api.base_url))
    sql = copy_sql(tmp_path)
    (sql / "tests" / "always_fails.sql").write_text("select customer_id from {{ ref('dim_customers') }}\n")
    with pytest.raises(DataTestError):
        orchestrate.run(settings(tmp_path, api.base_url, sql_dir=sql))
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    assert rows(con, "select run_id, status from raw.runs order by 1") == [(1, "succeeded"), (2, "failed")]
    for relation in ("staging.stg_pipeline__current_run", "intermediate.int_customers_enriched",
                     "intermediate.int_customer_sightings", "marts.dim_customers"):
        assert rows(con, f"select distinct run_id from {relation}") == [(1,)], relation
    con.close()


def test_a_model_with_a_sql_error_names_the_file_and_line_and_publishes_nothing(tmp_path, api):
    orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    before = snapshot(warehouse)
    sql = copy_sql(tmp_path)
    model = sql / "intermediate" / "int_customers_deduplicated.sql"
    text = model.read_text()
    assert "count(*) over" in text  # the edit below must really break the model
    model.write_text(text.replace("count(*) over", "count(no_such_column) over"))
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                     "--output", str(tmp_path / "out.json"), "--sql-dir", str(sql))
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1
    assert "model int_customers_deduplicated failed to build (sql/intermediate/int_customers_deduplicated.sql:" in errors[0]
    assert "no_such_column" in errors[0]
    assert snapshot(warehouse) == before


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sql: (sql / "marts" / "dim_customers.sql").write_text("select * from {{ ref('nope') }}"),
         "sql/marts/dim_customers.sql: ref('nope') names no model"),
        (lambda sql: (sql / "staging" / "stg_pipeline__current_run.sql").write_text(
            "select * from {{ ref('customer_quality_summary') }}"), "models form a cycle:"),
        (lambda sql: shutil.rmtree(sql), "no SQL project at"),
        (lambda sql: [p.unlink() for p in (sql / "staging").glob("*.sql")], "') names no model (models:"),
        (lambda sql: (sql / "marts" / "dim_customers.sql").write_text("select {{ 1 + }}"), "template error"),
        (lambda sql: (sql / "marts" / "dim_customers.sql").write_bytes(b"-- caf\xe9\nselect 1"),
         "sql/marts/dim_customers.sql: not UTF-8 text (byte 6: b'\\xe9')"),
        (lambda sql: (sql / "tests" / "folder.sql").mkdir(), "sql/tests/folder.sql: cannot be read (Is a directory)"),
    ],
    ids=["unknown-ref", "cycle", "missing-sql-dir", "missing-model", "bad-jinja", "not-utf8", "folder"],
)
def test_a_broken_project_is_one_line_and_touches_nothing(tmp_path, api, change, message):
    orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    before_db, before_export = warehouse.read_bytes(), (tmp_path / "out.json").read_bytes()
    sql = copy_sql(tmp_path)
    change(sql)
    asked_before = len(api.requests)
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                     "--output", str(tmp_path / "out.json"), "--sql-dir", str(sql))
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert warehouse.read_bytes() == before_db  # not even a run row: the project is checked first
    # the models load while page 1 is on its way: that one request, no other
    assert [r.page for r in api.requests[asked_before:]] in ([], [1])
    assert (tmp_path / "out.json").read_bytes() == before_export


# -- versions --------------------------------------------------------------------------------------


def test_editing_one_model_re_versions_it_and_its_downstream_only_and_rebuilds_just_those(tmp_path, api):
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    orchestrate.run(settings(tmp_path, api.base_url))
    sql = copy_sql(tmp_path)
    dedup = sql / "intermediate" / "int_customers_deduplicated.sql"
    dedup.write_text(dedup.read_text().replace("-- materialized: view", "-- materialized: view\n-- edited"))
    status = run_cli("status", "--warehouse", str(warehouse), "--sql-dir", str(sql), "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    changed = {m["model"] for m in info["models"] if m["changed"]}
    # runs and tests are objects too, times ISO 8601 in UTC
    assert info["runs"][0]["run_id"] == 1 and info["runs"][0]["status"] == "succeeded"
    assert info["runs"][0]["started_at"].endswith("+00:00") and "T" in info["runs"][0]["started_at"]
    assert {t["status"] for t in info["tests"]} == {"pass"} and len(info["tests"]) >= 6
    assert changed == {"intermediate.int_customers_deduplicated", "intermediate.int_customers_enriched",
                       "marts.dim_customers", "marts.customer_quality_summary"}
    text = run_cli("status", "--warehouse", str(warehouse), "--sql-dir", str(sql)).stdout
    assert "SQL changed since build" in text and "up to date" in text
    orchestrate.run(settings(tmp_path, api.base_url, sql_dir=sql))
    con = duckdb.connect(str(warehouse), read_only=True)
    built = dict(rows(con, "select model, status from meta.model_builds where run_id = 2"))
    con.close()
    # the current run and the past sightings are tables that read every run (a new one is new
    # input): the current run is made again, the past sightings kept up to date run by run
    assert {m for m, s in built.items() if s == "built"} == {
        "int_customers_deduplicated", "int_customers_enriched", "dim_customers", "customer_quality_summary",
        "stg_reqres__past_sightings", "stg_pipeline__current_run"}
    assert {m for m, s in built.items() if s == "skipped"} == {
        "stg_reqres__pages", "stg_reqres__users",
        "int_customers_scored", "int_customer_sightings",
        "quarantined_records"}


def test_new_data_rebuilds_the_tables_that_read_it(tmp_path):
    with DemoAPI(dataset="reqres", faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
    with DemoAPI(dataset="scale", customers=20, duplicate_rate=0, faults="none") as api:
        summary = orchestrate.run(settings(tmp_path, api.base_url))
    assert "stg_reqres__users" in summary.built and "dim_customers" in summary.built
    assert summary.metadata["total_customers"] == 20


def test_history_first_and_last_seen_across_runs_and_keep_runs(tmp_path, api):
    for _ in range(3):
        orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    con = duckdb.connect(str(warehouse), read_only=True)
    seen = dicts(con, "select min(runs_seen) as lo, max(runs_seen) as hi, "
                      "bool_and(first_seen_at < last_seen_at) as ordered from marts.dim_customers")
    con.close()
    assert seen == [{"lo": 3, "hi": 3, "ordered": True}]
    closed = free_port()  # nothing listens there: run 4 fails before landing a page
    with pytest.raises(Exception):
        orchestrate.run(settings(tmp_path, f"http://127.0.0.1:{closed}/api"))
    orchestrate.run(settings(tmp_path, api.base_url, keep_runs=2))
    con = duckdb.connect(str(warehouse), read_only=True)
    # the last 2 runs whose extraction completed: the failed run 4 does not take a place
    assert rows(con, "select distinct run_id from raw.api_pages order by 1") == [(3,), (5,)]
    assert rows(con, "select count(*) from raw.runs") == [(5,)]  # the runs table keeps every run
    assert rows(con, "select max(runs_seen) from marts.dim_customers") == [(2,)]
    con.close()


def test_past_sightings_are_kept_run_by_run_not_parsed_again_and_match_a_rebuild(tmp_path, api):
    # stg_reqres__past_sightings (incremental: by_run) parses only the runs it does not hold yet:
    # after every build it holds what its SQL over raw would give, and a held run's pages are
    # not read again (checked by changing one after the fact); --full-refresh reads them all
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    rebuild = Project(SQL_DIR).models["stg_reqres__past_sightings"].sql

    def held_and_rebuilt():
        con = duckdb.connect(str(warehouse), read_only=True)
        try:
            return (rows(con, "select * from staging.stg_reqres__past_sightings order by all"),
                    rows(con, f"select * from ({rebuild}) order by all"))
        finally:
            con.close()

    for _ in range(3):
        orchestrate.run(settings(tmp_path, api.base_url))
    held, rebuilt = held_and_rebuilt()
    assert held == rebuilt and {run for run, _, _ in held} == {1, 2}
    customers = len({customer for _, customer, _ in held})
    assert customers > 0 and len(held) == 2 * customers

    sql = copy_sql(tmp_path)  # run 4's build fails a data test: what it added is rolled back
    (sql / "tests" / "always_fails.sql").write_text("select customer_id from {{ ref('dim_customers') }}\n")
    with pytest.raises(DataTestError):
        orchestrate.run(settings(tmp_path, api.base_url, sql_dir=sql))
    assert held_and_rebuilt()[0] == held

    con = duckdb.connect(str(warehouse))
    con.execute("""update raw.api_pages set body = '{"page": 1, "data": [{"id": 9001}]}'
                   where run_id = 1 and page = 1""")
    con.close()
    orchestrate.run(settings(tmp_path, api.base_url))  # run 5: adds runs 3 and 4, keeps 1 and 2 as held
    held, rebuilt = held_and_rebuilt()
    assert {run for run, _, _ in held} == {1, 2, 3, 4} and len(held) == 4 * customers
    assert 9001 not in {customer for _, customer, _ in held}
    assert 9001 in {customer for _, customer, _ in rebuilt}

    result = run_cli("build", "--full-refresh", "--warehouse", str(warehouse))
    assert result.returncode == 0, result.stderr
    held, rebuilt = held_and_rebuilt()
    assert held == rebuilt and (1, 9001) in {(run, customer) for run, customer, _ in held}

    orchestrate.run(settings(tmp_path, api.base_url, keep_runs=2))  # run 6: runs 1-4 lose their pages
    held, rebuilt = held_and_rebuilt()
    assert held == rebuilt and {run for run, _, _ in held} == {5}


def test_each_sync_keeps_its_pages_in_row_groups_of_their_own_and_pruning_drops_them(tmp_path, api):
    # max_vacuum_tasks 0: a checkpoint does not merge the syncs' row groups (rewriting the pages
    # of every sync before), and a row group --keep-runs empties is still dropped
    warehouse = tmp_path / "warehouse" / "customers.duckdb"

    def runs_per_row_group():
        con = duckdb.connect(str(warehouse), read_only=True)
        try:
            stats = rows(con, """select row_group_id, stats from pragma_storage_info('raw.api_pages')
                                 where column_name = 'run_id' and segment_type <> 'VALIDITY' order by 1""")
        finally:
            con.close()
        groups = {}
        for group, segment in stats:  # the segment's min and max run_id
            groups.setdefault(group, set()).update({int(segment["min"]), int(segment["max"])})
        return sorted(sorted(runs) for runs in groups.values())

    for _ in range(3):
        orchestrate.run(settings(tmp_path, api.base_url))
    assert runs_per_row_group() == [[1], [2], [3]]
    orchestrate.run(settings(tmp_path, api.base_url, keep_runs=1))
    assert runs_per_row_group() == [[4]]


def test_the_bookkeeping_tables_are_compacted_every_few_runs_and_keep_their_rows(tmp_path, api, monkeypatch):
    # without merging, each run's row in raw.runs (and meta.*) took blocks of its own: the file
    # grew ~1 MiB a run whatever the data. Every COMPACT_EVERY runs they are written again.
    monkeypatch.setattr(orchestrate, "COMPACT_EVERY", 3)
    warehouse = tmp_path / "warehouse" / "customers.duckdb"

    def state():
        con = duckdb.connect(str(warehouse), read_only=True)
        try:
            groups = {table: rows(con, f"select count(distinct row_group_id) from pragma_storage_info('{table}')")[0][0]
                      for table in ("raw.runs", "meta.model_builds", "meta.test_results")}
            return groups, rows(con, "select run_id, status, resumes from raw.runs order by 1"), rows(
                con, "select comment from duckdb_tables() where schema_name = 'raw' and table_name = 'runs'")[0][0]
        finally:
            con.close()

    for _ in range(2):
        orchestrate.run(settings(tmp_path, api.base_url))
    groups, _, _ = state()
    assert groups["raw.runs"] == 2 and groups["meta.model_builds"] == 2  # a row group per run
    orchestrate.run(settings(tmp_path, api.base_url))  # run 3: compacted as it starts
    groups, runs, comment = state()
    assert groups == {"raw.runs": 1, "meta.model_builds": 1, "meta.test_results": 1}
    assert runs == [(1, "succeeded", 0), (2, "succeeded", 0), (3, "succeeded", 0)]
    assert comment.startswith("One row per pipeline run")
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select count(distinct run_id) from meta.model_builds") == [(3,)]
    con.close()


def test_a_compaction_that_fails_fails_its_run_on_the_record(tmp_path, api, monkeypatch):
    def full(con):
        raise duckdb.IOException("IO Error: No space left on device")

    monkeypatch.setattr(orchestrate, "COMPACT_EVERY", 2)
    monkeypatch.setattr(orchestrate, "compact_bookkeeping", full)
    orchestrate.run(settings(tmp_path, api.base_url))
    with pytest.raises(duckdb.IOException):
        orchestrate.run(settings(tmp_path, api.base_url))
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    assert rows(con, "select run_id, status, failed_stage from raw.runs order by 1") == [
        (1, "succeeded", None), (2, "failed", "extract")]  # not left 'running'
    con.close()


def test_every_published_table_and_column_has_a_comment(tmp_path, api):
    orchestrate.run(settings(tmp_path, api.base_url))
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    missing_tables = rows(con, """
        select schema_name, table_name from duckdb_tables()
        where schema_name in ('staging', 'intermediate', 'marts', 'raw', 'meta') and comment is null
        union all
        select schema_name, view_name from duckdb_views()
        where schema_name in ('staging', 'intermediate', 'marts') and comment is null""")
    missing_columns = rows(con, """
        select schema_name, table_name, column_name from duckdb_columns()
        where schema_name in ('marts') and comment is null""")
    # staging's rows were staged while the pages landed (the stager commented the columns then)
    staged = dict(rows(con, """
        select column_name, comment from duckdb_columns()
        where schema_name = 'staging' and table_name = 'stg_reqres__users'"""))
    table_comment = rows(con, "select comment from duckdb_tables() where table_name = 'stg_reqres__users'")[0][0]
    con.close()
    assert missing_tables == []
    assert missing_columns == []
    model = Project(SQL_DIR).models["stg_reqres__users"]
    assert staged == model.columns
    assert table_comment.startswith(model.description) and "Not for analysis" not in table_comment


# -- locks -----------------------------------------------------------------------------------------


HOLDER = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1], read_only=sys.argv[3:] == ["read_only"])
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("mode", ["read_write", "read_only"])
def test_a_process_holding_the_warehouse_makes_run_fail_within_lock_timeout_then_recover(tmp_path, api, mode):
    # a read-only connection holds the file too: the message must not suggest one as the cure
    orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    before = snapshot(warehouse)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(warehouse), "30", mode], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        requests_before = len(api.requests)
        started = time.monotonic()
        result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                         "--output", str(tmp_path / "out.json"), "--lock-timeout", "1")
        elapsed = time.monotonic() - started
        assert len(api.requests) == requests_before  # seen as held: page 1 was not asked for
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and f"PID {holder.pid}" in errors[0] and "--lock-timeout" in errors[0]
    assert "read-only connections hold it too" in errors[0]
    assert 1 <= elapsed < 15
    after = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                    "--output", str(tmp_path / "out.json"), "--quiet")
    assert after.returncode == 0, after.stderr
    assert snapshot(warehouse)[0][0] == before[0][0]
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select run_id, status from raw.runs order by run_id") == [(1, "succeeded"), (2, "succeeded")]
    con.close()


@pytest.mark.parametrize("holder_is_a_run", [False, True])
def test_status_while_the_warehouse_is_written_says_who_writes_it(tmp_path, api, holder_is_a_run):
    # a reader (status) is kept out by a writer: not told that "a sync needs the file to itself"
    orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(warehouse), "30", "read_write"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        if holder_is_a_run:  # what RunLock writes for the run holding it
            Path(f"{warehouse}.lock").write_text(f"pid {holder.pid} (extract build export) since 2026-11-27T12:00:00Z")
        result = run_cli("status", "--warehouse", str(warehouse), "--lock-timeout", "0.5")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    if holder_is_a_run:
        assert error_lines(result.stderr) == [
            f"error: warehouse {warehouse} is being written by the pipeline (PID {holder.pid}, (extract build "
            "export) since 2026-11-27T12:00:00Z) and was not released within 0.5s: run again when it has "
            "finished, or raise --lock-timeout"], result.stderr
    else:
        errors = error_lines(result.stderr)
        assert len(errors) == 1 and "is open for writing in " in errors[0] and f"PID {holder.pid}" in errors[0]
        assert "a sync needs" not in errors[0]


@pytest.mark.parametrize("mode", ["read_write", "read_only"])
def test_the_warehouse_is_seen_as_held_without_being_opened(tmp_path, mode):
    # page 1 is asked for while the warehouse opens only when it should open at once; the
    # check must not open the file: closing any descriptor of it would drop this process's
    # own DuckDB lock on it
    from transform.warehouse import opens_without_waiting

    warehouse = tmp_path / "w.duckdb"
    assert opens_without_waiting(warehouse)  # no file yet
    duckdb.connect(str(warehouse)).close()
    assert opens_without_waiting(warehouse)  # a closed database
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(warehouse), "30", mode],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        if Path("/proc/locks").exists():
            assert not opens_without_waiting(warehouse)
    finally:
        holder.kill()
        holder.wait()
    assert opens_without_waiting(warehouse)
    mine = duckdb.connect(str(warehouse))  # this process's own lock: still there after the check
    try:
        assert not opens_without_waiting(warehouse)
        probe = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({str(warehouse)!r})"],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "lock" in probe.stderr.lower()
    finally:
        mine.close()
    (tmp_path / "small.duckdb").write_bytes(b"x" * 100)
    assert not opens_without_waiting(tmp_path / "small.duckdb")
    assert not opens_without_waiting(tmp_path)  # a directory


def test_a_warehouse_damaged_inside_is_reported_as_damaged_at_once_not_as_locked(tmp_path, api):
    # DuckDB's corruption message speaks of a "block": that is not a lock worth waiting for
    orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    with open(warehouse, "r+b") as fh:
        fh.seek(3 * 4096)
        fh.write(b"\xa5" * (256 * 1024))
    damaged = warehouse.read_bytes()
    started = time.monotonic()
    result = run_cli("status", "--warehouse", str(warehouse), "--lock-timeout", "5")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "cannot be opened as a DuckDB database" in errors[0], result.stderr
    assert "lock" not in errors[0].replace("block", "") and elapsed < 4
    assert warehouse.read_bytes() == damaged  # left untouched


def test_a_run_waits_for_a_short_lived_holder(tmp_path, api):
    orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(warehouse), "1.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                     "--output", str(tmp_path / "out.json"), "--lock-timeout", "20", "--quiet")
    holder.wait()
    assert result.returncode == 0, result.stderr


def test_two_runs_at_once_one_refuses_clearly(tmp_path):
    with DemoAPI(dataset="scale", customers=2000, faults="none", latency=0.05) as api:
        warehouse = tmp_path / "w.duckdb"
        args = [sys.executable, str(ROOT / "pipeline.py"), "run", "--base-url", api.base_url, "--per-page", "50",
                "--concurrency", "1", "--warehouse", str(warehouse), "--quiet"]
        first = subprocess.Popen(args + ["--output", str(tmp_path / "a.json")], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not api.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        second = subprocess.run(args + ["--output", str(tmp_path / "b.json")], capture_output=True, text=True,
                                timeout=60)
        first_err = first.communicate(timeout=120)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 1
    errors = error_lines(second.stderr)
    assert len(errors) == 1 and "another pipeline run is using" in errors[0]
    assert f"pid {first.pid}" in errors[0] and "since 20" in errors[0]
    assert (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()


def test_a_stale_run_lock_from_a_dead_process_is_cleared(tmp_path, api):
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    warehouse.parent.mkdir(parents=True)
    Path(str(warehouse) + ".lock").write_text("pid 999999 (run) since 2026-01-01T00:00:00Z")
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                     "--output", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr
    assert "cleared a stale run lock (pid 999999" in result.stderr


# -- damaged warehouses ----------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"this is not a database\n" * 100, b""], ids=["text-file", "empty-file"])
def test_a_file_that_is_not_duckdb_is_one_line_and_left_untouched(tmp_path, api, content):
    warehouse = tmp_path / "w.duckdb"
    warehouse.write_bytes(content)
    requests_before = len(api.requests)
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                     "--output", str(tmp_path / "out.json"))
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "cannot be opened as a DuckDB database" in errors[0]
    assert "it is left untouched" in errors[0]
    assert warehouse.read_bytes() == content
    assert len(api.requests) == requests_before  # nothing fetched
    assert not (tmp_path / "out.json").exists()


def test_another_program_s_duckdb_file_with_a_raw_runs_of_its_own_is_refused_untouched(tmp_path, api):
    warehouse = tmp_path / "theirs.duckdb"
    con = duckdb.connect(str(warehouse))
    con.execute("create schema raw; create table raw.runs (id integer, name varchar); insert into raw.runs values (1, 'x')")
    con.close()
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                     "--output", str(tmp_path / "out.json"))
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        f"error: {warehouse} has a table raw.runs that is not the pipeline's (it has no run_id, started_at, "
        "finished_at, ...): give --warehouse a file of its own"], result.stderr
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select schema_name from duckdb_schemas() where database_name = current_database() "
                     "order by 1") == [("main",), ("raw",)]
    assert rows(con, "select * from raw.runs") == [(1, "x")]
    con.close()
    assert not (tmp_path / "out.json").exists()


def test_a_truncated_warehouse_is_one_line_and_left_untouched(tmp_path, api):
    orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    data = warehouse.read_bytes()
    warehouse.write_bytes(data[: len(data) // 3])
    truncated = warehouse.read_bytes()
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                     "--output", str(tmp_path / "out.json"))
    assert result.returncode == 1
    assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.stderr
    assert warehouse.read_bytes() == truncated


@pytest.mark.parametrize("kind", ["directory", "missing-folder", "read-only-folder"])
def test_an_unusable_output_path_fails_before_any_work(tmp_path, api, kind, request):
    if kind == "directory":
        output = tmp_path / "outdir"
        output.mkdir()
        fragment = "is a directory"
    elif kind == "missing-folder":
        output = tmp_path / "nope" / "out.json"
        fragment = "does not exist"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        if os.geteuid() == 0:  # root writes through 0500; an immutable folder stops even root
            made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
            if made.returncode != 0:
                pytest.skip("running as root and chattr +i is not available here to make a read-only folder")
            request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(folder)]))
        else:
            folder.chmod(0o500)
        output = folder / "out.json"
        fragment = "not writable"
    requests_before = len(api.requests)
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(tmp_path / "w.duckdb"),
                     "--output", str(output))
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and fragment in errors[0]
    assert len(api.requests) == requests_before  # nothing fetched
    assert not (tmp_path / "w.duckdb").exists()


@pytest.fixture(scope="module")
def published(tmp_path_factory, api):
    """A warehouse with the demo data published, to copy."""
    folder = tmp_path_factory.mktemp("published")
    orchestrate.run(settings(folder, api.base_url, warehouse=folder / "w.duckdb"))
    return folder / "w.duckdb"


def _tree(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder``: its kind (st_mode's type bits, through no link) and bytes."""
    return {str(p.relative_to(folder)): (stat.S_IFMT(p.lstat().st_mode),
                                         p.read_bytes() if stat.S_ISREG(p.lstat().st_mode) else None)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("command, target", [
    ("run", "output"), ("run", "output-link"), ("run", "docs-page"),
    ("export", "output"), ("export", "output-link"), ("docs", "output"), ("docs", "output-link")])
def test_an_output_that_is_a_fifo_is_refused_and_stays_a_fifo(tmp_path, published, command, target):
    # the export and the docs page are renamed over their path: that made a FIFO (or /dev/null,
    # a device) a regular file. A symlink to one is refused too; to a regular file it is fine
    shutil.copy(published, tmp_path / "w.duckdb")
    (tmp_path / "docs").mkdir()
    fifo = tmp_path / ("docs/w.duckdb.html" if target == "docs-page" else "pipe")
    os.mkfifo(fifo)
    output = tmp_path / "link.json" if target == "output-link" else fifo if target == "output" else tmp_path / "o.json"
    if target == "output-link":
        output.symlink_to(fifo)
    before = _tree(tmp_path)
    result = run_cli(command, *(["--demo"] if command == "run" else []), "--warehouse", str(tmp_path / "w.duckdb"),
                     "--output", str(output), timeout=60)
    assert result.returncode == 2, result.stderr
    named = f"the data docs page {fifo}" if target == "docs-page" else f"--output {output}"
    assert error_lines(result.stderr) == [
        f"error: {named} is a named pipe (FIFO), not a regular file: the file written there is renamed into "
        "place and would replace it; give a file path"], result.stderr
    assert _tree(tmp_path) == before  # the FIFO is one still, and nothing was made
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_an_output_that_is_a_symlink_to_a_file_is_replaced_by_the_export_as_before(tmp_path, api):
    # the rename replaces the link itself; the file it pointed to is left as it was
    target = tmp_path / "target.json"
    target.write_text("keep me")
    (tmp_path / "link.json").symlink_to(target)
    result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(tmp_path / "w.duckdb"),
                     "--output", str(tmp_path / "link.json"), "-q")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "link.json").is_symlink()
    assert json.loads((tmp_path / "link.json").read_text())["metadata"]["total_customers"] > 0
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", ["run", "extract", "build", "export", "test", "status", "docs"])
def test_a_warehouse_that_is_a_fifo_is_one_line_at_once_not_a_hang(tmp_path, command):
    # DuckDB opening a FIFO waits for a writer: the run hung there, after making the run lock
    warehouse = tmp_path / "w.duckdb"
    os.mkfifo(warehouse)
    result = run_cli(command, *(["--demo"] if command in ("run", "extract") else []), "--warehouse", str(warehouse),
                     *(["--output", str(tmp_path / "o.json")] if command in ("run", "export") else []), timeout=30)
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        f"error: --warehouse {warehouse} is a named pipe (FIFO), not a regular file: DuckDB cannot keep a database "
        "there; give the path of a DuckDB file (or of one to create)"], result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["w.duckdb"] and stat.S_ISFIFO(os.lstat(warehouse).st_mode)


def test_a_warehouse_whose_wal_is_a_fifo_is_one_line_at_once(tmp_path, published):
    shutil.copy(published, tmp_path / "w.duckdb")
    os.mkfifo(tmp_path / "w.duckdb.wal")
    result = run_cli("run", "--demo", "--warehouse", str(tmp_path / "w.duckdb"), "--output",
                     str(tmp_path / "o.json"), timeout=30)
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        f"error: --warehouse {tmp_path / 'w.duckdb'} has a write-ahead log that is a named pipe (FIFO) "
        f"({tmp_path / 'w.duckdb.wal'}), not a regular file: DuckDB cannot keep a database there; give the path "
        "of a DuckDB file (or of one to create)"], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.duckdb", "w.duckdb.wal"]


def test_devices_and_sockets_are_named_by_kind():
    # no device node is made for the tests: the kinds are read from st_mode alone
    from transform.warehouse import file_kind

    assert file_kind(stat.S_IFCHR | 0o666) == "a character device"  # /dev/null
    assert file_kind(stat.S_IFBLK | 0o660) == "a block device"
    assert file_kind(stat.S_IFSOCK | 0o755) == "a socket"
    assert file_kind(stat.S_IFIFO | 0o644) == "a named pipe (FIFO)"
    assert file_kind(stat.S_IFREG | 0o644) is None and file_kind(stat.S_IFDIR | 0o755) is None


# -- compatibility with older readers ----------------------------------------------------------------


def _old_duckdb(minor: str) -> Path | None:
    """A folder holding the Python client DuckDB ``minor`` (e.g. "1.0"), installed with pip --target."""
    env = os.environ.get(f"PIPELINE_TEST_DUCKDB_{minor.replace('.', '_')}")
    for candidate in (env, ROOT / ".ci" / f"duckdb-{minor}", f"/work/duckdb-{minor}"):
        if candidate and (Path(candidate) / "duckdb").is_dir():
            return Path(candidate).resolve()
    return None


def _duckdb_cli() -> Path | None:
    for candidate in (os.environ.get("PIPELINE_TEST_DUCKDB_CLI_DIR"), ROOT / ".ci" / "duckdb-cli", "/work/duckdb-cli"):
        if candidate and (Path(candidate) / "duckdb_cli" / "duckdb").is_file():
            return (Path(candidate) / "duckdb_cli" / "duckdb").resolve()
    found = shutil.which("duckdb")
    return Path(found) if found else None


READER = """
import duckdb, json, sys
con = duckdb.connect(sys.argv[1], read_only=True)
print(json.dumps({
    "version": duckdb.__version__,
    "customers": con.execute("select count(*) from marts.dim_customers").fetchone()[0],
    "buckets": con.execute("select list(customers order by quality_bucket) from marts.customer_quality_summary").fetchone()[0],
    "view_rows": con.execute("select count(*) from intermediate.int_customers_enriched").fetchone()[0],
    "pages": con.execute("select count(*) from raw.api_pages where json_valid(body)").fetchone()[0],
}))
"""


def _read_with(old: Path, warehouse: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(old)}
    result = subprocess.run([sys.executable, "-c", READER, str(warehouse)], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("minor, release", [("1.0", "1.0.0"), ("1.1", "1.1.3")])
def test_an_older_duckdb_opens_the_warehouse_read_only(tmp_path, api, minor, release):
    old = _old_duckdb(minor)
    if old is None:
        pytest.skip(f"duckdb=={release} not installed (.ci/run installs it into .ci/duckdb-{minor})")
    summary = orchestrate.run(settings(tmp_path, api.base_url))
    seen = _read_with(old, tmp_path / "warehouse" / "customers.duckdb")
    assert seen["version"].startswith(minor + ".")
    assert seen["customers"] == summary.metadata["total_customers"] == seen["view_rows"]
    assert sum(seen["buckets"]) == seen["customers"] and seen["pages"] == summary.pages


def test_a_warehouse_whose_runs_table_has_a_primary_key_loses_it_and_keeps_its_rows(tmp_path, api):
    # earlier versions made raw.runs with a primary key, which DuckDB 1.0 cannot read
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    orchestrate.run(settings(tmp_path, api.base_url))
    con = duckdb.connect(str(warehouse))
    con.execute("create table raw.runs_copy as from raw.runs")
    con.execute("delete from raw.runs")
    con.execute("alter table raw.runs add primary key (run_id)")
    con.execute("insert into raw.runs select * from raw.runs_copy")
    con.execute("drop table raw.runs_copy")
    before = rows(con, "select * from raw.runs order by run_id")
    assert rows(con, "select has_primary_key from duckdb_tables() where schema_name = 'raw' and table_name = 'runs'") \
        == [(True,)]
    con.close()
    orchestrate.run(settings(tmp_path, api.base_url))
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select has_primary_key, comment is not null from duckdb_tables() "
                     "where schema_name = 'raw' and table_name = 'runs'") == [(False, True)]
    assert rows(con, "select * from raw.runs where run_id = 1") == before
    assert rows(con, "select run_id, status from raw.runs order by run_id") == [(1, "succeeded"), (2, "succeeded")]
    assert rows(con, "select column_default from duckdb_columns() where schema_name = 'raw' "
                     "and table_name = 'runs' and column_name = 'resumes'") == [("0",)]
    con.close()
    old = _old_duckdb("1.0")
    if old is not None:
        assert _read_with(old, warehouse)["version"].startswith("1.0.")


def test_duckdb_1_5_cli_opens_the_warehouse_read_only(tmp_path, api):
    cli = _duckdb_cli()
    if cli is None:
        pytest.skip("the DuckDB CLI is not installed (.ci/run installs duckdb-cli 1.5 into .ci/duckdb-cli)")
    summary = orchestrate.run(settings(tmp_path, api.base_url))
    result = subprocess.run(
        [str(cli), "-readonly", "-csv", str(tmp_path / "warehouse" / "customers.duckdb"), "-c",
         "select version(), count(*) from marts.dim_customers"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    version, count = result.stdout.strip().splitlines()[-1].split(",")
    assert version.startswith("v1.5") and int(count) == summary.metadata["total_customers"]


def test_a_failed_commit_of_the_schema_is_the_error_reported(tmp_path):
    # DuckDB ends a transaction whose COMMIT fails: the rollback after it must not replace the
    # real error (a full disk, say) with "no transaction is active"
    from transform.warehouse import ensure_schema

    class FailingCommit:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *args):
            if sql == "commit":
                self.con.execute("rollback")  # what DuckDB does to a transaction whose commit fails
                raise duckdb.IOException("IO Error: could not write the WAL (disk full)")
            return self.con.execute(sql, *args)

    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    try:
        with pytest.raises(duckdb.IOException, match="disk full"):
            ensure_schema(FailingCommit(con))
        assert rows(con, "select count(*) from duckdb_tables() where schema_name in ('raw', 'meta')") == [(0,)]
    finally:
        con.close()
