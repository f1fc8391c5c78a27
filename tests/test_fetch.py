"""Paging, concurrency, rate limits and resume, against real servers on 127.0.0.1."""

from __future__ import annotations

import io
import json
import re
import os
import signal
import subprocess
import sys
import threading
import time

import duckdb
import pytest

from conftest import FAST_RETRY, ROOT, land_records, rows, settings
from extract.client import ApiClient, ClientStats, RetryPolicy
from extract.errors import ApiError, Cancelled
from extract.demo_api import DemoAPI
from extract.fetch import extract_run
from extract.progress import Progress
from extract.throttle import Throttle
from scripted_api import ScriptedAPI, page_body
from transform import orchestrate

RECORDS = [{"id": i, "first_name": f"F{i}", "last_name": f"L{i}", "email": f"u{i}@x.io", "avatar": "a"}
           for i in range(1, 24)]  # 23 records: 5 pages of 5, the last one short


def paged(records=RECORDS, total_pages=lambda page, real: real, repeat_last=False, empty_from=None,
          empty_pages=()):
    """A reqres-like responder over ``records`` whose total_pages and ending a test controls."""
    def respond(request):
        per_page = request.per_page or 6
        real = -(-len(records) // per_page)
        page = request.page
        if repeat_last and page > real:
            page = real
        data = records[(page - 1) * per_page: page * per_page]
        if (empty_from is not None and request.page >= empty_from) or request.page in empty_pages:
            data = []
        body = page_body(request.page, per_page, data, total=len(records))
        value = total_pages(request.page, real)
        if value is not None:
            body["total_pages"] = value
        return 200, {}, body
    return respond


def extract_with(con, base_url, per_page=5, concurrency=3, run_id=1):
    con.execute("insert into raw.runs (run_id, started_at, status) values (?, now(), 'running')", [run_id])
    client = ApiClient(base_url, per_page, policy=FAST_RETRY, throttle=Throttle(concurrency))
    try:
        return extract_run(con, run_id, client, concurrency)
    finally:
        client.close()


def landed(con, run_id=1):
    return rows(con, "select page, record_count from raw.api_pages where run_id = ? order by page", [run_id])


# -- paging edge cases ------------------------------------------------------------------------------


def test_pages_to_total_pages_including_a_short_last_page(con):
    with ScriptedAPI(paged()) as api:
        result = extract_with(con, api.base_url)
        assert sorted(api.pages_requested()) == [1, 2, 3, 4, 5]
    assert landed(con) == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 3)]
    assert result.records_landed == 23 and result.pages_expected == 5 and not result.warnings


def test_total_pages_growing_during_the_run_fetches_the_new_pages(con):
    # page 1 says 3 pages; later pages say 5 (records were added meanwhile)
    with ScriptedAPI(paged(total_pages=lambda page, real: 3 if page == 1 else real)) as api:
        result = extract_with(con, api.base_url)
        assert sorted(api.pages_requested()) == [1, 2, 3, 4, 5]
    assert result.records_landed == 23
    assert any("grew from 3 to 5" in w for w in result.warnings)


def test_total_pages_shrinking_during_the_run_is_reported_not_looped(con):
    records = RECORDS[:10]
    with ScriptedAPI(paged(records, total_pages=lambda page, real: 5 if page == 1 else real)) as api:
        result = extract_with(con, api.base_url)
        requested = api.pages_requested()
    # pages 3-5 are empty: one that comes back before the others are sent stops paging there
    assert {1, 2, 3} <= set(requested) <= {1, 2, 3, 4, 5} and len(requested) == len(set(requested))
    assert result.records_landed == 10
    assert "total_pages shrank from 5 to 2 during the run" in result.warnings
    assert any(re.fullmatch(r"page [345] of 5 is empty.*", w) for w in result.warnings)


def test_an_empty_page_before_total_pages_is_reported(con):
    with ScriptedAPI(paged(empty_from=3)) as api:
        result = extract_with(con, api.base_url)
    assert result.records_landed == 10
    assert any(re.fullmatch(r"page [345] of 5 is empty.*", w) for w in result.warnings)


