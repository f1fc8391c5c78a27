"""The HTTP client: one call, one tenacity policy; against real servers on 127.0.0.1."""

from __future__ import annotations

import email.utils
import time

import pytest

from conftest import FAST_RETRY, free_port
from extract.client import ApiClient, RetryPolicy, backoff_seconds, parse_retry_after
from extract.demo_api import DemoAPI, Fault
from extract.errors import ApiError
from scripted_api import ScriptedAPI, Trickle, page_body


def test_parse_retry_after_seconds_and_http_dates():
    now = time.time()
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-4") == 0.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31
    past = email.utils.formatdate(now - 300, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


def test_backoff_is_exponential_with_jitter_and_capped():
    policy = RetryPolicy(backoff_initial=1.0, backoff_max=8.0)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        waits = [backoff_seconds(attempt, policy) for _ in range(50)]
        assert all(base * 0.5 <= w <= base for w in waits)
        assert len(set(waits)) > 1  # jittered


def _client(base_url, sleeps=None, **kwargs):
    recorded = sleeps if sleeps is not None else []
    return ApiClient(base_url, per_page=6, policy=kwargs.pop("policy", FAST_RETRY), sleep=recorded.append, **kwargs)


@pytest.mark.parametrize("kind, status", [("429", 429), ("500", 500), ("503", 503), ("truncated", 200), ("html", 200)])
def test_transient_failures_are_retried_then_the_page_lands_unchanged(kind, status):
    with DemoAPI(dataset="reqres", faults=[Fault(page=2, attempt=1, kind=kind, retry_after="0")]) as api:
        client = _client(api.base_url)
        page = client.get_page(2)
        served = api.page_requests(2)
    assert [r.status for r in served] == [status, 200]
    assert page.attempts == 2 and client.stats.retries == 1
    assert [r["id"] for r in page.records] == [7, 8, 9, 10, 11, 12]
    assert page.body.startswith("{") and '"page":2' in page.body.replace(" ", "")


def test_connection_reset_and_read_timeout_are_retried():
    faults = [Fault(page=1, attempt=1, kind="reset"), Fault(page=1, attempt=2, kind="timeout", delay=1.5)]
    policy = RetryPolicy(attempts=4, backoff_initial=0.01, backoff_max=0.02, read_timeout=0.5)
    with DemoAPI(dataset="reqres", faults=faults) as api:
        page = _client(api.base_url, policy=policy).get_page(1)
    assert page.attempts == 3 and len(page.records) == 6


TRICKLING = RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.02, connect_timeout=2.0, read_timeout=2.0,
                       total_timeout=1.0)


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers and body"])
def test_an_answer_trickled_past_the_total_timeout_is_cut_there_and_retried(headers):
    # a byte every 50 ms never trips the 2 s read timeout; the page's ~150 bytes take ~8 s
    def respond(request):
        body = page_body(1, 6, [{"id": 1, "first_name": "Slow"}], total_pages=1, total=1)
        return 200, {}, Trickle(body, every=0.05, headers=headers) if request.attempt == 1 else body

    with ScriptedAPI(respond) as api:
        client = _client(api.base_url, policy=TRICKLING)
        started = time.monotonic()
        page = client.get_page(1)
        elapsed = time.monotonic() - started
        again = client.get_page(1)  # the cut connection is not reused
    assert page.attempts == 2 and page.records == [{"id": 1, "first_name": "Slow"}]
    assert 1.0 <= elapsed < 3.0, elapsed
    assert again.attempts == 1 and again.body == page.body


def test_a_page_always_trickled_fails_naming_the_total_timeout():
    trickled = Trickle(page_body(1, 6, [{"id": 1}], total_pages=1), every=0.05)
    with ScriptedAPI(lambda r: (200, {}, trickled)) as api:
        started = time.monotonic()
        with pytest.raises(ApiError) as raised:
            _client(api.base_url, policy=TRICKLING).get_page(1)
        elapsed = time.monotonic() - started
    assert str(raised.value) == (f"page 1: gave up after 3 attempts, last: timed out: no complete answer within "
                                 f"1 s ({api.base_url}/users?page=1&per_page=6)")
    assert 3.0 <= elapsed < 6.0, elapsed


