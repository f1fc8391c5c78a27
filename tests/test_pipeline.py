"""End to end: pipeline.py against a real HTTP server on 127.0.0.1 and a real DuckDB file."""

from __future__ import annotations

import _thread
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from conftest import FAST_RETRY, ROOT, dicts, error_lines, free_port, rows, run_cli, settings
from extract.demo_api import DemoAPI, Fault
from extract.errors import ApiError, UsageError
from pipeline import run_pipeline
from transform import export as export_mod
from transform import orchestrate

CONTRACT_KEYS = [
    "customer_id", "full_name", "email_domain", "engagement_level", "activity_status",
    "acquisition_channel", "market_segment", "customer_tier", "data_quality_score",
]


def read_export(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def mart_rows(warehouse: Path) -> list[dict]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return dicts(con, "select * from marts.dim_customers order by customer_id")
    finally:
        con.close()


# -- the 12 public reqres users ------------------------------------------------------------------


def test_reqres_users_export_twelve_perfect_customers_sorted_by_name(tmp_path):
    with DemoAPI(dataset="reqres", faults="none") as api:
        summary = orchestrate.run(settings(tmp_path, api.base_url))
    doc = read_export(tmp_path / "out.json")
    customers = doc["customers"]
    assert summary.status == "succeeded"
    assert doc["metadata"]["total_customers"] == 12
    assert doc["metadata"]["data_quality_summary"] == {"high_quality": 12, "medium_quality": 0, "low_quality": 0}
    assert [c["full_name"] for c in customers[:3]] == ["Byron Fields", "Charles Morris", "Emma Wong"]
    assert {c["data_quality_score"] for c in customers} == {100}
    assert {c["email_domain"] for c in customers} == {"reqres.in"}
    assert sorted(c["customer_id"] for c in customers) == list(range(1, 13))
    assert all(isinstance(c["customer_id"], int) for c in customers)
    for customer in customers:
        assert list(customer)[: len(CONTRACT_KEYS)] == CONTRACT_KEYS
    timestamp = doc["metadata"]["export_timestamp"]
    assert time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ")


def test_two_runs_over_the_same_data_export_identical_customers(tmp_path):
    with DemoAPI(dataset="reqres", faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
        first = read_export(tmp_path / "out.json")
        orchestrate.run(settings(tmp_path, api.base_url))
        second = read_export(tmp_path / "out.json")
    assert first["customers"] == second["customers"]
    assert second["metadata"]["run_id"] == 2


def test_run_pipeline_python_api_is_the_same_as_the_cli(tmp_path):
    with DemoAPI(dataset="reqres", faults="none") as api:
        summary = run_pipeline(base_url=api.base_url, output_file=tmp_path / "py.json",
                               warehouse=tmp_path / "w.duckdb", retry=FAST_RETRY)
        result = run_cli("run", "--base-url", api.base_url, "--output", str(tmp_path / "cli.json"),
                         "--warehouse", str(tmp_path / "w2.duckdb"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert summary.metadata["total_customers"] == 12
    assert read_export(tmp_path / "py.json")["customers"] == read_export(tmp_path / "cli.json")["customers"]
    assert "12 customers" in result.stdout


# -- a messy API with transient faults -------------------------------------------------------------


def test_messy_data_with_transient_faults_succeeds_and_marts_match_export(tmp_path):
    faults = [
        Fault(page=1, attempt=1, kind="503", retry_after="0"),
        Fault(page=2, attempt=1, kind="429", retry_after="0"),
        Fault(page=2, attempt=2, kind="500"),
        Fault(page=3, attempt=1, kind="truncated"),
        Fault(page=3, attempt=2, kind="html"),
    ]
    with DemoAPI(dataset="demo", faults=faults) as api:
        summary = orchestrate.run(settings(tmp_path, api.base_url, per_page=100, concurrency=3))
        requests_by_page = {p: len(api.page_requests(p)) for p in (1, 2, 3)}
        records = api.records()
    assert requests_by_page == {1: 2, 2: 3, 3: 3}
    assert summary.retries == 5
    doc = read_export(tmp_path / "out.json")
    marts = {row["customer_id"]: row for row in mart_rows(tmp_path / "warehouse" / "customers.duckdb")}
    customers = doc["customers"]
    # one row per distinct id received, in both
    assert len(customers) == len(marts) == len({r["id"] for r in records if isinstance(r.get("id"), int)})
    # the export is the mart, field for field
    for customer in customers:
        row = marts[customer["customer_id"]]
        for key in CONTRACT_KEYS:
            assert customer[key] == row[key], (customer, key)
    buckets = doc["metadata"]["data_quality_summary"]
    assert buckets == {
        "high_quality": sum(1 for r in marts.values() if r["data_quality_score"] >= 90),
        "medium_quality": sum(1 for r in marts.values() if 70 <= r["data_quality_score"] < 90),
        "low_quality": sum(1 for r in marts.values() if r["data_quality_score"] < 70),
    }
    assert buckets["medium_quality"] + buckets["low_quality"] > 0
    assert doc["metadata"]["duplicates_removed"] == len(records) - len(customers)
    scores = [r["data_quality_score"] for r in marts.values()]
    assert doc["metadata"]["average_quality_score"] == pytest.approx(round(sum(scores) / len(scores), 2), abs=0.005)


# -- failures leave the last good state -----------------------------------------------------------


def _good_run(tmp_path) -> tuple[bytes, list[dict]]:
    with DemoAPI(dataset="reqres", faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url, per_page=4))
    return (tmp_path / "out.json").read_bytes(), mart_rows(tmp_path / "warehouse" / "customers.duckdb")


def test_a_page_that_always_fails_names_the_page_and_keeps_the_last_good_state(tmp_path):
    export_before, marts_before = _good_run(tmp_path)
    with DemoAPI(dataset="reqres", faults=[Fault(page=2, attempt=0, kind="500")]) as api:
        started = time.monotonic()
        # three attempts, not the default six: the same path, without ~10 s of real back-off
        result = run_cli("run", "--base-url", api.base_url, "--per-page", "4", "--max-attempts", "3",
                         "--warehouse", str(tmp_path / "warehouse" / "customers.duckdb"),
                         "--output", str(tmp_path / "out.json"), "--quiet")
        elapsed = time.monotonic() - started
        asked = len(api.page_requests(2))
    assert result.returncode == 1
    assert elapsed < 60 and asked == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: page 2: gave up after 3 attempts"), result.stderr
    assert "HTTP 500" in lines[0] and "Traceback" not in result.stderr
    assert (tmp_path / "out.json").read_bytes() == export_before
    assert mart_rows(tmp_path / "warehouse" / "customers.duckdb") == marts_before
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    run = con.execute("select status, failed_stage, error from raw.runs where run_id = 2").fetchone()
    landed = con.execute("select list(page order by page) from raw.api_pages where run_id = 2").fetchone()[0]
    con.close()
    assert run[0] == "failed" and run[1] == "extract" and "page 2" in run[2]
    assert 2 not in landed and 1 in landed  # what arrived stays landed, for --resume


def test_401_fails_at_once_without_retries_and_never_leaks_the_key(tmp_path):
    key = "sk-test-SECRET-4242"
    with DemoAPI(dataset="reqres", faults="none", api_key="the-right-key") as api:
        result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(tmp_path / "w.duckdb"),
                         "--output", str(tmp_path / "out.json"), env={"PIPELINE_API_KEY": key})
        served = list(api.requests)
    assert result.returncode == 1
    assert len(served) == 1 and served[0].status == 401 and served[0].headers_had_api_key
    assert "HTTP 401" in result.stderr and "API key" in result.stderr
    assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out.json").exists()
    assert key not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_key_sent_as_header_and_stored_nowhere_on_success(tmp_path):
    key = "sk-live-abcdef123456"
    with DemoAPI(dataset="reqres", faults="none", api_key=key) as api:
        result = run_cli("run", "--base-url", api.base_url, "--api-key", key, "--per-page", "5",
                         "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "out.json"))
        assert all(r.headers_had_api_key for r in api.requests)
    assert result.returncode == 0, result.stderr
    assert key not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("command", ["build", "export", "test"])
def test_a_step_that_reads_a_warehouse_that_is_not_there_is_one_line_and_makes_no_file(tmp_path, command):
    result = run_cli(command, "--warehouse", str(tmp_path / "none.duckdb"),
                     *(["--output", str(tmp_path / "o.json")] if command == "export" else []))
    assert result.returncode == 1
    assert error_lines(result.stderr) == [f"error: no warehouse at {tmp_path / 'none.duckdb'} yet: "
                                          "run `python pipeline.py run` first"]
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_that_refuses_files_fails_before_any_work(tmp_path):
    # /proc passes os.access for root, yet takes no files: found out before anything is published
    with DemoAPI(dataset="reqres", faults="none") as api:
        result = run_cli("run", "--base-url", api.base_url, "--warehouse", str(tmp_path / "w.duckdb"),
                         "--output", "/proc/customers.json")
        assert api.requests == []
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: output folder /proc is not writable"), result.stderr
    assert not (tmp_path / "w.duckdb").exists()


def test_export_before_any_build_is_one_line(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    with DemoAPI(dataset="reqres", faults="none") as api:
        assert run_cli("extract", "--base-url", api.base_url, "--warehouse", str(warehouse), "-q").returncode == 0
    result = run_cli("export", "--warehouse", str(warehouse), "--output", str(tmp_path / "o.json"))
    assert result.returncode == 1
    assert error_lines(result.stderr) == [f"error: nothing is published in {warehouse} yet: "
                                          "run `python pipeline.py build` (or `run`) first"]
    assert not (tmp_path / "o.json").exists()


def test_a_key_read_with_its_line_break_works_and_one_with_a_break_inside_is_refused_unshown(tmp_path):
    # a key from a file with Windows line endings ends in "\r\n": stripped, it is the key; a
    # break inside it cannot be sent, and requests' error would have repeated the key
    key = "sk-live-abcdef123456"
    with DemoAPI(dataset="reqres", faults="none", api_key=key) as api:
        ok = run_cli("run", "--base-url", api.base_url, "--per-page", "5", "--warehouse", str(tmp_path / "w.duckdb"),
                     "--output", str(tmp_path / "out.json"), env={"PIPELINE_API_KEY": key + "\r\n"})
        assert ok.returncode == 0, ok.stderr
        assert api.requests and all(r.headers_had_api_key for r in api.requests)
        asked = len(api.requests)
        bad = run_cli("run", "--base-url", api.base_url, "--warehouse", str(tmp_path / "w2.duckdb"),
                      "--output", str(tmp_path / "out2.json"), env={"PIPELINE_API_KEY": "sk-live-abc\ndef123456"})
        assert len(api.requests) == asked  # refused before any request
    assert bad.returncode == 2
    errors = error_lines(bad.stderr)
    assert len(errors) == 1 and "API key contains a line break" in errors[0]
    for part in ("sk-live-abc", "def123456"):
        assert part not in bad.stdout + bad.stderr
    assert not (tmp_path / "w2.duckdb").exists()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_the_key_is_redacted_also_as_python_escapes_it():
    from extract.redact import redact

    key = "sk-secret-123\r"
    assert redact(f"Invalid leading whitespace in header value: {key!r}", key) == \
        "Invalid leading whitespace in header value: '***'"


# -- the CLI: bad input is one line and a non-zero exit --------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--base-url", "ftp://example.com/api"], "--base-url must be an http(s) URL"),
        (["--base-url", "not a url"], "--base-url must be an http(s) URL"),
        (["--base-url", "http://127.0.0.1:99999/api"], "--base-url must be an http(s) URL"),
        (["--base-url", "http://[::1/api"], "--base-url must be an http(s) URL"),
        (["--base-url", "http://exa mple.com/api"], "--base-url must be an http(s) URL"),
        (["--base-url", "http://u:pw-secret-1@h:99999/api?api_key=k-secret-2"],
         "not 'http://h:99999/api?api_key=***'"),
        (["--per-page", "0"], "--per-page must be a whole number from 1"),
        (["--concurrency", "0"], "--concurrency must be a whole number from 1"),
        (["--per-page", "ten"], "argument --per-page: invalid int value"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--demo", "--per-page", "0"], "--per-page must be a whole number from 1"),  # before the demo banner
        # DuckDB's settings: refused while opening the file, they read like a damaged warehouse
        (["--memory-limit", "lots"], "--memory-limit lots: DuckDB does not accept it (Parser Error: Memory"),
        (["--threads", "0"], "--threads must be a whole number of at least 1, not 0"),
        (["--threads", "100000000"], "--threads 100000000: more than this machine's"),
        (["--keep-runs", "100000000000000000000"], "--keep-runs must be from 1 to 1,000,000,000"),
        (["--lock-timeout", "nan"], "--lock-timeout must be from 0 to 86400 seconds, not nan"),
        (["--storage-version", "banana"], "--storage-version banana: DuckDB does not accept it (not a DuckDB"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(tmp_path, args, fragment):
    result = run_cli("run", *args, "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (tmp_path / "w.duckdb").exists()


@pytest.mark.parametrize("command, file", [("run", "Staging.duckdb"), ("status", "staging.duckdb"),
                                           ("run", "staging.backup.duckdb")])
def test_a_warehouse_named_like_a_schema_is_refused_before_anything_is_made(tmp_path, command, file):
    # DuckDB names the database after its file (up to the first dot): in staging.duckdb,
    # `staging.x` is ambiguous (catalog or schema?), and the build failed with a Binder Error
    warehouse = tmp_path / file
    result = run_cli(command, *(["--demo", "--output", str(tmp_path / "o.json")] if command == "run" else []),
                     "--warehouse", str(warehouse))
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: --warehouse {warehouse}: DuckDB names the database after its file, and 'staging' is also one of "
        "the warehouse's schemas (raw, staging, intermediate, marts, meta), so queries could not tell them apart; "
        "name the file otherwise, e.g. customers_staging.duckdb"], result.stderr
    assert not warehouse.exists()


@pytest.mark.parametrize("command", ["build", "test", "export"])
def test_every_step_names_a_bad_duckdb_setting(tmp_path, command):
    with DemoAPI(dataset="reqres", faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
    result = run_cli(command, "--memory-limit", "banana", "--warehouse", str(tmp_path / "warehouse" / "customers.duckdb"),
                     *(["--output", str(tmp_path / "out.json")] if command == "export" else []))
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "error: --memory-limit banana: DuckDB does not accept it (Parser Error: Memory must have a number (e.g. 1GB))"]


def test_a_memory_limit_too_small_is_one_line_naming_the_flag(tmp_path):
    result = run_cli("run", "--demo", "--memory-limit", "1KB", "--warehouse", str(tmp_path / "w.duckdb"),
                     "--output", str(tmp_path / "o.json"))
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: DuckDB ran out of memory (Out of Memory Error"), result.stderr
    assert "--memory-limit" in errors[0] and "damaged" not in errors[0] and "move it aside" not in errors[0]
    assert not (tmp_path / "o.json").exists()


def test_a_warehouse_where_nothing_can_be_written_is_one_line(tmp_path):
    # /proc takes no new files (root included): the run lock beside the warehouse cannot be made
    result = run_cli("run", "--demo", "--warehouse", "/proc/customers.duckdb", "--output", str(tmp_path / "o.json"))
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: cannot write the run lock /proc/customers.duckdb.lock (No such file or directory): the "
        "warehouse's folder must be writable (a read-only copy can be queried with `duckdb -readonly`)"], result.stderr


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder or a link): to see nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() and not p.is_symlink() else None
            for p in sorted(folder.rglob("*"))}


# how each output names the warehouse wh/c.duckdb (or its files), run from the test's folder
SAME_AS_WAREHOUSE = {
    "same": ("wh/c.duckdb", "are the same file: writing it would replace the warehouse"),
    "dotted": ("./wh/../wh/./c.duckdb", "are the same file"),
    "absolute": (None, "are the same file"),  # tmp_path / wh / c.duckdb
    "symlink": ("link.json", "are the same file"),
    "hard-link": ("hard.json", "are the same file"),
    "wal": ("wh/c.duckdb.wal", "is the warehouse's write-ahead log: DuckDB deletes it at its next checkpoint"),
    "lock": ("./wh/c.duckdb.lock", "is the warehouse's run lock"),
}


@pytest.mark.parametrize("command", ["run", "export", "docs"])
@pytest.mark.parametrize("form", list(SAME_AS_WAREHOUSE))
def test_an_output_that_is_the_warehouse_or_one_of_its_files_is_refused_and_nothing_changes(
        tmp_path, published_warehouse, command, form):
    # the export (and the docs page) is renamed over its path: over the warehouse it replaced the
    # database with a JSON document; over the WAL it was deleted by DuckDB's next checkpoint
    import shutil

    (tmp_path / "wh").mkdir()
    shutil.copy(published_warehouse, tmp_path / "wh" / "c.duckdb")
    (tmp_path / "link.json").symlink_to(tmp_path / "wh" / "c.duckdb")
    os.link(tmp_path / "wh" / "c.duckdb", tmp_path / "hard.json")
    output, fragment = SAME_AS_WAREHOUSE[form]
    output = output or str(tmp_path / "wh" / "c.duckdb")
    before = _tree(tmp_path)
    result = run_cli(command, *(["--demo"] if command == "run" else []), "--warehouse", "wh/c.duckdb",
                     "--output", output, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith(f"error: --output {Path(output)} ") and fragment in errors[0], \
        result.stderr
    assert "give" in errors[0]
    assert _tree(tmp_path) == before  # no lock, no docs page, no temp file: nothing made or changed


@pytest.mark.parametrize("command", ["run", "extract"])
def test_a_warehouse_that_is_the_output_is_refused_before_anything_is_made(tmp_path, command):
    # extract writes no export: its --output default must not be mistaken for one
    args = ["--demo", "--warehouse", "sample.json"]
    result = run_cli(command, *args, *(["--output", "./sample.json"] if command == "run" else []),
                     "-q", cwd=tmp_path)
    if command == "extract":
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "error: --output sample.json and --warehouse sample.json are the same file: writing it would replace "
        "the warehouse; give each its own path"]
    assert list(tmp_path.iterdir()) == []


def test_an_output_where_the_run_writes_its_docs_page_is_refused(tmp_path):
    # the page is written after the export, and would have replaced it
    page = tmp_path / "docs" / "w.duckdb.html"
    page.parent.mkdir()
    result = run_cli("run", "--demo", "--warehouse", str(tmp_path / "w.duckdb"), "--output",
                     str(tmp_path / "docs" / ".." / "docs" / "w.duckdb.html"))
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: --output {tmp_path / 'docs' / '..' / 'docs' / 'w.duckdb.html'} is where the run writes the data "
        f"docs page ({page}): the page would replace the export; give another path"]
    assert list(tmp_path.iterdir()) == [page.parent] and list(page.parent.iterdir()) == []


def test_the_python_api_refuses_a_docs_page_that_is_the_warehouse(tmp_path):
    with pytest.raises(UsageError, match="the data docs page .* and --warehouse .* are the same file"):
        orchestrate.run(settings(tmp_path, "http://127.0.0.1:9/api", warehouse=tmp_path / "w.duckdb",
                                 docs_output=tmp_path / "." / "w.duckdb"))
    assert list(tmp_path.iterdir()) == []


def test_status_runs_must_be_at_least_one(tmp_path):
    result = run_cli("status", "--runs", "-3", "--warehouse", str(tmp_path / "w.duckdb"))
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "error: argument --runs: must be from 1 to 1,000,000,000, not -3 (see `pipeline.py status --help`)"]


def test_unreachable_host_is_one_clear_line(tmp_path):
    # port 9 on loopback: nothing listens, the connection is refused at once; the API never
    # answered this run, so after a second try the run stops (default --max-attempts, 6)
    result = run_cli("run", "--base-url", "http://127.0.0.1:9/api",
                     "--warehouse", str(tmp_path / "w.duckdb"),
                     "--output", str(tmp_path / "o.json"), env={"PIPELINE_LOCK_TIMEOUT": "1"}, timeout=90)
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: page 1: connection refused by 127.0.0.1:9 (2 attempts, http://127.0.0.1:9/api/")
    assert "check --base-url and that the API is running" in errors[0]
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert rows(con, "select status, requests from raw.runs") == [("failed", 2)]
    assert not (tmp_path / "o.json").exists()


def test_help_explains_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "extract", "build", "test", "export", "status", "demo-api"):
        assert command in result.stdout
    run_help = run_cli("run", "--help").stdout
    for flag in ("--base-url", "--api-key", "--per-page", "--concurrency", "--warehouse", "--output", "--demo",
                 "--resume", "--max-requests-per-minute", "--lock-timeout"):
        assert flag in run_help
    assert "PIPELINE_API_KEY" in run_help and "ps" in run_help
    for command in ("run", "extract", "build", "test", "export", "status", "docs", "demo-api"):
        help_text = run_cli(command, "--help").stdout  # each with its usage under its own name and an example
        assert help_text.startswith(f"usage: python pipeline.py {command} ") or \
            help_text.startswith(f"usage: pipeline.py {command} "), help_text[:80]
        assert "example:" in help_text and f"pipeline.py {command}" in help_text.split("example:")[1], command


def test_validation_errors_from_python(tmp_path):
    with pytest.raises(UsageError, match="--per-page"):
        run_pipeline(base_url="http://127.0.0.1:9/api", output_file=tmp_path / "o.json",
                     warehouse=tmp_path / "w.duckdb", per_page=0)


# -- the demo and the step commands ----------------------------------------------------------------


def test_demo_run_writes_export_and_warehouse_offline(tmp_path):
    result = run_cli("run", "--demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = read_export(tmp_path / "sample_output.json")
    assert doc["metadata"]["total_customers"] > 12
    assert (tmp_path / "warehouse" / "customers.duckdb").exists()
    assert "demo API serving on http://127.0.0.1:" in result.stderr


def test_a_demo_run_killed_mid_extraction_resumes_with_demo(tmp_path):
    # --demo serves on the same port each time (when free), so its runs can be --resume'd; the
    # test's own port (PIPELINE_DEMO_PORT), so that a demo running on 8642 meanwhile is no matter
    port = str(free_port())
    base = ["--demo", "--per-page", "10", "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json")]
    killed = run_cli("run", *base, env={"PIPELINE_CRASH_AT": "mid-extract", "PIPELINE_DEMO_PORT": port})
    assert killed.returncode == -signal.SIGKILL
    # before the next run marks it failed, status does not show it as running on
    status = run_cli("status", "--warehouse", str(tmp_path / "w.duckdb"))
    assert "#1 died" in status.stdout and "its process stopped before it finished" in status.stdout, status.stdout
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    pages, records = rows(con, "select count(*), sum(record_count) from raw.api_pages")[0]
    con.close()
    # what it landed is counted from its pages (it died before counting), and nothing unknown shows as 0
    assert pages > 0 and f", {pages} pages, {records} records\n" in status.stdout, status.stdout
    as_json = json.loads(run_cli("status", "--json", "--warehouse", str(tmp_path / "w.duckdb")).stdout)
    assert (as_json["runs"][0]["status"], as_json["runs"][0]["stale"]) == ("running", True)
    resumed = run_cli("run", *base, "--resume", env={"PIPELINE_DEMO_PORT": port})
    assert resumed.returncode == 0, resumed.stderr
    assert f"run 1: resuming from http://127.0.0.1:{port}/api" in resumed.stderr
    assert read_export(tmp_path / "o.json")["metadata"]["total_customers"] == 270
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    assert rows(con, "select run_id, status, resumes from raw.runs") == [(1, "succeeded", 1)]
    con.close()


def test_a_summary_stdout_cannot_take_does_not_undo_a_good_run(tmp_path):
    # a terminal that cannot show é, or a stdout on a full disk: the run is done, and says so
    base = ["run", "--demo", "-q", "--warehouse", str(tmp_path / "w.duckdb")]
    ascii_run = run_cli(*base, "--output", str(tmp_path / "é.json"),
                        env={"PYTHONIOENCODING": "ascii", "PIPELINE_DEMO_PORT": str(free_port())})
    assert ascii_run.returncode == 0, ascii_run.stderr
    assert "-> " in ascii_run.stdout and "\\xe9.json" in ascii_run.stdout
    if not Path("/dev/full").is_char_device():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *base, "--output", str(tmp_path / "o.json")],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
                                env={**{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
                                     "PIPELINE_DEMO_PORT": str(free_port())})
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: run 2 succeeded, but its summary could not be written to stdout (No space left on device)"], result.stderr
    assert read_export(tmp_path / "o.json")["metadata"]["run_id"] == 2


def test_demo_takes_another_port_when_its_own_is_taken(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("run", "--demo", "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json"),
                         env={"PIPELINE_DEMO_PORT": str(port)})
    assert result.returncode == 0, result.stderr
    assert "demo API serving on http://127.0.0.1:" in result.stderr and f":{port}/" not in result.stderr


def test_warehouses_side_by_side_keep_their_own_docs_page(tmp_path):
    for name in ("prod", "test"):
        result = run_cli("run", "--demo", "-q", "--warehouse", str(tmp_path / f"{name}.duckdb"),
                         "--output", str(tmp_path / f"{name}.json"))
        assert result.returncode == 0, result.stderr
        assert f"data docs: {tmp_path / 'docs' / (name + '.duckdb.html')}" in result.stdout
    pages = {p.name: p.read_text() for p in (tmp_path / "docs").iterdir()}
    assert sorted(pages) == ["prod.duckdb.html", "test.duckdb.html"]
    assert all("<html" in page for page in pages.values())


def test_steps_one_by_one_then_status(tmp_path):
    base = ["--warehouse", str(tmp_path / "w.duckdb")]
    with DemoAPI(dataset="reqres", faults="none") as api:
        extract = run_cli("extract", "--base-url", api.base_url, *base)
    assert extract.returncode == 0 and extract.stdout.startswith("run 1 extracted in "), extract.stdout
    build = run_cli("build", *base)
    assert build.returncode == 0, build.stderr
    assert build.stdout.startswith("run 1 succeeded in "), build.stdout  # the build completes the run
    test = run_cli("test", *base)
    assert test.returncode == 0 and "pass dim_customers__customer_id_unique" in test.stdout
    export = run_cli("export", *base, "--output", str(tmp_path / "e.json"))
    assert export.returncode == 0, export.stderr
    assert read_export(tmp_path / "e.json")["metadata"]["total_customers"] == 12
    status = run_cli("status", *base)
    assert status.returncode == 0, status.stderr
    assert "#1 succeeded" in status.stdout and "12 customers exported" in status.stdout
    assert "marts.dim_customers" in status.stdout and "up to date" in status.stdout
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    # the build log names the run it published, as a `run` does (the docs page shows it)
    assert rows(con, "select distinct run_id from meta.model_builds") == [(1,)]
    assert rows(con, "select distinct run_id from meta.test_results") == [(1,)]
    assert rows(con, "select distinct run_id from meta.published_models") == [(1,)]
    assert rows(con, "select status, customers_exported, export_path from raw.runs") == [
        ("succeeded", 12, str(tmp_path / "e.json"))]
    con.close()


DATA_TESTS = ["dim_customers__accepted_values", "dim_customers__customer_id_not_null",
              "dim_customers__customer_id_unique", "dim_customers__full_name_rule",
              "dim_customers__reconciles_with_raw", "dim_customers__score_in_range"]


@pytest.fixture(scope="module")
def published_warehouse(tmp_path_factory):
    """A warehouse with the demo data published (270 customers), to copy and tamper with."""
    path = tmp_path_factory.mktemp("published") / "w.duckdb"
    with DemoAPI(dataset="demo", faults="none") as api:
        orchestrate.run(settings(path.parent, api.base_url, warehouse=path, output=path.parent / "o.json"))
    return path


@pytest.mark.parametrize("tamper, failing", [
    # each of the shipped data tests catches what it is about in a published mart
    ("select * from t union all (select * from t order by customer_id limit 1)",
     {"dim_customers__customer_id_unique", "dim_customers__reconciles_with_raw"}),
    ("select * replace (case when customer_id = (select min(customer_id) from t) then null "
     "else customer_id end as customer_id) from t",
     {"dim_customers__customer_id_not_null"}),
    ("select * replace (case when customer_id = (select min(customer_id) from t) then 'gold' "
     "else customer_tier::varchar end as customer_tier) from t", {"dim_customers__accepted_values"}),
    ("select * replace (case when customer_id = (select min(customer_id) from t) then null "
     "else email_domain end as email_domain) from t", {"dim_customers__accepted_values"}),
    ("select * replace (case when customer_id = (select min(customer_id) from t) then full_name || '  ' "
     "else full_name end as full_name) from t", {"dim_customers__full_name_rule"}),
    ("select * replace (case when customer_id = (select min(customer_id) from t) then 101 "
     "else data_quality_score end as data_quality_score) from t", {"dim_customers__score_in_range"}),
    ("select * replace (case when customer_id = (select min(customer_id) from t where quality_bucket = 'low') "
     "then 95 else data_quality_score end as data_quality_score) from t", {"dim_customers__score_in_range"}),
    ("select * from t where customer_id != (select max(customer_id) from t)",
     {"dim_customers__reconciles_with_raw"}),
])
def test_each_data_test_fails_on_the_mart_it_guards(tmp_path, published_warehouse, tamper, failing):
    import shutil

    warehouse = tmp_path / "w.duckdb"
    shutil.copy(published_warehouse, warehouse)
    assert run_cli("test", "--warehouse", str(warehouse)).returncode == 0  # the copy passes as built
    con = duckdb.connect(str(warehouse))
    con.execute("create temp table t as select * from marts.dim_customers")
    con.execute(f"create or replace table marts.dim_customers as {tamper}")
    con.close()
    result = run_cli("test", "--warehouse", str(warehouse))
    assert result.returncode == 1, result.stdout + result.stderr
    failed = {line.split()[1] for line in result.stdout.splitlines() if line.strip().startswith("fail ")}
    passed = {line.split()[1] for line in result.stdout.splitlines() if line.strip().startswith("pass ")}
    assert failed == failing, result.stdout
    assert passed == set(DATA_TESTS) - failing, result.stdout


def test_test_checks_the_published_run_not_one_landed_since(tmp_path):
    # run 1 (demo data, 300 records) is published; run 2 lands the reqres pages (12 records) and is
    # not built: the data tests still describe run 1's marts, which reconcile with run 1's pages
    base = ["--warehouse", str(tmp_path / "w.duckdb")]
    with DemoAPI(dataset="demo", faults="none") as api:
        assert run_cli("run", "--base-url", api.base_url, *base, "--output", str(tmp_path / "o.json")).returncode == 0
    with DemoAPI(dataset="reqres", faults="none") as api:
        assert run_cli("extract", "--base-url", api.base_url, *base).returncode == 0
    result = run_cli("test", *base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pass dim_customers__reconciles_with_raw" in result.stdout


def test_a_failing_build_step_fails_the_run_it_would_publish_not_one_published_before(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    sql = tmp_path / "sql"
    import shutil

    shutil.copytree(ROOT / "sql", sql)
    (sql / "tests" / "always_fails.sql").write_text("-- flags every customer\nselect customer_id from {{ ref('dim_customers') }}\n")
    with DemoAPI(dataset="reqres", faults="none") as api:
        assert run_cli("run", "--base-url", api.base_url, "--warehouse", str(warehouse),
                       "--output", str(tmp_path / "o.json")).returncode == 0
        # run 1 is published; a build that fails now does not make it a failed run
        assert run_cli("build", "--warehouse", str(warehouse), "--sql-dir", str(sql)).returncode == 1
        assert run_cli("extract", "--base-url", api.base_url, "--warehouse", str(warehouse)).returncode == 0
        # run 2 was only extracted: the failing build is its failure
        assert run_cli("build", "--warehouse", str(warehouse), "--sql-dir", str(sql)).returncode == 1
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select run_id, status, failed_stage from raw.runs order by 1") == [
        (1, "succeeded", None), (2, "failed", "build")]
    assert rows(con, "select distinct run_id from marts.dim_customers") == [(1,)]
    con.close()
    # the models fixed (the failing test gone), `build` publishes run 2: it is no longer a failed run
    (sql / "tests" / "always_fails.sql").unlink()
    assert run_cli("build", "--warehouse", str(warehouse), "--sql-dir", str(sql)).returncode == 0
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select run_id, status, failed_stage, error from raw.runs order by 1") == [
        (1, "succeeded", None, None), (2, "succeeded", None, None)]
    assert rows(con, "select distinct run_id from marts.dim_customers") == [(2,)]
    con.close()


def test_a_run_killed_after_its_publish_is_completed_by_export_and_never_failed_by_a_later_build(tmp_path):
    import shutil

    warehouse, output = str(tmp_path / "w.duckdb"), str(tmp_path / "o.json")
    bad_sql = tmp_path / "sql"
    shutil.copytree(ROOT / "sql", bad_sql)
    (bad_sql / "tests" / "always_fails.sql").write_text("-- flags every customer\nselect customer_id from {{ ref('dim_customers') }}\n")

    def runs():
        con = duckdb.connect(warehouse, read_only=True)
        try:
            return rows(con, "select run_id, status, failed_stage, customers_exported from raw.runs order by 1")
        finally:
            con.close()

    assert run_cli("run", "--demo", "--warehouse", warehouse, "--output", output).returncode == 0
    killed = run_cli("run", "--demo", "--warehouse", warehouse, "--output", output, env={"PIPELINE_CRASH_AT": "mid-export"})
    assert killed.returncode == -signal.SIGKILL  # run 2 published, its export not in place
    # the marts describe run 2: a build that fails now leaves its row as the kill left it
    assert run_cli("build", "--warehouse", warehouse, "--sql-dir", str(bad_sql)).returncode == 1
    assert runs() == [(1, "succeeded", None, 270), (2, "failed", "interrupted", None)]
    # `export` writes what the kill cut short: nothing of run 2 is missing any more
    assert run_cli("export", "--warehouse", warehouse, "--output", output).returncode == 0
    assert runs() == [(1, "succeeded", None, 270), (2, "succeeded", None, 270)]
    assert read_export(tmp_path / "o.json")["metadata"]["run_id"] == 2


def test_warehouse_is_written_with_storage_version_1_0(tmp_path):
    with DemoAPI(dataset="reqres", faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    tags = con.execute("select tags from duckdb_databases() where database_name = 'customers'").fetchone()[0]
    con.close()
    assert tags["storage_version"].startswith("v1.0.0")


@pytest.mark.parametrize("key, given_as_key", [("sk-in-url-987654321", True), ("sk/in+url=98765 4321", True),
                                               ("tok-only-in-the-url-5555", False)])
def test_a_key_inside_the_base_url_is_redacted_everywhere(tmp_path, key, given_as_key):
    # the second key changes when URL-encoded: it is stored and shown in that form too; the third
    # is only in the URL (as user:password@ and ?api_key=), not given as the API key
    from urllib.parse import quote, quote_plus

    forms = {key, quote(key, safe=""), quote_plus(key)}
    with DemoAPI(dataset="reqres", faults=[Fault(page=2, attempt=0, kind="500")]) as api:
        base = (api.base_url.replace("http://", f"http://user:{quote(key, safe='')}@")
                + f"?api_key={quote(key, safe='')}")
        # requests drops nothing here: the server ignores the query; the page URL is built from it
        result = run_cli("run", "--base-url", base, "--per-page", "6", "--max-attempts", "2",
                         "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json"),
                         env={"PIPELINE_API_KEY": key} if given_as_key else {})
    assert result.returncode == 1
    assert "***" in result.stderr and not any(form in result.stdout + result.stderr for form in forms)
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    stored = con.execute("select source_url, error from raw.runs").fetchall()
    urls = con.execute("select url from raw.api_pages").fetchall()
    con.close()
    assert stored and urls
    assert all(form not in str(value) for row in stored + urls for value in row for form in forms)
    assert all("***" in url for (url,) in urls)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert not any(form.encode() in path.read_bytes() for form in forms), path


def test_export_is_readable_by_others_like_a_normal_file(tmp_path):
    with DemoAPI(dataset="reqres", faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o666 & ~umask


def _filesystem_type(path: Path) -> str:
    """The type of the filesystem ``path`` is on, from /proc/mounts ('' where unknown)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    path, best, kind = str(Path(path).resolve()), "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return kind


def test_export_in_place_and_copied_give_the_same_document(tmp_path, monkeypatch):
    """The metadata goes in front of DuckDB's array in place (fallocate INSERT_RANGE) where the
    filesystem can, else by copying; either way the same JSON, fsynced, no temp files left."""
    from transform import export as export_mod

    in_place = []
    real = export_mod._prepend_in_place
    monkeypatch.setattr(export_mod, "_prepend_in_place", lambda *a: in_place.append(real(*a)) or in_place[-1])
    with DemoAPI(dataset="demo", faults="none", customers=300) as api:
        # an export this small is copied: no blank run of padding before "customers"
        orchestrate.run(settings(tmp_path, api.base_url, output=tmp_path / "small.json"))
        assert in_place == [] and b" " * 64 not in (tmp_path / "small.json").read_bytes()
        monkeypatch.setattr(export_mod, "IN_PLACE_FROM", 0)  # as if it were a big one
        orchestrate.run(settings(tmp_path, api.base_url))
        first = read_export(tmp_path / "out.json")
        monkeypatch.setattr(export_mod, "_fallocate", lambda: None)  # as on a filesystem without it
        orchestrate.run(settings(tmp_path, api.base_url, output=tmp_path / "copied.json"))
    copied = read_export(tmp_path / "copied.json")
    assert len(in_place) == 2 and in_place[-1] is False  # the third export took the copying path
    can_insert_range = _filesystem_type(tmp_path) in ("ext4", "xfs") and sys.platform == "linux"
    if can_insert_range:
        assert in_place[0] is True  # the second export was made in place
    assert read_export(tmp_path / "small.json")["customers"] == first["customers"]
    assert len(first["customers"]) == first["metadata"]["total_customers"] > 200
    assert copied["customers"] == first["customers"]
    assert list(copied["metadata"]) == list(first["metadata"])
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]

    # the in-place step itself: either the exact document, or (filesystem cannot) the file untouched
    array = tmp_path / "array.json"
    body = b'[\n\t{"customer_id":1}\n]\n'
    array.write_bytes(body)
    done = export_mod._prepend_in_place(str(array), b'{"metadata": {},\n', b'"customers": ', b"\n}\n")
    text = array.read_bytes()
    if done:
        header = len(text) - len(body) - 3  # whole filesystem blocks in front of the array
        assert header > 0 and header % 512 == 0 and text.startswith(b'{"metadata": {},\n   ')
        assert json.loads(text) == {"metadata": {}, "customers": [{"customer_id": 1}]}
    else:
        assert text == body


# A second export, in a process of its own: writes its temp file, says its name, and waits for a
# line on stdin before it renames it into place.
HELD_EXPORT = """
import sys
from pathlib import Path
import duckdb
from transform import export
from transform.project import Project
con = duckdb.connect(sys.argv[1], read_only=True)
prepared = export.prepare(con, Project(Path(sys.argv[3])), Path(sys.argv[2]))
print(prepared.tmp_name, flush=True)
sys.stdin.readline()
prepared.publish()
print("published", flush=True)
"""


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_exports_from_two_warehouses_to_one_output_at_once_both_succeed(tmp_path, published_warehouse):
    # each export's temp file is its own (pid and random name): the one that started second
    # deleted the first one's, which then failed with "No such file"
    import shutil

    from conftest import SQL_DIR

    for name in ("a.duckdb", "b.duckdb"):
        shutil.copy(published_warehouse, tmp_path / name)
    output = tmp_path / "out.json"
    held = subprocess.Popen([sys.executable, "-c", HELD_EXPORT, str(tmp_path / "a.duckdb"), str(output), str(SQL_DIR)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        held_temp = Path(held.stdout.readline().strip())
        assert held_temp.parent == tmp_path and held_temp.exists(), held.stderr.read() if held.poll() else ""
        result = run_cli("export", "--warehouse", str(tmp_path / "b.duckdb"), "--output", str(output), "-q")
        assert result.returncode == 0, result.stderr
        assert held_temp.exists()  # the other export's file was left alone
        out, err = held.communicate("go\n", timeout=60)
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
    assert held.returncode == 0 and out.strip().endswith("published"), err
    assert held_temp.name.startswith(f".out.json.{held.pid}-") and held_temp.name.endswith(".tmp")  # whose it is
    assert read_export(output)["metadata"]["total_customers"] == 270
    assert _temp_files(tmp_path) == []


def test_an_export_clears_the_temp_files_of_dead_processes_only_and_leaves_none_of_its_own(tmp_path,
                                                                                          published_warehouse):
    import shutil

    shutil.copy(published_warehouse, tmp_path / "w.duckdb")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now
    alive = os.getpid()  # this test's process: another one than the export's
    leftovers = [f".out.json.{dead.pid}-k3j4h5g6.tmp", f".out.json.{dead.pid}-k3j4h5g6.tmp.customers",
                 ".out.json.k3j4h5g6.tmp"]  # the last named as before pids were: an old version's
    kept = [f".out.json.{alive}-a1b2c3d4.tmp", f".out.json.{alive}-a1b2c3d4.tmp.customers",
            ".out.json.backup", f".other.json.{dead.pid}-k3j4h5g6.tmp", f".out.json.json.{dead.pid}-k3j4h5g6.tmp"]
    for name in leftovers + kept:
        (tmp_path / name).write_text("partial")
    result = run_cli("export", "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(kept)

    # a failed export leaves none of its own either (stopped before the rename, as by Ctrl-C)
    for name in kept:
        (tmp_path / name).unlink()
    before = (tmp_path / "out.json").read_bytes()
    stopping = threading.Event()
    stopping.set()
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        from conftest import SQL_DIR
        from transform.project import Project

        with pytest.raises(export_mod.ExportError, match="stopped before it replaced"):
            export_mod.export(con, Project(SQL_DIR), tmp_path / "out.json", stopping)
    finally:
        con.close()
    assert _temp_files(tmp_path) == [] and (tmp_path / "out.json").read_bytes() == before


def test_an_unreachable_remote_api_suggests_the_demo(tmp_path):
    # .invalid never resolves (RFC 2606): what a machine without network sees for reqres.in
    result = run_cli("run", "--base-url", "https://api.invalid/api",
                     "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json"), timeout=90)
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: page 1: cannot resolve host api.invalid (2 attempts")
    assert errors[0].endswith("check --base-url and the network, or try --demo")
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert rows(con, "select status, requests from raw.runs") == [("failed", 2)]


def test_sigterm_mid_extraction_is_one_line_exit_143_and_a_failed_run(tmp_path):
    # cron and orchestrators stop a job with SIGTERM: it unwinds like Ctrl-C, and the run is
    # marked failed (not left 'running' until the next run notices)
    warehouse = tmp_path / "w.duckdb"
    with DemoAPI(dataset="scale", customers=3000, faults="none", latency=0.05) as api:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "pipeline.py"), "run", "--base-url", api.base_url, "--per-page", "25",
             "--concurrency", "2", "--warehouse", str(warehouse), "--output", str(tmp_path / "out.json"), "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(api.requests) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert error_lines(err) == ["error: terminated (SIGTERM); the last good warehouse and export are unchanged"]
    assert "Traceback" not in err and not (tmp_path / "out.json").exists()
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select status, failed_stage, error from raw.runs") == [("failed", "extract", "Terminated")]
    # what it landed is counted (status and the README's "how every sync went" query show it)
    assert rows(con, "select pages_landed, records_landed from raw.runs") == rows(
        con, "select count(*), sum(record_count) from raw.api_pages") and rows(con, "select pages_landed from raw.runs")[0][0] > 0
    con.close()


@pytest.mark.parametrize("sig, code, said, recorded", [
    (signal.SIGTERM, 143, "terminated (SIGTERM)", "Terminated"),
    (signal.SIGINT, 130, "interrupted", "KeyboardInterrupt"),
])
def test_a_stop_while_duckdb_builds_is_one_line_its_exit_code_and_publishes_nothing(tmp_path, sig, code, said, recorded):
    # DuckDB hands a signal that lands inside a query back as RuntimeError('Query interrupted'):
    # it was reported as an unexpected error, exit 1, and the run as failed with that text
    import shutil

    sql = tmp_path / "sql"
    shutil.copytree(ROOT / "sql", sql)
    (sql / "tests" / "slow.sql").write_text(  # a data test that runs for ~15 s on two cores
        "-- slow on purpose\nselect x from range(3000000000) t(x) where x % 1000003 = 7 and x < 0\n")
    base = ["--demo", "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json")]
    assert run_cli("run", *base).returncode == 0
    before = (tmp_path / "o.json").read_bytes()
    process = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py"), "run", *base, "--sql-dir", str(sql)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("  marts.customer_quality_summary"):  # the last model: the tests run now
            break
    time.sleep(1.0)
    process.send_signal(sig)
    err = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == code, err
    assert error_lines(err) == [f"error: {said}; the last good warehouse and export are unchanged"], err
    assert (tmp_path / "o.json").read_bytes() == before
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    assert rows(con, "select run_id, status, failed_stage, error from raw.runs order by 1") == [
        (1, "succeeded", None, None), (2, "failed", "build", recorded)]
    assert rows(con, "select distinct run_id from marts.dim_customers") == [(1,)]
    con.close()


def _wrap_connections(monkeypatch, execute) -> None:
    """The run's DuckDB connections, with ``execute(con, sql, *args)`` in front of each statement."""
    real_connect = orchestrate.connect

    class Wrapped:
        def __init__(self, con):
            self._con = con

        def execute(self, sql, *args):
            return execute(self._con, sql, *args)

        def __getattr__(self, name):
            return getattr(self._con, name)

    monkeypatch.setattr(orchestrate, "connect", lambda *a, **k: Wrapped(real_connect(*a, **k)))


def _stop_entering_finish(monkeypatch) -> None:
    """A Ctrl-C as the run enters _finish: after the build's commit, before the export."""
    def stopped(self):
        raise KeyboardInterrupt()

    monkeypatch.setattr(orchestrate._Run, "_finish", stopped)


def _second_run_with(tmp_path, monkeypatch, execute, raises):
    """A first run, then a second whose statements go through ``execute``: what the second raised."""
    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
        _wrap_connections(monkeypatch, execute)
        with pytest.raises(raises) as raised:
            orchestrate.run(settings(tmp_path, api.base_url))
    return raised.value


def test_a_stop_inside_the_checkpoint_is_an_interrupt_of_a_published_run(tmp_path, monkeypatch):
    # DuckDB raises RuntimeError('Query interrupted') for a Ctrl-C inside its checkpoint (real
    # signals in the build: the test above); after the commit that is a stop of a published run
    def interrupted(con, sql, *args):
        if sql == "checkpoint":
            raise RuntimeError("Query interrupted")
        return con.execute(sql, *args)

    stop = _second_run_with(tmp_path, monkeypatch, interrupted, raises=KeyboardInterrupt)
    assert stop.published_run == 2
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    run = rows(con, "select status, failed_stage, error from raw.runs where run_id = 2")
    con.close()
    # the export beside the checkpoint either finished (the run is done) or was stopped
    assert run == ([("succeeded", None, None)] if stop.exported else [("failed", "export", "KeyboardInterrupt")])


def test_a_checkpoint_duckdb_cannot_write_is_one_line_saying_what_is_safe(tmp_path, monkeypatch):
    # a full disk at the checkpoint: DuckDB invalidates the database ('FATAL Error'); trying the
    # checkpoint again said only 'database has been invalidated', as an unexpected error
    from extract.errors import WarehouseError

    checkpoints = []

    def disk_full(con, sql, *args):
        if sql == "checkpoint":
            checkpoints.append(sql)
            raise duckdb.FatalException('FATAL Error: Failed to create checkpoint because of error: '
                                        'Could not write file "w.duckdb": No space left on device')
        return con.execute(sql, *args)

    error = _second_run_with(tmp_path, monkeypatch, disk_full, raises=WarehouseError)
    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    exported = read_export(tmp_path / "out.json")["metadata"]["run_id"] == 2
    assert str(error) == (
        f"run 2 was published, but DuckDB could not write it into {warehouse} (Could not write file \"w.duckdb\": "
        f"No space left on device); it is kept in {warehouse}.wal, which DuckDB applies when the warehouse next "
        f"opens with room to write; {'the export is written' if exported else 'the last export is unchanged'}")
    assert checkpoints == ["checkpoint"]  # not tried again on an invalidated database


def test_a_checkpoint_that_fails_after_extract_alone_is_one_line_too(tmp_path, monkeypatch):
    from extract.errors import WarehouseError

    def disk_full(con, sql, *args):
        if sql == "checkpoint":
            raise duckdb.FatalException("FATAL Error: Failed to create checkpoint because of error: "
                                        "Could not write file: No space left on device")
        return con.execute(sql, *args)

    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
        _wrap_connections(monkeypatch, disk_full)
        with pytest.raises(WarehouseError, match=r"^run 2's pages were landed, but DuckDB could not write them into "
                                                 r".*customers\.duckdb \(Could not write file: No space left"):
            orchestrate.run(settings(tmp_path, api.base_url), ("extract",))


@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_a_stop_while_the_process_exits_after_its_command_is_one_line(tmp_path, sig, code, said):
    # the handlers were put back to the defaults when main() returned: a signal while Python closed
    # DuckDB and its threads killed the process without a word (exit -15 or -2)
    with DemoAPI(dataset="reqres", faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
    script = ("import os, signal, sys, time, pipeline\n"
              f"code = pipeline.main(['status', '--warehouse', {str(tmp_path / 'warehouse' / 'customers.duckdb')!r}], "
              "exiting=True)\n"
              f"os.kill(os.getpid(), {int(sig)})\n"
              "time.sleep(10)\n"
              "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")})
    assert result.returncode == code, result.stderr
    assert "runs (newest first):" in result.stdout
    assert error_lines(result.stderr) == [f"error: {said} as the command was exiting; its outcome above stands"]


def test_a_stop_between_the_commit_and_the_finish_is_one_of_a_published_run(tmp_path, monkeypatch):
    # a Ctrl-C that lands after the build's commit but before _finish handles stops (here: as
    # _finish is entered) said "the last good warehouse and export are unchanged", and left the
    # published run 'running'
    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
        _stop_entering_finish(monkeypatch)
        with pytest.raises(KeyboardInterrupt) as raised:
            orchestrate.run(settings(tmp_path, api.base_url))
    assert (raised.value.published_run, raised.value.exported) == (2, False)
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    assert rows(con, "select distinct run_id from marts.dim_customers") == [(2,)]
    assert rows(con, "select run_id, status, failed_stage from raw.runs order by 1") == [
        (1, "succeeded", None), (2, "failed", "export")]
    con.close()


def test_a_stop_once_the_run_is_recorded_done_leaves_it_succeeded(tmp_path, monkeypatch):
    # a stop while the docs page is written (after the run's final row): the run succeeded
    from transform import docs as docs_mod

    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        def stopped(*args, **kwargs):
            raise KeyboardInterrupt()

        monkeypatch.setattr(docs_mod, "write_page", stopped)
        with pytest.raises(KeyboardInterrupt) as raised:
            orchestrate.run(settings(tmp_path, api.base_url))
    assert (raised.value.published_run, raised.value.exported, raised.value.completed) == (1, True, True)
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    assert rows(con, "select status, failed_stage from raw.runs") == [("succeeded", None)]
    con.close()


def test_a_stop_right_after_build_alone_commits_names_the_run_it_published(tmp_path, monkeypatch):
    # `build` of the published run again: no run of its own, so the stop named none ("unchanged")
    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
    _stop_entering_finish(monkeypatch)
    with pytest.raises(KeyboardInterrupt) as raised:
        orchestrate.run(settings(tmp_path, "http://127.0.0.1:9/api", full_refresh=True), ("build",))
    assert raised.value.published_run == 1


def test_a_stop_during_the_rollback_of_a_failed_commit_is_the_stop_reported(tmp_path, monkeypatch, capsys):
    # a commit that failed, and Ctrl-C while it was rolled back: the stop was held and then lost
    # (exit 1), and stayed held for the next run in the process
    import pipeline
    from extract import errors

    def failing_commit(con, sql, *args):
        if sql == "commit":
            raise duckdb.IOException("IO Error: could not write the WAL")
        if sql == "rollback":
            os.kill(os.getpid(), signal.SIGINT)  # handled before execute() returns
        return con.execute(sql, *args)

    base = ["--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json"), "-q"]
    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        assert pipeline.main(["run", "--base-url", api.base_url, *base]) == 0
        capsys.readouterr()
        _wrap_connections(monkeypatch, failing_commit)
        code = pipeline.main(["run", "--base-url", api.base_url, *base])
    err = capsys.readouterr().err
    assert code == 130, err
    assert error_lines(err) == ["error: interrupted; the last good warehouse and export are unchanged"], err
    assert errors._deferred == []
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    assert rows(con, "select distinct run_id from marts.dim_customers") == [(1,)]
    con.close()