def test_an_empty_page_stops_paging_there(con):
    # page 1 says 40 pages; from page 3 on they are empty: the pages after the first empty one
    # are not asked for, bar those already on the wire (at most 2 x concurrency queued)
    records = [dict(RECORDS[0], id=i) for i in range(1, 201)]
    with ScriptedAPI(paged(records, empty_from=3)) as api:
        result = extract_with(con, api.base_url, concurrency=2)
        requested = api.pages_requested()
    assert max(requested) <= 3 + 2 * 2 + 2 and len(requested) == len(set(requested))
    assert result.records_landed == 10
    assert [page for page, count in landed(con) if count] == [1, 2]
    # the first empty page to arrive: page 3, or page 4 when it overtook page 3 on the wire
    assert any(re.fullmatch(r"page ([34]) of 40 is empty: the API holds fewer records than it reported; "
                            r"stopping there \(page [45] is asked for to make sure\)", w) for w in result.warnings)
    assert result.pages_expected == max(requested)


def test_records_after_an_empty_page_are_fetched_after_all(con):
    # only page 3 of 8 is empty: whichever arrives first, the pages after it are all fetched
    records = [dict(RECORDS[0], id=i) for i in range(1, 41)]
    with ScriptedAPI(paged(records, empty_pages={3})) as api:
        result = extract_with(con, api.base_url, concurrency=2)
        assert sorted(api.pages_requested()) == list(range(1, 9))
    assert result.records_landed == 35
    assert landed(con) == [(page, 0 if page == 3 else 5) for page in range(1, 9)]
    assert result.pages_expected == 8
    assert any(w.startswith("page 3 of 8 is empty") for w in result.warnings)


class _InstantAPI:
    """A client without a server: ``spec(n)`` -> (records, total_pages) after ``delay(n)`` seconds.
    For races between the workers and the paging loop, which a server's latency would hide."""

    per_page = 5

    def __init__(self, spec, delay=lambda number: 0.0):
        self.spec, self.delay, self.asked = spec, delay, []

    def get_page(self, number):
        from datetime import datetime, timezone

        from extract.client import Page

        self.asked.append(number)
        time.sleep(self.delay(number))  # 0 too: lets the paging loop run between the workers
        records, total_pages = self.spec(number)
        text = json.dumps(page_body(number, 5, records, total_pages=total_pages))
        return Page(number, f"http://x/users?page={number}", 200, text, json.loads(text),
                    datetime.now(timezone.utc), 1, 0.0)

    def mark_answered(self):
        pass

    def cancel(self):
        pass


def _records_of(number):
    return [dict(RECORDS[0], id=number * 10 + i) for i in range(5)]


def test_pages_after_an_empty_page_never_hang_on_what_was_on_the_wire(con):
    # when the empty page 3 arrived before a worker had taken page 4, pages 4-8 were put off for good
    for run_id in range(1, 61):
        client = _InstantAPI(lambda number: ([] if number == 3 else _records_of(number), 8))
        con.execute("insert into raw.runs (run_id, started_at, status) values (?, now(), 'running')", [run_id])
        result = extract_run(con, run_id, client, 1 + run_id % 3)
        assert sorted(client.asked) == list(range(1, 9)), (run_id, sorted(client.asked), result.warnings)
        assert result.records_landed == 35


def test_a_resumed_run_never_lands_a_page_twice_around_an_empty_page(con):
    # the first try of run 1 landed pages 1, 6 and 7 (total_pages had grown to 7); resumed, page 3
    # is empty and page 2 reports 7 pages: pages 6 and 7 are not asked for again
    from extract.land import land_pages

    con.execute("insert into raw.runs (run_id, started_at, status) values (1, now(), 'running')")
    first_try = _InstantAPI(lambda number: (_records_of(number), 5 if number == 1 else 7))
    land_pages(con, 1, [first_try.get_page(number) for number in (1, 6, 7)])
    delays = {2: 0.3, 4: 0.6}
    client = _InstantAPI(lambda number: ([], 5) if number == 3 else (_records_of(number), 7),
                         lambda number: delays.get(number, 0.05))
    extract_run(con, 1, client, 2)
    assert sorted(client.asked) == [2, 3, 4, 5]
    assert landed(con) == [(1, 5), (2, 5), (3, 0), (4, 5), (5, 5), (6, 5), (7, 5)]


