"""Staging while landing: the by_page staging model is built batch by batch as a run's pages land,
and what the build publishes is exactly what one build over the whole run gives."""

from __future__ import annotations

import io
import json
import shutil

import duckdb
import pytest

from conftest import SQL_DIR, rows, settings
from extract.demo_api import DemoAPI, Fault
from extract.errors import ModelError
from extract.progress import Progress
from transform import incremental, orchestrate
from transform.project import Project

STAGING = "staging.stg_reqres__users"


def run_logged(tmp_path, base_url, **overrides):
    lines = io.StringIO()
    summary = orchestrate.run(settings(tmp_path, base_url, quiet=False, **overrides), progress=Progress(stream=lines))
    return summary, lines.getvalue()


def staging_line(log: str) -> str:
    return next(line for line in log.splitlines() if f"{STAGING}:" in line)


def assert_staging_is_one_build_over_the_run(warehouse):
    """The published staging table, row for row, against the model's own SQL over the whole run."""
    model_sql = Project(SQL_DIR).models["stg_reqres__users"].sql
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        staged = rows(con, f"select count(*) from {STAGING}")[0][0]
        assert staged == rows(con, f"select count(*) from ({model_sql})")[0][0]
        assert rows(con, f"(select * from {STAGING}) except all ({model_sql})") == []
        assert rows(con, f"({model_sql}) except all (select * from {STAGING})") == []
        assert rows(con, "select table_name from duckdb_tables() where table_name like '%__landing'") == []
        return staged
    finally:
        con.close()


def test_pages_staged_as_they_land_equal_one_build_over_the_run(tmp_path):
    # the demo's messy records (blanks, bad ids, optional keys) in pages of 20, fetched 4 at a time
    with DemoAPI(dataset="demo", faults="none") as api:
        summary, log = run_logged(tmp_path, api.base_url, per_page=20, concurrency=4)
    assert summary.pages >= 10
    assert "staged while its pages landed" in staging_line(log)
    staged = assert_staging_is_one_build_over_the_run(tmp_path / "warehouse" / "customers.duckdb")
    assert staged == summary.records
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    comment = rows(con, "select comment from duckdb_tables() where schema_name = 'staging' "
                        "and table_name = 'stg_reqres__users'")[0][0]
    con.close()
    assert comment.startswith("The users of the run being built")  # the model's own comment, not the landing one


def test_a_batch_that_fails_to_stage_leaves_the_build_to_stage_the_whole_run(tmp_path, monkeypatch):
    stage = incremental.PageStager._stage

    def failing(self, pages, create):
        if not create:
            raise duckdb.InvalidInputException("simulated: this batch cannot be staged")
        return stage(self, pages, create)

    monkeypatch.setattr(incremental.PageStager, "_stage", failing)
    with DemoAPI(dataset="demo", faults="none") as api:
        summary, log = run_logged(tmp_path, api.base_url, per_page=20, concurrency=4)
    assert summary.status == "succeeded"
    assert "pages were not staged while landing (simulated: this batch cannot be staged)" in log
    assert "staged while its pages landed" not in staging_line(log)
    assert "built table" in staging_line(log)
    assert assert_staging_is_one_build_over_the_run(tmp_path / "warehouse" / "customers.duckdb") == summary.records


def test_a_build_that_fails_its_tests_keeps_the_published_staging_and_leaves_no_staged_table(tmp_path):
    with DemoAPI(dataset="scale", customers=100, faults="none") as api:
        first = orchestrate.run(settings(tmp_path, api.base_url, per_page=20))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    con = duckdb.connect(str(warehouse), read_only=True)
    before = rows(con, f"select * from {STAGING} order by page, position_in_page")
    con.close()
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)
    (sql / "tests" / "always_fails.sql").write_text("select customer_id from {{ ref('dim_customers') }}\n")
    # new data, so the staging model is built (staged while landing) and then rolled back
    lines = io.StringIO()
    with DemoAPI(dataset="scale", customers=150, faults="none") as api:
        with pytest.raises(Exception, match="data tests failed"):
            orchestrate.run(settings(tmp_path, api.base_url, per_page=20, sql_dir=sql, quiet=False),
                            progress=Progress(stream=lines))
    assert "staged while its pages landed" in staging_line(lines.getvalue())
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        assert rows(con, f"select * from {STAGING} order by page, position_in_page") == before
        assert len(before) == first.records
        assert rows(con, "select table_name from duckdb_tables() where table_name like '%__landing'") == []
        assert rows(con, "select status, failed_stage from raw.runs where run_id = 2") == [("failed", "build")]
    finally:
        con.close()