def test_ctrl_c_as_the_build_commits_stops_after_the_commit_not_inside_it(tmp_path, monkeypatch, capsys):
    # a signal that came while DuckDB committed was raised once the commit was done; the rollback
    # that followed failed ('no transaction is active'), and that error hid the stop: exit 1,
    # the run recorded as failed at build though its rows were published. The commit now holds
    # the signal until it is over, and the stop is one of a published run.
    import pipeline

    sent = []

    def signalled_at_commit(con, sql, *args):
        result = con.execute(sql, *args)
        if sql == "commit" and not sent:
            sent.append(sql)
            os.kill(os.getpid(), signal.SIGINT)  # handled before execute() returns
        return result

    base = ["--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json"), "-q"]
    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        assert pipeline.main(["run", "--base-url", api.base_url, *base]) == 0
        before = (tmp_path / "o.json").read_bytes()
        capsys.readouterr()
        _wrap_connections(monkeypatch, signalled_at_commit)
        code = pipeline.main(["run", "--base-url", api.base_url, *base])
    err = capsys.readouterr().err
    assert sent
    assert code == 130, err
    assert error_lines(err) == ["error: interrupted after run 2 was published; the last export is unchanged "
                                "(`python pipeline.py export` writes the new one)"], err
    assert (tmp_path / "o.json").read_bytes() == before
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    assert rows(con, "select distinct run_id from marts.dim_customers") == [(2,)]
    assert rows(con, "select run_id, status, failed_stage from raw.runs order by 1") == [
        (1, "succeeded", None), (2, "failed", "export")]
    con.close()