@pytest.mark.parametrize("value", [None, "five", 2.5, -1, True, 0, 0.0])
def test_missing_or_non_integer_total_pages_pages_until_a_short_page(con, value):
    # 0 with records on page 1 too: it once ended the run after page 1, with only a warning
    with ScriptedAPI(paged(total_pages=lambda page, real: value)) as api:
        result = extract_with(con, api.base_url)
        assert api.pages_requested() == [1, 2, 3, 4, 5]
    assert result.records_landed == 23 and result.pages_expected == 5
    assert any(w.startswith(f"page 1 has no usable total_pages ({value!r}); paging one by one") for w in result.warnings)


def test_an_api_that_repeats_its_last_page_forever_stops(con):
    records = RECORDS[:20]  # 4 full pages: no short page to stop on
    with ScriptedAPI(paged(records, total_pages=lambda page, real: None, repeat_last=True)) as api:
        result = extract_with(con, api.base_url)
        assert api.pages_requested() == [1, 2, 3, 4, 5]
    assert landed(con) == [(1, 5), (2, 5), (3, 5), (4, 5)]
    assert result.records_landed == 20
    assert any("page 5 repeats page 4" in w for w in result.warnings)


def test_an_api_that_repeats_its_last_page_with_total_pages_stops_at_total_pages(con):
    with ScriptedAPI(paged(repeat_last=True)) as api:
        result = extract_with(con, api.base_url)
        assert sorted(api.pages_requested()) == [1, 2, 3, 4, 5]
    assert result.records_landed == 23


def test_an_api_whose_total_pages_grows_with_every_repeated_page_stops(con):
    # every page says there is one more, and pages past the real last repeat it: not forever
    records = RECORDS[:10]  # 2 full pages of 5
    with ScriptedAPI(paged(records, total_pages=lambda page, real: page + 1, repeat_last=True)) as api:
        result = extract_with(con, api.base_url)
        assert sorted(api.pages_requested()) == [1, 2, 3]
    assert landed(con) == [(1, 5), (2, 5)]
    assert result.records_landed == 10 and result.pages_expected == 2
    assert any(w.startswith("page 3 repeats page 2 although total_pages grew to 3") for w in result.warnings)


def test_a_first_page_reporting_more_pages_than_allowed_fails_before_any_other_request(con, monkeypatch):
    # 10**9 on page 1 once filled the plan with 10**9 page numbers (~300 MB a second); the
    # limit is lowered here so that, without the check, the test fetches pages, not memory
    import extract.fetch

    monkeypatch.setattr(extract.fetch, "MAX_PAGES", 50)
    with ScriptedAPI(paged(total_pages=lambda page, real: 1000)) as api:
        with pytest.raises(ApiError, match=r"^page 1 reports 1000 pages; more than the 50 allowed$"):
            extract_with(con, api.base_url)
        assert api.pages_requested() == [1]
    assert landed(con) == [(1, 5)]  # what arrived is kept


def test_a_page_naming_another_page_fails_at_once_and_one_without_a_page_number_is_fine(con):
    # an API that ignores ?page= answers every request with page 1: not retried, not landed
    with ScriptedAPI(lambda r: (200, {}, page_body(1, 5, RECORDS[:5], total_pages=2))) as api:
        with pytest.raises(ApiError) as raised:
            extract_with(con, api.base_url)
        assert sorted(api.pages_requested()) == [1, 2]
    assert str(raised.value) == ("page 2: the API answered with page 1 instead; it does not seem to read ?page= "
                                 "(check --base-url)")
    for run_id, served in enumerate(('"2"', "true", "2.0", "null", None), start=2):  # only an integer is checked
        def respond(request, served=served):
            body = page_body(request.page, 5, RECORDS[(request.page - 1) * 5: request.page * 5], total_pages=2)
            text = json.dumps(body)
            return 200, {}, text if request.page == 1 else text.replace('"page": 2', f'"page": {served}' if served
                                                                          else '"unpaged": 2')
        with ScriptedAPI(respond) as api:
            assert extract_with(con, api.base_url, run_id=run_id).records_landed == 10


