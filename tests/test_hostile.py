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
                        "stopping there (page 4 is asked for to make sure)",
                        "warning: the API reported 10 records but 4 were received"], result.stderr
    assert json.loads((tmp_path / "o.json").read_text())["metadata"]["total_customers"] == 4


# A record with a lone UTF-16 surrogate escape, as the JSON text carries it: Python's parser
# takes it, DuckDB's does not. PII marks what must never reach a message.
PII = "ana.secret@example.com"
LONE_SURROGATE_PAGE = ('{"page": 2, "per_page": 2, "total_pages": 3, "data": [{"id": 3, "first_name": "\\ud800", '
                       f'"email": "{PII}"}}, {{"id": 4, "first_name": "Four", "email": "{PII}"}}]}}')


def _pages_with_page_2(page_2):
    """Three pages of two; page 2 is ``page_2(attempt)`` (a body), page 3 names its first customer
    with an emoji escaped as a surrogate pair, as json.dumps writes it."""
    def respond(request):
        if request.page == 2:
            return 200, {}, page_2(request.attempt)
        first = {"id": 5, "first_name": "\U0001F600 Smile", "email": "e@x.io"} if request.page == 3 else \
            {"id": request.page * 2 - 1, "first_name": "One", "email": PII}
        records = [first, {"id": request.page * 2, "first_name": "Two", "email": "t@x.io"}]
        return 200, {}, json.dumps(page_body(request.page, 2, records, total_pages=3))
    return respond


def test_a_lone_surrogate_escape_is_a_bad_body_retried_and_escaped_pairs_land(tmp_path):
    good_page_2 = json.dumps(page_body(2, 2, [{"id": 3, "first_name": "Three"}, {"id": 4}], total_pages=3))
    with ScriptedAPI(_pages_with_page_2(lambda attempt: LONE_SURROGATE_PAGE if attempt == 1 else good_page_2)) as api:
        summary = orchestrate.run(settings(tmp_path, api.base_url, per_page=2))
        assert api.pages_requested().count(2) == 2  # the bad body was retried
    assert summary.metadata["total_customers"] == 6
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    names = dict(rows(con, "select customer_id, first_name from marts.dim_customers"))
    page_3 = rows(con, "select body::varchar from raw.api_pages where page = 3")[0][0]
    con.close()
    assert names[5] == "\U0001F600 Smile" and names[3] == "Three"
    assert "\\ud83d\\ude00" in page_3  # landed as received: the escaped pair, not re-encoded


def test_a_page_that_keeps_a_lone_surrogate_fails_naming_it_without_record_contents(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    with ScriptedAPI(_pages_with_page_2(lambda attempt: LONE_SURROGATE_PAGE)) as api:
        result = run_cli("run", "--base-url", api.base_url, "--per-page", "2", "--max-attempts", "2",
                         "--warehouse", str(warehouse), "--output", str(tmp_path / "o.json"))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: page 2: gave up after 2 attempts, last: the body "
                                                     "holds a lone UTF-16 surrogate escape (\\ud800), which is "
                                                     "not valid JSON text"), result.stderr
    assert PII not in result.stderr and "Exception" not in result.stderr
    con = duckdb.connect(str(warehouse), read_only=True)
    landed = [page for (page,) in rows(con, "select page from raw.api_pages order by page")]
    error = rows(con, "select error from raw.runs")[0][0]
    con.close()
    assert 1 in landed and 2 not in landed  # the good pages landed, kept for --resume
    assert PII not in error


@pytest.mark.parametrize("body", ['{"data": [{"id": 1, "first_name": "\\uDC00"}]}', '{"\\ud800": 1, "data": []}',
                                  '{"data": ' + "[" * 200_000, '{"data": ' + "[" * 200_000 + "]" * 200_000 + "}",
                                  '{"data": [{"id": 1}], "page": 1, "data": [{"id": 2}, {"id": 3}]}',
                                  '{"data": [{"id": 1}], "d\\u0061ta": [{"id": 2}, {"id": 3}]}'])
def test_bodies_python_parses_but_duckdb_would_not_land_are_retried_then_fail(body):
    from extract.client import ApiClient
    from conftest import FAST_RETRY

    with ScriptedAPI(lambda r: (200, {}, body)) as api:
        with pytest.raises(ApiError, match=r"^page 1: gave up after \d+ attempts, last: the body (holds a lone "
                                           r"UTF-16 surrogate escape \(\\ud[8c]00\)|is nested too deeply|"
                                           r"has its 'data' key twice)"):
            ApiClient(api.base_url, 6, policy=FAST_RETRY, sleep=lambda s: None).get_page(1)
        assert len(api.requests) == FAST_RETRY.attempts


def test_a_batch_duckdb_refuses_fails_in_one_line_naming_its_pages_not_their_bodies(con):
    # validation keeps such a body out; should DuckDB refuse a batch all the same, the error
    # names the pages and DuckDB's reason, never the bodies DuckDB quotes
    from datetime import datetime, timezone

    from extract.client import Page
    from extract.errors import WarehouseError
    from extract.land import land_pages

    def page(number, body):
        return Page(number, f"http://127.0.0.1/api/users?page={number}", 200, body, json.loads(body),
                    datetime.now(timezone.utc), 1, 0.0)

    good = json.dumps(page_body(1, 2, [{"id": 1, "email": PII}], total_pages=9))
    batch = [page(n, good) for n in (2, 3, 4, 7)] + [page(5, LONE_SURROGATE_PAGE)]
    with pytest.raises(WarehouseError) as raised:
        land_pages(con, 1, batch)
    message = str(raised.value)
    assert message.startswith("landing pages 2-5, 7 failed (none of them landed): DuckDB: Conversion Error: "
                              "Malformed JSON"), message
    assert PII not in message and "ud800" not in message and len(message) < 300 and "\n" not in message
    assert rows(con, "select count(*) from raw.api_pages") == [(0,)]


def test_an_api_that_ignores_the_page_parameter_fails_the_run_in_one_line(tmp_path):
    # every request gets page 1's customers: the run used to publish those 6 of 12 and exit 0
    customers = [{"id": i, "first_name": f"F{i}", "email": f"u{i}@x.io"} for i in range(1, 7)]
    with ScriptedAPI(lambda r: (200, {}, page_body(1, 6, customers, total_pages=2, total=12))) as api:
        result = run_cli("run", "--base-url", api.base_url, "--per-page", "6",
                         "--warehouse", str(tmp_path / "w.duckdb"), "--output", str(tmp_path / "o.json"))
        assert sorted(api.pages_requested()) == [1, 2]  # page 2 once: not retried
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: page 2: the API answered with page 1 instead; it does not seem to read ?page= "
                      "(check --base-url)"], result.stderr
    assert not (tmp_path / "o.json").exists()