def test_ctrl_c_during_the_export_marks_the_run_failed_and_leaves_nothing_running(tmp_path, monkeypatch):
    # the export runs on its own cursor beside the checkpoint; Ctrl-C there must still mark the
    # run failed at 'export', wait for the export thread, and keep the last document
    real_export = export_mod.export
    exporting = threading.Event()

    def slow_export(con, project, output, stopping=None):
        exporting.set()
        time.sleep(1.0)  # stands for a long COPY
        return real_export(con, project, output, stopping)

    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
        before = (tmp_path / "out.json").read_bytes()
        monkeypatch.setattr(export_mod, "export", slow_export)
        threading.Thread(target=lambda: (exporting.wait(20), time.sleep(0.3), _thread.interrupt_main()),
                         daemon=True).start()
        with pytest.raises(KeyboardInterrupt) as raised:
            orchestrate.run(settings(tmp_path, api.base_url))
    # with room on the disk the export comes after the commit: the CLI says run 2 is published
    assert (raised.value.published_run, raised.value.exported) == (2, False)
    assert [t.name for t in threading.enumerate() if t.name == "finish"] == []  # ended before run() returned
    time.sleep(1.5)  # had it run on, the thread would have written the document by now
    assert (tmp_path / "out.json").read_bytes() == before
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    run = con.execute("select status, failed_stage, error from raw.runs where run_id = 2").fetchone()
    published = rows(con, "select distinct run_id from marts.dim_customers")
    con.close()
    assert run == ("failed", "export", "KeyboardInterrupt") and published == [(2,)]