def test_an_api_answering_past_its_end_with_its_last_page_ends_there(con):
    # no total_pages; pages past the last answer the last one, named as such: the end, not an error
    def respond(request):
        page = min(request.page, 2)
        return 200, {}, {"page": page, "data": RECORDS[(page - 1) * 5: page * 5]}

    with ScriptedAPI(respond) as api:
        result = extract_with(con, api.base_url)
        assert sorted(api.pages_requested()) == [1, 2, 3]
    assert result.records_landed == 10
    assert "page 3 repeats page 2; treating it as the end" in result.warnings


def test_empty_first_page_and_data_null_stop_at_once(con):
    with ScriptedAPI(lambda r: (200, {}, {"page": 1, "total_pages": 4, "data": None})) as api:
        result = extract_with(con, api.base_url)
        assert api.pages_requested() == [1]
    assert landed(con) == [(1, 0)]
    assert result.records_landed == 0
    assert any("page 1 is empty although the API reports 4 pages" in w for w in result.warnings)


# -- concurrency and the shared throttle -----------------------------------------------------------


def test_pages_after_the_first_are_fetched_concurrently_within_the_bound(con):
    with DemoAPI(dataset="scale", customers=400, duplicate_rate=0, faults="none", latency=0.05) as api:
        result = extract_with(con, api.base_url, per_page=10, concurrency=4)
        in_flight = max(r.in_flight for r in api.requests)
    assert result.pages_landed == 40 and result.records_landed == 400
    assert in_flight == 4  # four requests at the server at once: concurrent, and never more


def test_a_run_asks_for_each_page_once_page_1_while_the_warehouse_opens(tmp_path):
    with DemoAPI(dataset="scale", customers=60, duplicate_rate=0, faults="none") as api:
        summary = orchestrate.run(settings(tmp_path, api.base_url, per_page=10, concurrency=3))
        pages = sorted(r.page for r in api.requests)
    assert pages == [1, 2, 3, 4, 5, 6]
    assert summary.requests == 6 and summary.metadata["total_customers"] == 60


def test_a_server_that_429s_above_two_in_flight_costs_at_most_1_5_requests_per_page(tmp_path):
    with DemoAPI(dataset="scale", customers=1200, duplicate_rate=0, faults="none", latency=0.02,
                 max_in_flight=2, retry_after="1") as api:
        summary = orchestrate.run(settings(tmp_path, api.base_url, per_page=20, concurrency=8, retry=FAST_RETRY.__class__(
            attempts=8, backoff_initial=0.05, backoff_max=1.0, retry_after_max=2.0)))
        total_requests = len(api.requests)
        throttled = sum(1 for r in api.requests if r.status == 429)
    assert summary.pages == 60 and summary.metadata["total_customers"] == 1200
    assert total_requests / 60 <= 1.5, (total_requests, throttled)


def test_throttle_rate_limit_holds_every_window(tmp_path):
    # the same code path as --max-requests-per-minute, with the window shortened for the test
    with DemoAPI(dataset="scale", customers=300, duplicate_rate=0, faults="none") as api:
        orchestrate.run(settings(tmp_path, api.base_url, per_page=10, concurrency=4,
                                 max_requests_per_minute=10, rate_window=1.0))
        times = sorted(r.time for r in api.requests)
    assert len(times) == 30
    for i, start in enumerate(times):
        in_window = [t for t in times[i:] if t - start < 1.0 - 0.02]  # 20 ms slack for clock/transport
        assert len(in_window) <= 10, (i, len(in_window))
    assert times[-1] - times[0] >= 2.0  # 30 requests at 10 per second window need > 2 s