def test_retry_after_is_honoured_as_a_lower_bound_and_clamped():
    sleeps: list[float] = []
    faults = [Fault(page=1, attempt=1, kind="429", retry_after="0.15"),
              Fault(page=1, attempt=2, kind="429", retry_after="3600"),
              Fault(page=1, attempt=3, kind="429", retry_after="0")]
    with DemoAPI(dataset="reqres", faults=faults) as api:
        _client(api.base_url, sleeps).get_page(1)
    assert sleeps[0] >= 0.15                       # the server's wait, at least
    assert sleeps[1] == pytest.approx(FAST_RETRY.retry_after_max)  # clamped, not an hour
    assert sleeps[2] > 0                           # Retry-After: 0 still backs off: no hot loop


@pytest.mark.parametrize("kind, status, hint", [("401", 401, "API key"), ("404", 404, "base-url")])
def test_auth_and_not_found_fail_at_once_with_the_status(kind, status, hint):
    with DemoAPI(dataset="reqres", faults=[Fault(page=1, attempt=0, kind=kind)]) as api:
        with pytest.raises(ApiError) as raised:
            _client(api.base_url).get_page(1)
        assert len(api.requests) == 1  # no retries
    assert f"HTTP {status}" in str(raised.value) and hint in str(raised.value) and "page 1" in str(raised.value)


def test_403_fails_at_once():
    with ScriptedAPI(lambda r: (403, {}, {"error": "forbidden"})) as api:
        with pytest.raises(ApiError, match="HTTP 403"):
            _client(api.base_url).get_page(3)
        assert len(api.requests) == 1


def test_a_page_that_keeps_failing_names_the_page_and_the_last_error():
    with DemoAPI(dataset="reqres", faults=[Fault(page=2, attempt=0, kind="503", retry_after="0")]) as api:
        with pytest.raises(ApiError) as raised:
            _client(api.base_url).get_page(2)
        assert len(api.page_requests(2)) == FAST_RETRY.attempts
    assert str(raised.value).startswith(f"page 2: gave up after {FAST_RETRY.attempts} attempts, last: HTTP 503")


def test_a_host_that_does_not_resolve_stops_after_two_tries_with_its_name():
    # .invalid never resolves (RFC 2606): a typo in --base-url, or a machine without network
    client = ApiClient("http://api.invalid/api", 6, policy=FAST_RETRY, sleep=lambda s: None)
    with pytest.raises(ApiError) as raised:
        client.get_page(1)
    assert client.stats.requests == 2
    assert str(raised.value).startswith("page 1: cannot resolve host api.invalid (2 attempts, http://api.invalid/")
    assert "Error(" not in str(raised.value) and "--demo" in str(raised.value)


def test_a_tls_failure_is_retried_and_reported_in_one_line():
    # https to a plain-HTTP server: the handshake fails (ssl.SSLError, whose reason is a string)
    with ScriptedAPI(lambda r: (200, {}, page_body(1, 6, [{"id": 1}], total_pages=1))) as api:
        client = ApiClient(api.base_url.replace("http://", "https://"), 6, policy=FAST_RETRY, sleep=lambda s: None)
        with pytest.raises(ApiError) as raised:
            client.get_page(1)
    assert client.stats.requests == FAST_RETRY.attempts
    assert str(raised.value).startswith(f"page 1: gave up after {FAST_RETRY.attempts} attempts, last: could not connect (")
    assert "SSL" in str(raised.value)