def test_ctrl_c_during_an_export_short_of_space_marks_the_run_failed_and_publishes_nothing(tmp_path, monkeypatch):
    # a disk short of space gets the export inside the build's transaction, before the commit:
    # Ctrl-C there rolls the build back, marks the run failed at 'export', and keeps the last
    # marts and document
    real_prepare = export_mod.prepare
    exporting = threading.Event()

    def slow_prepare(con, project, output):
        exporting.set()
        time.sleep(1.0)  # stands for a long COPY
        return real_prepare(con, project, output)

    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
        before = (tmp_path / "out.json").read_bytes()
        monkeypatch.setattr(export_mod, "prepare", slow_prepare)
        monkeypatch.setattr(export_mod, "SPARE_BYTES", 1 << 62)  # no disk has that much free
        threading.Thread(target=lambda: (exporting.wait(20), time.sleep(0.3), _thread.interrupt_main()),
                         daemon=True).start()
        with pytest.raises(KeyboardInterrupt) as raised:
            orchestrate.run(settings(tmp_path, api.base_url))
    assert not hasattr(raised.value, "published_run")  # the CLI says: nothing changed
    assert [t.name for t in threading.enumerate() if t.name == "finish"] == []  # ended before run() returned
    time.sleep(1.5)  # had it run on, the export would have been written by now
    assert (tmp_path / "out.json").read_bytes() == before
    assert [p.name for p in tmp_path.glob(".out.json.*")] == []
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    run = con.execute("select status, failed_stage, error from raw.runs where run_id = 2").fetchone()
    published = rows(con, "select distinct run_id from marts.dim_customers")
    con.close()
    assert run == ("failed", "export", "KeyboardInterrupt")
    assert published == [(1,)]