def test_a_failing_page_stops_the_other_workers_backoff_at_once(con):
    # page 3 is refused (401) while page 2 keeps answering 503 with Retry-After: 30: the run
    # fails with page 3's error as soon as it arrives, not after page 2's 30 s pause
    def respond(request):
        if request.page == 1:
            return 200, {}, page_body(1, 5, RECORDS[:5], total_pages=5)
        if request.page == 3:
            time.sleep(0.3)  # page 2 is in its pause by now
            return 401, {}, {"error": "missing api key"}
        if request.page == 2:
            return 503, {"Retry-After": "30"}, "busy"
        return 200, {}, page_body(request.page, 5, RECORDS[(request.page - 1) * 5: request.page * 5], total_pages=5)

    con.execute("insert into raw.runs (run_id, started_at, status) values (1, now(), 'running')")
    policy = RetryPolicy(attempts=5, backoff_initial=0.01, backoff_max=0.05, retry_after_max=60.0,
                         connect_timeout=2.0, read_timeout=2.0)
    with ScriptedAPI(respond) as api:
        client = ApiClient(api.base_url, 5, policy=policy, throttle=Throttle(3))
        started = time.monotonic()
        with pytest.raises(ApiError, match="page 3: the API answered HTTP 401"):
            extract_run(con, 1, client, 3)
        elapsed = time.monotonic() - started
        page_2_requests = sum(1 for r in api.requests if r.page == 2)
    client.close()
    assert elapsed < 5, elapsed
    assert page_2_requests == 1  # its retry was never sent
    assert client.stats.retries == 0  # ... nor counted
    assert [page for page, _ in landed(con)] == [1, 4, 5]  # what arrived is kept for --resume


def test_a_cancelled_client_sends_nothing_more_and_ends_its_sleeps():
    requests_seen = []
    answered = threading.Event()

    def respond(request):
        requests_seen.append(request.page)
        answered.set()
        return 503, {"Retry-After": "30"}, "busy"

    policy = RetryPolicy(attempts=5, backoff_initial=0.01, backoff_max=0.05, retry_after_max=60.0,
                         connect_timeout=2.0, read_timeout=2.0)
    with ScriptedAPI(respond) as api:
        client = ApiClient(api.base_url, 5, policy=policy, throttle=Throttle(2))
        outcome = {}

        def fetch():
            try:
                client.get_page(1)
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                outcome["error"] = exc

        worker = threading.Thread(target=fetch)
        worker.start()
        assert answered.wait(5)  # the first attempt is answered 503: the client sleeps for Retry-After
        time.sleep(0.1)
        cancelled_at = time.monotonic()
        client.cancel()
        worker.join(5)
        stopped_after = time.monotonic() - cancelled_at
        with pytest.raises(Cancelled):
            client.get_page(2)
        client.close()
    assert not worker.is_alive() and stopped_after < 1, stopped_after
    assert isinstance(outcome.get("error"), Cancelled)
    assert requests_seen == [1]


def test_a_cancelled_throttle_releases_waiting_workers():
    throttle = Throttle(1)
    throttle.acquire()  # the only slot is taken
    outcome = {}

    def wait_for_slot():
        try:
            throttle.acquire()
            outcome["got"] = True
        except Cancelled:
            outcome["cancelled"] = True

    waiter = threading.Thread(target=wait_for_slot)
    waiter.start()
    time.sleep(0.2)
    throttle.cancel()
    waiter.join(2)
    assert not waiter.is_alive() and outcome == {"cancelled": True}


def test_a_429_pauses_every_worker_until_retry_after_has_passed():
    # the throttle's clock is the test's: no worker may send before it reads 102.0, however long
    # they wait on the real one
    now = [100.0]
    throttle = Throttle(4, clock=lambda: now[0])
    throttle.on_throttled(2.0)  # the pool halves to 2 and pauses until 102.0
    sent = []

    def worker():
        throttle.acquire()
        sent.append(now[0])

    workers = [threading.Thread(target=worker) for _ in range(2)]
    for thread in workers:
        thread.start()

    def advance(to):
        now[0] = to
        with throttle._cond:
            throttle._cond.notify_all()
        for thread in workers:
            thread.join(0.3)

    advance(100.5)
    advance(101.9)
    assert sent == []
    advance(102.0)
    for thread in workers:
        thread.join(5)
    assert sent == [102.0, 102.0]


