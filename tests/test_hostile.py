"""Hostile API data, end to end: nothing crashes the build, nothing vanishes silently."""

from __future__ import annotations

import json

import duckdb
import pytest

from conftest import dicts, rows, run_cli, settings
from extract.errors import ApiError
from scripted_api import ScriptedAPI, page_body
from transform import orchestrate

LONG = "x" * 10_000
INJECTION = "Robert'); drop table marts.dim_customers; --"

PAGE_1 = [
    {"id": 1, "first_name": "<script>alert('x')</script>", "last_name": 'O"Brien', "email": "a@b.io",
     "avatar": "a", "nickname": "extra field", "address": {"city": "nested"}},
    {"id": "7", "first_name": "😀 Emoji", "last_name": "مرحبا", "email": "rtl@example.com", "avatar": "a"},
    {"id": "abc", "first_name": "Bad", "last_name": "Id", "email": "bad@id.io", "avatar": "a"},
    {"first_name": "No", "last_name": "Id", "email": "no@id.io", "avatar": "a"},
    {"id": 9, "first_name": LONG, "last_name": INJECTION, "email": f"{LONG}@long.io", "avatar": "a"},
    {"id": 10},
]
PAGE_3 = [
    "not an object",
    {"id": None, "first_name": "Null", "email": "null@id.io"},
    {"id": 11, "first_name": "Last", "last_name": "One", "email": "last@one.io", "avatar": "a"},
]


def hostile_api(html_first_on_page_2=True):
    def respond(request):
        if request.page == 1:
            return 200, {}, page_body(1, 6, PAGE_1, total_pages=3, total=15)
        if request.page == 2:
            if html_first_on_page_2 and request.attempt == 1:
                return 200, {"Content-Type": "text/html"}, "<html><body>Service Unavailable</body></html>"
            return 200, {}, {"page": 2, "per_page": 6, "total_pages": 3, "data": None}
        return 200, {}, page_body(3, 6, PAGE_3, total_pages=3)
    return ScriptedAPI(respond)


def test_hostile_records_are_kept_as_data_quarantined_with_reasons_and_counted(tmp_path):
    with hostile_api() as api:
        summary = orchestrate.run(settings(tmp_path, api.base_url, per_page=6))
        assert [r.page for r in api.requests].count(2) == 2  # the HTML 200 was retried
    meta = summary.metadata
    assert meta["total_customers"] == 5
    assert meta["records_extracted"] == 9
    assert meta["records_quarantined"] == 4
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    customers = {row["customer_id"]: row for row in dicts(con, "select * from marts.dim_customers")}
    quarantined = rows(con, "select page, position_in_page, reason, record from marts.quarantined_records order by 1, 2")
    tables = rows(con, "select count(*) from duckdb_tables() where schema_name = 'marts'")
    con.close()
    assert sorted(customers) == [1, 7, 9, 10, 11]
    assert customers[1]["first_name"] == "<script>alert('x')</script>" and customers[1]["last_name"] == 'O"Brien'
    assert customers[7]["full_name"] == "😀 Emoji مرحبا"
    assert customers[9]["first_name"] == LONG and customers[9]["last_name"] == INJECTION
    assert customers[9]["email_domain"] == "long.io"
    assert customers[10]["data_quality_score"] == 60 and customers[10]["full_name"] is None
    assert customers[10]["quality_issues"] == ["missing_first_name", "missing_last_name", "missing_email",
                                               "missing_avatar"]
    assert [(page, position, reason) for page, position, reason, _ in quarantined] == [
        (1, 3, "invalid_id"), (1, 4, "missing_id"), (3, 1, "not_an_object"), (3, 2, "missing_id")]
    assert json.loads(quarantined[0][3])["id"] == "abc"
    assert tables == [(3,)]  # the injection attempt is just a name
    export = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert {c["customer_id"] for c in export["customers"]} == {1, 7, 9, 10, 11}
    assert export["customers"][-1]["customer_id"] == 10  # NULL name sorts last


def test_a_200_that_is_always_html_fails_clearly_naming_the_page(tmp_path):
    def respond(request):
        if request.page == 1:
            return 200, {}, page_body(1, 6, PAGE_1, total_pages=2)
        return 200, {"Content-Type": "text/html"}, "<html>maintenance</html>"

    with ScriptedAPI(respond) as api:
        result = run_cli("run", "--base-url", api.base_url, "--per-page", "6", "--max-attempts", "3",
                         "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: page 2: gave up after")
    assert "not valid JSON" in errors[0]
    assert not (tmp_path / "o.json").exists()


def test_an_api_short_of_what_it_reported_warns_once_per_fact(tmp_path):
    # pages 3-5 of 5 come back empty: each warning is one line on stderr, shown as it happens
    # during the extraction, and not printed a second time by the run's summary
    def respond(request):
        if request.page >= 3:
            return 200, {}, page_body(request.page, 2, [], total_pages=5, total=10)
        records = [{"id": request.page * 10 + i, "email": f"u{i}@x.io"} for i in range(2)]
        return 200, {}, page_body(request.page, 2, records, total_pages=5, total=10)

    with ScriptedAPI(respond) as api:
        result = run_cli("run", "--base-url", api.base_url, "--per-page", "2", "--concurrency", "1",
                         "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json"))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line.lower()]
    assert warnings == ["warning: page 3 of 5 is empty: the API holds fewer records than it reported; "
                        "not asking for the pages after it",
                        "warning: the API reported 10 records but 4 were received"], result.stderr
    assert json.loads((tmp_path / "o.json").read_text())["metadata"]["total_customers"] == 4