def test_a_resumed_run_stages_the_pages_an_earlier_process_landed(tmp_path):
    (tmp_path / "ref").mkdir()
    with DemoAPI(dataset="demo", faults="none") as api:
        reference, _ = run_logged(tmp_path / "ref", api.base_url, per_page=20)
    # the first attempt fails for good at page 5 after landing the pages before it; the resumed
    # run fetches the rest from the same API, which has recovered
    with DemoAPI(dataset="demo", faults=[Fault(page=5, attempt=0, kind="500")]) as api:
        with pytest.raises(Exception, match="page 5"):
            orchestrate.run(settings(tmp_path, api.base_url, per_page=20, concurrency=1))
        api.faults = []
        summary, log = run_logged(tmp_path, api.base_url, per_page=20, resume=True)
        assert sorted({r.page for r in api.requests if r.status == 200}) == list(range(1, summary.pages + 1))
    assert "staged while its pages landed" in staging_line(log)
    assert assert_staging_is_one_build_over_the_run(tmp_path / "warehouse" / "customers.duckdb") == reference.records
    ours = json.loads((tmp_path / "out.json").read_text())
    theirs = json.loads((tmp_path / "ref" / "out.json").read_text())
    assert ours["customers"] == theirs["customers"]


# -- the model header -----------------------------------------------------------------------------


@pytest.mark.parametrize("header, message", [
    ("-- materialized: view\n-- inputs: latest_run\n-- incremental: by_page\n", "for a table with inputs: latest_run"),
    ("-- inputs: all_runs\n-- incremental: by_page\n", "for a table with inputs: latest_run"),
    ("-- inputs: latest_run\n-- incremental: by_day\n", "not 'by_day'"),
    ("-- materialized: view\n-- incremental: by_run\n", "incremental: by_run is for a table with inputs: all_runs"),
    ("-- inputs: latest_run\n-- incremental: by_run\n", "incremental: by_run is for a table with inputs: all_runs"),
    ("-- incremental: by_run\n", r"narrows itself to the runs \{\{ this \}\} does not hold yet"),
])
def test_an_incremental_model_is_a_table_of_the_inputs_its_kind_needs(tmp_path, header, message):
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)
    (sql / "staging" / "stg_extra.sql").write_text(
        f"-- An extra model.\n{header}select page from {{{{ source('raw', 'api_pages') }}}}\n"
    )
    with pytest.raises(ModelError, match=message):
        Project(sql)


def test_an_incremental_by_page_model_reads_raw_pages_and_no_model(tmp_path):
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)
    (sql / "staging" / "stg_extra.sql").write_text(
        "-- An extra model.\n-- inputs: latest_run\n-- incremental: by_page\n"
        "select * from {{ ref('stg_reqres__users') }}\n"
    )
    with pytest.raises(ModelError, match="reads raw.api_pages, and no other model"):
        Project(sql)


def test_a_by_run_models_version_covers_its_incremental_branch_too(tmp_path):
    sql = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql)
    path = sql / "staging" / "stg_reqres__past_sightings.sql"
    before = Project(sql).models["stg_reqres__past_sightings"]
    path.write_text(path.read_text().replace("and run_id not in (select run_id from {{ this }})",
                                             "and run_id > (select coalesce(max(run_id), 0) from {{ this }})"))
    after = Project(sql).models["stg_reqres__past_sightings"]
    assert after.sql == before.sql and after.incremental_sql != before.incremental_sql
    assert after.version != before.version
    assert "from staging.stg_reqres__past_sightings" in after.incremental_sql  # {{ this }}


def test_the_batch_sql_reads_the_given_pages_of_the_given_run(tmp_path):
    project = Project(SQL_DIR)
    batch = project.batch_sql(project.models["stg_reqres__users"])
    assert "$run_id" in batch and "$pages" in batch
    assert batch != project.models["stg_reqres__users"].sql
    # the plain model is unchanged by having rendered its batch form
    assert "$pages" not in project.models["stg_reqres__users"].sql
    assert "$pages" not in Project(SQL_DIR).models["stg_reqres__users"].sql


def test_a_build_without_extraction_drops_what_a_killed_run_left_staged(tmp_path):
    with DemoAPI(dataset="demo", faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    con = duckdb.connect(str(warehouse))
    con.execute("create table staging.stg_reqres__users__landing as select * from staging.stg_reqres__users")
    con.close()
    summary = orchestrate.run(settings(tmp_path, "http://127.0.0.1:9/api"), steps=("build",))
    assert summary.status == "succeeded"
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        assert rows(con, "select table_name from duckdb_tables() where table_name like '%__landing'") == []
    finally:
        con.close()