def test_throttle_aimd_halves_on_429_and_recovers():
    throttle = Throttle(8, recover_after=3)
    throttle.on_throttled(0.0)
    assert throttle.limit == 4
    throttle.on_throttled(None)  # within the pause: the same congestion event
    assert throttle.limit == 4 and throttle.pause_until > time.monotonic()
    for _ in range(3):
        throttle.acquire()
        throttle.release(True)
    assert throttle.limit == 5


def test_progress_line_in_logs_and_quiet():
    stream = io.StringIO()
    stats = ClientStats(requests=12, retries=2)
    progress = Progress(stream=stream, interval=0, stats=stats)

    class Result:
        pages_landed, records_landed = 3, 300

    progress.update(Result, 10)
    line = stream.getvalue()
    assert line.startswith("extract: 3/10 pages, 300 records landed,") and "2 retries" in line and "ETA" in line
    quiet = io.StringIO()
    Progress(stream=quiet, quiet=True, interval=0).update(Result, 10)
    assert quiet.getvalue() == ""


# -- resume -----------------------------------------------------------------------------------------


def test_resume_fetches_only_missing_pages(tmp_path):
    # a run that failed on page 4 (of 5), then --resume against the same API, now healthy
    healthy = {"now": False}

    def respond(request):
        if request.page == 4 and not healthy["now"]:
            return 500, {}, "down"
        return paged()(request)

    with ScriptedAPI(respond) as api:
        with pytest.raises(Exception, match="page 4"):
            orchestrate.run(settings(tmp_path, api.base_url, per_page=5))
        healthy["now"] = True
        api.requests.clear()
        summary = orchestrate.run(settings(tmp_path, api.base_url, per_page=5, resume=True))
        assert api.pages_requested() == [4]
    assert summary.run_id == 1 and summary.metadata["total_customers"] == 23
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    assert rows(con, "select status, resumes from raw.runs") == [("succeeded", 1)]
    assert rows(con, "select count(*), count(distinct page) from raw.api_pages") == [(5, 5)]
    con.close()


def test_resume_without_total_pages_fetches_only_missing_pages(tmp_path):
    # no total_pages: paging one by one; the run failed on page 4, the resume asks for 4 and 5
    # (the short page that ends it), not pages 2 and 3 again
    healthy = {"now": False}
    no_total = paged(total_pages=lambda page, real: None)

    def respond(request):
        if request.page == 4 and not healthy["now"]:
            return 500, {}, "down"
        return no_total(request)

    with ScriptedAPI(respond) as api:
        with pytest.raises(Exception, match="page 4"):
            orchestrate.run(settings(tmp_path, api.base_url, per_page=5))
        assert sorted(set(api.pages_requested())) == [1, 2, 3, 4]
        healthy["now"] = True
        api.requests.clear()
        summary = orchestrate.run(settings(tmp_path, api.base_url, per_page=5, resume=True))
        assert api.pages_requested() == [4, 5]
    assert summary.run_id == 1 and summary.metadata["total_customers"] == 23
    con = duckdb.connect(str(tmp_path / "warehouse" / "customers.duckdb"), read_only=True)
    assert rows(con, "select page, record_count from raw.api_pages order by page") == [
        (1, 5), (2, 5), (3, 5), (4, 5), (5, 3)]
    con.close()