def test_a_refused_connection_stops_early_only_until_the_api_has_answered():
    with ScriptedAPI(lambda r: (200, {}, page_body(r.page, 6, [{"id": r.page}], total_pages=9))) as api:
        port = api.base_url.split(":")[2].split("/")[0]
        client = ApiClient(api.base_url, 6, policy=FAST_RETRY, sleep=lambda s: None)
        client.get_page(1)
    client.close()  # its kept-alive connection too: the server is gone now
    # a restart, say, not a wrong address, since it answered this run: retried in full
    with pytest.raises(ApiError) as raised:
        client.get_page(2)
    assert client.stats.requests == 1 + FAST_RETRY.attempts
    assert str(raised.value).startswith(f"page 2: connection refused by 127.0.0.1:{port} ({FAST_RETRY.attempts} attempts")
    never = ApiClient(api.base_url, 6, policy=FAST_RETRY, sleep=lambda s: None)
    with pytest.raises(ApiError, match=f"connection refused by 127.0.0.1:{port} .2 attempts.*API is running"):
        never.get_page(1)
    assert never.stats.requests == 2


@pytest.mark.parametrize("body", ["[1, 2]", '{"page": 1}', '{"data": {"id": 1}}', "", "null"])
def test_a_200_that_is_not_a_page_is_retried(body):
    with ScriptedAPI(lambda r: (200, {}, body)) as api:
        with pytest.raises(ApiError, match="page 1: gave up"):
            _client(api.base_url).get_page(1)
        assert len(api.requests) == FAST_RETRY.attempts


def test_the_key_is_sent_as_x_api_key_and_never_appears_in_errors():
    key = "k-0123456789abcdef"
    with ScriptedAPI(lambda r: (500, {}, "oops")) as api:
        with pytest.raises(ApiError) as raised:
            ApiClient(api.base_url + f"?token={key}", 6, api_key=key, policy=FAST_RETRY,
                      sleep=lambda s: None).get_page(1)
        assert all(r.headers.get("x-api-key") == key for r in api.requests)
    assert key not in str(raised.value) and "***" in str(raised.value)


def test_the_credentials_a_base_url_carries_are_found_by_name():
    from extract.redact import url_secrets

    url = "https://user:pa55word@api.example/v1?page_size=5&api_key=k1&Access-Token=t2&region=eu&sig="
    assert url_secrets(url) == ("pa55word", "k1", "t2")
    assert url_secrets("https://api.example/v1?keyword=shoes&tokens=3") == ()
    assert url_secrets(None) == () and url_secrets("http://[::1") == ()
    assert url_secrets("http://u:pw12@[::1/x?token=t0k3n") == ("pw12", "t0k3n")  # not a usable URL: by hand
    assert url_secrets("https://h/api?token=ab+cd/ef%2012") == ("ab+cd/ef%2012", "ab cd/ef 12")


def _redirecting(target_base):
    def respond(request):
        if "/hop" in request.path:
            return 200, {}, page_body(1, 6, [{"id": 1}], total_pages=1)
        return 302, {"Location": f"{target_base}/hop"}, ""
    return respond


def test_the_key_is_not_forwarded_on_a_redirect_to_another_host():
    key = "k-secret-redirect-1"
    with ScriptedAPI(lambda r: (200, {}, page_body(1, 6, [{"id": 1}], total_pages=1)), host="localhost") as other:
        with ScriptedAPI(_redirecting(other.base_url.replace("/api", ""))) as origin:
            page = ApiClient(origin.base_url, 6, api_key=key, policy=FAST_RETRY).get_page(1)
            assert origin.requests[0].headers.get("x-api-key") == key
        assert len(other.requests) == 1
        assert "x-api-key" not in other.requests[0].headers
    assert page.records == [{"id": 1}]


def test_a_redirect_to_another_host_takes_that_host_s_proxy_from_the_environment(monkeypatch):
    # the base host is in NO_PROXY, the redirect's host is not: requests' rule is that the
    # redirect goes through the proxy (here a closed port, so it cannot connect), even though
    # the session read the environment once, for the base URL
    closed = free_port()
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with ScriptedAPI(lambda r: (200, {}, page_body(1, 6, [{"id": 1}], total_pages=1)), host="localhost") as other:
        with ScriptedAPI(_redirecting(other.base_url.replace("/api", ""))) as origin:
            with pytest.raises(ApiError, match=f"connection refused by proxy 127.0.0.1:{closed} .*proxy settings"):
                ApiClient(origin.base_url, 6, policy=FAST_RETRY, sleep=lambda s: None).get_page(1)
            assert origin.requests  # the base URL itself was reached directly
        assert other.requests == []  # the redirect was not sent around the proxy