def test_a_disk_that_fills_during_the_export_publishes_nothing(tmp_path, monkeypatch):
    # DESIGN: a failed run does not touch the marts or the last export. A disk short of space
    # gets the export (a temp file) before the build commits, so when it fills, the run fails
    # while both stand
    import errno

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    warehouse = tmp_path / "warehouse" / "customers.duckdb"
    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url))
        before = (tmp_path / "out.json").read_bytes()
        monkeypatch.setattr(export_mod, "SPARE_BYTES", 1 << 62)  # no disk has that much free
        monkeypatch.setattr(export_mod, "_prepend_in_place", disk_full)  # and this one fills up
        monkeypatch.setattr(export_mod, "_assemble", disk_full)
        with pytest.raises(export_mod.ExportError, match="cannot write .*out.json: No space left on device"):
            orchestrate.run(settings(tmp_path, api.base_url))
        con = duckdb.connect(str(warehouse), read_only=True)
        assert rows(con, "select run_id, status, failed_stage from raw.runs order by 1") == [
            (1, "succeeded", None), (2, "failed", "export")]
        assert rows(con, "select distinct run_id from marts.dim_customers") == [(1,)]
        assert rows(con, "select run_id from staging.stg_pipeline__current_run") == [(1,)]
        con.close()
        assert (tmp_path / "out.json").read_bytes() == before
        assert [p.name for p in tmp_path.glob(".out.json.*")] == []
        monkeypatch.undo()  # space again: the next run publishes and exports
        orchestrate.run(settings(tmp_path, api.base_url))
    assert json.loads((tmp_path / "out.json").read_text())["metadata"]["run_id"] == 3


