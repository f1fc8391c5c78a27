"""Crash safety: SIGKILL at every stage leaves a warehouse that opens, the last good marts and a
whole export, and the next run succeeds without manual cleanup."""

from __future__ import annotations

import json
import signal

import duckdb
import pytest

from conftest import rows, run_cli, settings
from extract.crashpoints import POINTS
from extract.demo_api import DemoAPI
from transform import orchestrate


def marts(warehouse):
    con = duckdb.connect(str(warehouse), read_only=True)  # must open: no manual repair
    try:
        return rows(con, "select customer_id, full_name, data_quality_score from marts.dim_customers order by 1")
    finally:
        con.close()


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_any_point_keeps_the_last_good_state_and_the_next_run_recovers(tmp_path, point):
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    output = tmp_path / "out.json"
    with DemoAPI(dataset="reqres", faults="none") as old_api:
        orchestrate.run(settings(tmp_path, old_api.base_url, per_page=4))
    old_marts, old_export = marts(warehouse), output.read_bytes()

    with DemoAPI(dataset="scale", customers=40, duplicate_rate=0.1, faults="none") as new_api:
        args = ["run", "--base-url", new_api.base_url, "--per-page", "4", "--concurrency", "2",
                "--warehouse", str(warehouse), "--output", str(output), "--quiet"]
        crashed = run_cli(*args, env={"PIPELINE_CRASH_AT": point})
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr

        published = point in ("mid-export", "after-export")
        after_crash = marts(warehouse)
        if published:  # the build committed before the kill: the new marts, whole
            assert len(after_crash) == 40
        else:
            assert after_crash == old_marts
        document = json.loads(output.read_bytes())  # whole, never half
        if point == "after-export":
            assert document["metadata"]["total_customers"] == 40
        else:
            assert output.read_bytes() == old_export

        recovered = run_cli(*args)
        assert recovered.returncode == 0, recovered.stderr

    assert json.loads(output.read_text())["metadata"]["total_customers"] == 40
    assert len(marts(warehouse)) == 40
    assert [p.name for p in tmp_path.glob(".out.json.*")] == []  # no temp files left behind
    con = duckdb.connect(str(warehouse), read_only=True)
    statuses = rows(con, "select run_id, status, failed_stage from raw.runs order by run_id")
    # every run counts what it landed, the killed one too (closed as interrupted by the next run)
    miscounted = rows(con, "select run_id from raw.runs r where pages_landed is distinct from "
                           "(select count(*) from raw.api_pages p where p.run_id = r.run_id)")
    # the killed run ended when it was last seen at work, not when run 3 found it dead
    ended = rows(con, "select finished_at = greatest(extracted_at, (select max(fetched_at) from raw.api_pages "
                      "where run_id = 2)) and finished_at <= (select started_at from raw.runs where run_id = 3) "
                      "from raw.runs where run_id = 2")
    con.close()
    assert miscounted == [] and ended == [(True,)]
    assert statuses == [(1, "succeeded", None), (2, "failed", "interrupted"), (3, "succeeded", None)]