def test_the_key_is_kept_on_a_same_host_redirect():
    key = "k-secret-redirect-2"
    holder = {}

    def respond(request):
        if "/hop" in request.path:
            return 200, {}, page_body(1, 6, [{"id": 1}], total_pages=1)
        return 302, {"Location": f"{holder['base']}/hop"}, ""

    with ScriptedAPI(respond) as api:
        holder["base"] = api.base_url.replace("/api", "")
        ApiClient(api.base_url, 6, api_key=key, policy=FAST_RETRY).get_page(1)
        assert [r.headers.get("x-api-key") for r in api.requests] == [key, key]


def test_a_redirect_loop_fails_at_once_with_one_clear_message():
    key = "k-secret-redirect-3"
    with ScriptedAPI(lambda r: (302, {"Location": r.path}, "")) as api:
        with pytest.raises(ApiError) as raised:
            ApiClient(api.base_url, 6, api_key=key, policy=FAST_RETRY, sleep=lambda s: None).get_page(1)
        assert len(api.requests) == 31  # the first request and requests' 30 redirects, not retried
    assert str(raised.value) == (f"page 1: the API redirected more than 30 times from {api.base_url}/users?page=1"
                                 "&per_page=6 (a redirect loop?): check --base-url")


def test_a_redirect_to_a_url_requests_cannot_follow_fails_with_one_line():
    with ScriptedAPI(lambda r: (302, {"Location": "ftp://files.example/users"}, "")) as api:
        with pytest.raises(ApiError, match=r"^page 1: the request to http://127\.0\.0\.1:\d+/api/users\?page=1"
                                           r"&per_page=6 failed: No connection adapters"):
            ApiClient(api.base_url, 6, policy=FAST_RETRY, sleep=lambda s: None).get_page(1)
        assert len(api.requests) == 1


def test_every_page_is_sent_as_session_get_would_send_it():
    # the client sends a copy of one prepared request per page (the session's settings merged
    # once); what reaches the server must be what plain requests sends: path, query, headers
    import requests

    key = "k-0123456789abcdef"
    respond = lambda r: (200, {}, page_body(r.page or 1, 6, [{"id": 1}], total_pages=3))  # noqa: E731
    with ScriptedAPI(respond) as api:
        client = ApiClient(api.base_url + "?tenant=a%20b&x=1", 6, api_key=key, policy=FAST_RETRY)
        for page in (1, 2, 3):
            client.get_page(page)
        client.close()
        ours = list(api.requests)
        api.requests.clear()
        with requests.Session() as session:
            session.headers.update({"Accept": "application/json", "User-Agent": "customer-pipeline/0.1",
                                    "x-api-key": key})
            for page in (1, 2, 3):
                session.get(client.page_url(page), timeout=5)
        plain = list(api.requests)
    assert [r.path for r in ours] == [r.path for r in plain]
    assert [r.path for r in ours][1] == "/api/users?tenant=a+b&x=1&page=2&per_page=6"
    assert [r.headers for r in ours] == [r.headers for r in plain]


def test_a_cookie_the_api_sets_is_sent_back_on_the_next_pages():
    def respond(request):
        if request.page == 1:
            return 200, {"Set-Cookie": "lb=node-7; Path=/"}, page_body(1, 6, [{"id": 1}], total_pages=3)
        return 200, {}, page_body(request.page, 6, [{"id": request.page}], total_pages=3)

    with ScriptedAPI(respond) as api:
        client = ApiClient(api.base_url, 6, policy=FAST_RETRY)
        for page in (1, 2, 3):
            client.get_page(page)
        client.close()
    assert "cookie" not in api.requests[0].headers
    assert [r.headers.get("cookie") for r in api.requests[1:]] == ["lb=node-7", "lb=node-7"]