def test_an_output_folder_gone_during_the_build_publishes_nothing(tmp_path, monkeypatch):
    # the folder is checked at the start and again just before the commit: gone in between (a
    # cleanup job, an unmounted share), the run fails at 'export' and the last marts stand
    from transform.runner import Runner

    output = tmp_path / "exports" / "out.json"
    output.parent.mkdir()
    real_tests = Runner.run_tests

    def tests_then_folder_gone(self):
        results = real_tests(self)
        output.unlink()
        output.parent.rmdir()
        return results

    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url, output=output))
        monkeypatch.setattr(Runner, "run_tests", tests_then_folder_gone)
        with pytest.raises(export_mod.ExportError, match="output folder .*exports does not exist"):
            orchestrate.run(settings(tmp_path, api.base_url, output=output))
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    assert rows(con, "select run_id, status, failed_stage from raw.runs order by 1") == [
        (1, "succeeded", None), (2, "failed", "export")]
    assert rows(con, "select distinct run_id from marts.dim_customers") == [(1,)]
    con.close()


@pytest.mark.parametrize("published, exported, said", [
    (None, False, "error: interrupted; the last good warehouse and export are unchanged"),
    (4, False, "error: interrupted after run 4 was published; the last export is unchanged "
               "(`python pipeline.py export` writes the new one)"),
    (4, True, "error: interrupted after run 4 was published and exported; the data docs page was not "
              "written (`python pipeline.py docs` writes it)"),
    (4, "completed", "error: interrupted as run 4 finished: it succeeded, and its warehouse and export are in place"),
])
def test_ctrl_c_says_what_it_left(tmp_path, monkeypatch, capsys, published, exported, said):
    import pipeline

    def interrupted(settings, steps, progress):
        exc = KeyboardInterrupt()
        if published is not None:  # as orchestrate.run marks one that lands after the build's commit
            exc.published_run, exc.exported = published, bool(exported)
            exc.completed = exported == "completed"
        raise exc

    monkeypatch.setattr(orchestrate, "run", interrupted)
    code = pipeline.main(["run", "--base-url", "http://127.0.0.1:9/api", "--warehouse", str(tmp_path / "w.duckdb"),
                          "--output", str(tmp_path / "o.json"), "--quiet"])
    assert code == 130
    assert error_lines(capsys.readouterr().err) == [said]