def test_a_resumed_run_retries_a_refused_connection_in_full(tmp_path):
    # the API answered this run before it failed: when it refuses the resumed run, that is an
    # API restarting, not a wrong --base-url, so the run does not stop after a second try
    with ScriptedAPI(lambda r: (500, {}, "down") if r.page == 4 else paged()(r)) as api:
        with pytest.raises(Exception, match="page 4"):
            orchestrate.run(settings(tmp_path, api.base_url, per_page=5))
    with pytest.raises(ApiError) as raised:  # the server is gone now
        orchestrate.run(settings(tmp_path, api.base_url, per_page=5, resume=True))
    message = str(raised.value)
    assert re.match(rf"page [45]: connection refused by 127.0.0.1:\d+ \({FAST_RETRY.attempts} attempts", message), message
    assert message.endswith("the API stopped answering during the run")


def test_resume_after_sigkill_mid_extraction_matches_an_uninterrupted_run(tmp_path):
    with DemoAPI(dataset="scale", customers=3000, faults="none", latency=0.02) as api:
        reference = tmp_path / "ref"
        reference.mkdir()
        orchestrate.run(settings(reference, api.base_url, per_page=25, concurrency=2))
        api.requests.clear()
        warehouse = tmp_path / "w.duckdb"
        args = [sys.executable, str(ROOT / "pipeline.py"), "run", "--base-url", api.base_url, "--per-page", "25",
                "--concurrency", "2", "--warehouse", str(warehouse), "--output", str(tmp_path / "out.json"), "-q"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(api.requests) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        total_pages = -(-api.total_records // 25)
        con = duckdb.connect(str(warehouse), read_only=True)
        landed_pages = {p for (p,) in rows(con, "select page from raw.api_pages")}
        con.close()
        assert 0 < len(landed_pages) < total_pages
        time.sleep(0.5)  # requests the killed run left in flight finish (and are logged) first
        api.requests.clear()
        resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=120)
        fetched = sorted(r.page for r in api.requests)
    assert resumed.returncode == 0, resumed.stderr
    assert fetched == sorted(set(range(1, total_pages + 1)) - landed_pages)
    import json
    ours = json.loads((tmp_path / "out.json").read_text())
    theirs = json.loads((reference / "out.json").read_text())
    assert ours["customers"] == theirs["customers"]
    con = duckdb.connect(str(warehouse), read_only=True)
    assert rows(con, "select run_id, status, resumes from raw.runs") == [(1, "succeeded", 1)]
    con.close()


def test_resume_refuses_a_different_paging_and_a_new_run_hints_at_resume(tmp_path):
    from extract.errors import UsageError

    with ScriptedAPI(lambda r: (500, {}, "down") if r.page == 4 else paged()(r)) as api:
        with pytest.raises(Exception, match="page 4"):
            orchestrate.run(settings(tmp_path, api.base_url, per_page=5))
        with pytest.raises(UsageError, match="with --per-page 5; resume it with the same"):
            orchestrate.run(settings(tmp_path, api.base_url, per_page=10, resume=True))
    with ScriptedAPI(paged()) as api:
        with pytest.raises(UsageError, match="from http://127.0.0.1:[0-9]+/api with --per-page 5"):
            orchestrate.run(settings(tmp_path, api.base_url, per_page=10, resume=True))
        assert api.requests == []  # refused before fetching anything
        lines = io.StringIO()
        summary = orchestrate.run(settings(tmp_path, api.base_url, per_page=10, quiet=False),
                                  progress=Progress(stream=lines))
    assert re.search(r"run 1 failed during extraction after landing \d pages; `--resume` would fetch only",
                     lines.getvalue())
    assert summary.run_id == 2 and summary.metadata["total_customers"] == 23


def test_a_log_gets_the_extractions_final_count(tmp_path):
    # in a log (not a terminal) the line comes every few seconds; the last one is the final count
    lines = io.StringIO()
    with DemoAPI(dataset="demo", faults="none") as api:
        summary = orchestrate.run(settings(tmp_path, api.base_url, quiet=False), progress=Progress(stream=lines))
    extract_lines = [line for line in lines.getvalue().splitlines() if line.startswith("extract:")]
    assert extract_lines[-1].startswith(f"extract: {summary.pages}/{summary.pages} pages, {summary.records:,} records landed")