def test_ctrl_c_while_the_docs_are_rendered_records_the_run_as_succeeded_and_leaves_nothing_running(
        tmp_path, monkeypatch):
    # the docs page is rendered on its own cursor, after the export, while the checkpoint runs:
    # Ctrl-C there stops it and waits for it; the run is published and exported, so it is
    # recorded as succeeded, and no page is written
    from transform import docs as docs_mod

    real_render = docs_mod.render_docs
    writing = threading.Event()

    def slow_render(con, project, pending_run=None):
        writing.set()
        time.sleep(1.0)  # stands for a long page
        return real_render(con, project, pending_run)

    monkeypatch.setattr(docs_mod, "render_docs", slow_render)
    with DemoAPI(dataset="scale", customers=30, duplicate_rate=0, faults="none") as api:
        threading.Thread(target=lambda: (writing.wait(20), time.sleep(0.3), _thread.interrupt_main()),
                         daemon=True).start()
        with pytest.raises(KeyboardInterrupt) as raised:
            orchestrate.run(settings(tmp_path, api.base_url))
    assert (raised.value.published_run, raised.value.exported) == (1, True)
    assert [t.name for t in threading.enumerate() if t.name == "finish"] == []  # ended before run() returned
    assert read_export(tmp_path / "out.json")["metadata"]["total_customers"] == 30
    assert not (tmp_path / "warehouse" / "docs" / "index.html").exists()
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    assert con.execute("select status, customers_exported from raw.runs where run_id = 1").fetchall() \
        == [("succeeded", 30)]
    con.close()
