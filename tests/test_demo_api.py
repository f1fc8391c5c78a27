"""The bundled demo API: reqres compatibility, datasets, faults, limits, auth, CLI.

Every test talks to a real server on 127.0.0.1 with ``requests`` (or inspects the
dataset generator directly)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere without installing the project
    sys.path.insert(0, str(ROOT))

from extract.demo_api import (  # noqa: E402
    DEMO_FAULTS,
    PROCESS_START_DATE,
    DemoAPI,
    Fault,
    generate_records,
    main,
)

FIXTURES = [json.loads((ROOT / "extract" / "data" / f"reqres_users_page{n}.json").read_text()) for n in (1, 2)]
FIXTURE_USERS = FIXTURES[0]["data"] + FIXTURES[1]["data"]
NAME_FIELDS = ("first_name", "last_name")
FIELDS = ("first_name", "last_name", "email", "avatar")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TIMEOUT = 5


# ---- helpers ----------------------------------------------------------------------------


def get(api: DemoAPI, query: str = "", session: requests.Session | None = None, **kw) -> requests.Response:
    kw.setdefault("timeout", TIMEOUT)
    return (session or requests).get(f"{api.base_url}/users{query}", **kw)


def blank(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def parses_as_time(value) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True
    except (AttributeError, TypeError, ValueError):
        return False


def quality(rec: dict) -> int:
    """DESIGN.md's data_quality_score, re-implemented to check the demo's intent."""
    score = 100 - 10 * sum(blank(rec.get(f)) for f in FIELDS)
    email = rec.get("email")
    if not blank(email) and not EMAIL_RE.match(email.strip().lower()):
        score -= 10
    if "engagement_score" in rec:
        v = rec["engagement_score"]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            score -= 10
    if "last_activity_at" in rec and not parses_as_time(rec["last_activity_at"]):
        score -= 10
    return max(score, 0)


def normalized(rec: dict) -> tuple:
    """What the pipeline's output shows of a record: full name and e-mail domain."""
    names = [" ".join(rec[f].split()) for f in NAME_FIELDS if not blank(rec.get(f))]
    email = rec.get("email")
    email = email.strip().lower() if not blank(email) else None
    domain = email.split("@", 1)[1] if email and EMAIL_RE.match(email) else "unknown"
    return (" ".join(names) or None, domain)


@pytest.fixture(scope="module")
def demo() -> list[dict]:
    return generate_records("demo")


@pytest.fixture
def reqres_api():
    with DemoAPI(dataset="reqres", faults="none") as api:
        yield api


# ---- reqres compatibility ----------------------------------------------------------------


def test_reqres_pages_equal_the_fixtures(reqres_api):
    for n, fixture in enumerate(FIXTURES, start=1):
        resp = get(reqres_api, f"?page={n}")
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        body = resp.json()
        assert body["data"] == fixture["data"]
        for key in ("page", "per_page", "total", "total_pages"):
            assert body[key] == fixture[key]
        assert set(body["support"]) == {"url", "text"}


def test_reqres_defaults_per_page_100_and_past_the_end(reqres_api):
    assert get(reqres_api).json()["data"] == FIXTURES[0]["data"]  # page 1, per_page 6
    body = get(reqres_api, "?per_page=100").json()
    assert (body["page"], body["per_page"], body["total"], body["total_pages"]) == (1, 100, 12, 1)
    assert body["data"] == FIXTURE_USERS
    past = get(reqres_api, "?page=3").json()
    assert past["data"] == [] and past["total_pages"] == 2 and past["page"] == 3
    odd = get(reqres_api, "?page=3&per_page=5").json()
    assert [u["id"] for u in odd["data"]] == [11, 12] and odd["total_pages"] == 3
    assert get(reqres_api, "/?page=2").json()["data"] == FIXTURES[1]["data"]  # trailing slash


@pytest.mark.parametrize("query", ["?page=0", "?page=-1", "?page=abc", "?page=1.5", "?page=",
                                   "?per_page=0", "?per_page=x", "?page=2&per_page=-3"])
def test_invalid_paging_is_a_400_json_error(reqres_api, query):
    resp = get(reqres_api, query)
    assert resp.status_code == 400
    assert "error" in resp.json()


@pytest.mark.parametrize("path", ["/api/user", "/api/users/2", "/", "/api/unknown"])
def test_other_paths_are_404_json(reqres_api, path):
    resp = requests.get(reqres_api.base_url.removesuffix("/api") + path, timeout=TIMEOUT)
    assert resp.status_code == 404
    assert resp.json() == {"error": "Not found"}


def test_request_log_and_keep_alive(reqres_api):
    with requests.Session() as s:
        for n in (1, 2, 3):
            get(reqres_api, f"?page={n}&per_page=5", session=s)
    log = reqres_api.requests
    assert [(r.page, r.per_page, r.status) for r in log] == [(1, 5, 200), (2, 5, 200), (3, 5, 200)]
    assert all(r.in_flight == 1 and not r.headers_had_api_key for r in log)
    assert log[0].path == "/api/users?page=1&per_page=5"
    assert log[0].time <= log[1].time <= log[2].time


def test_max_per_page_and_total_pages_override():
    with DemoAPI(dataset="reqres", faults="none", max_per_page=5) as api:
        body = get(api, "?per_page=100").json()
        assert body["per_page"] == 5 and len(body["data"]) == 5 and body["total_pages"] == 3
    with DemoAPI(dataset="reqres", faults="none",
                 total_pages_override=lambda page, real: DemoAPI.OMIT if page == 2 else f"{real + page}") as api:
        assert get(api, "?page=1").json()["total_pages"] == "3"
        assert "total_pages" not in get(api, "?page=2").json()


def test_records_are_served_exactly():
    hostile = [{"id": "7", "email": None}, {"id": 7, "first_name": "  Zoë  ", "extra": [1, {"a": None}]},
               {"no_id": True}]
    with DemoAPI(records=hostile, faults="none", default_per_page=2) as api:
        assert api.total_records == 3 and api.records() == hostile
        assert get(api).json()["data"] == hostile[:2]
        assert get(api, "?page=2").json()["data"] == hostile[2:]


# ---- the demo dataset --------------------------------------------------------------------


def test_demo_dataset_shape(demo):
    ids = [r["id"] for r in demo]
    assert len(demo) == 300
    assert demo[:12] == FIXTURE_USERS
    assert set(ids) == set(range(1, 271))
    assert len(ids) - len(set(ids)) == 30
    dup_ids = {i for i, c in Counter(ids).items() if c > 1}
    assert len(dup_ids & set(range(1, 13))) >= 3  # some reqres users are repeated too
    # the 12 reqres users (and their duplicates) never carry the optional keys
    assert not any(k in r for r in demo if r["id"] <= 12 for k in ("engagement_score", "last_activity_at"))
    # every record is JSON-plain
    assert json.loads(json.dumps(demo)) == demo


def test_demo_duplicates_exercise_dedup(demo):
    groups: dict[int, list[dict]] = defaultdict(list)
    for rec in demo:
        groups[rec["id"]].append(rec)
    first_wins = later_wins = observable_ties = 0
    for recs in (g for g in groups.values() if len(g) > 1):
        scores = [quality(r) for r in recs]
        best = max(scores)
        winners = [i for i, s in enumerate(scores) if s == best]
        if len(winners) == 1:
            first_wins += winners[0] == 0
            later_wins += winners[0] > 0
        elif len({normalized(recs[i]) for i in winners}) > 1:
            observable_ties += 1  # the first-seen tie-break decides what the export shows
    best = Counter()
    for recs in groups.values():
        score = max(quality(r) for r in recs)
        best["high" if score >= 90 else "medium" if score >= 70 else "low"] += 1
    assert best["high"] > 200 and best["medium"] >= 3 and best["low"] >= 3  # every bucket shows up
    assert first_wins >= 10  # messier copies that dedup must drop
    assert later_wins >= 3  # the clean copy comes second: highest score must beat first-seen
    assert observable_ties >= 3
    # messier variants of the duplicates
    dups = [r for recs in groups.values() for r in recs[1:]]
    assert sum(isinstance(r.get("email"), str) and r["email"] != r["email"].strip()
               and r["email"].strip().isupper() for r in dups) >= 3
    assert sum("avatar" not in r for r in dups) >= 3
    assert sum(r.get("last_name") == "" for r in dups) >= 2


def test_demo_blanks_and_missing_fields(demo):
    for field in FIELDS:
        values = [r[field] if field in r else "<absent>" for r in demo]
        assert "" in values, field
        assert any(isinstance(v, str) and v and not v.strip() for v in values), field
        assert None in values, field
        assert "<absent>" in values, field
    assert any("first_name" not in r and "last_name" not in r for r in demo)


def test_demo_names_and_emails(demo):
    names = [r[f] for r in demo for f in NAME_FIELDS if isinstance(r.get(f), str)]
    for accented in ("Élodie", "Zoë", "Ågot"):
        assert accented in names
    assert "  Mary   Ann " in names
    assert sum(bool(n.strip()) and n != " ".join(n.split()) for n in names) >= 4  # extra inner/outer spaces
    assert sum(bool(n.strip()) and n == n.lower() for n in names) >= 3  # lower-case names
    emails = [r["email"] for r in demo if isinstance(r.get("email"), str)]
    for invalid in ("no-at-sign.example.com", "two@@example.com", "spaces in@example.com", "user@nodot"):
        assert invalid in emails
    domains = Counter(e.split("@")[1] for e in emails if EMAIL_RE.match(e) and e.islower())
    assert {"example.com", "mail.test", "shop.example.org"} <= set(domains)
    assert all(isinstance(r.get("avatar"), str) and r["avatar"].startswith("https://")
               for r in demo if not blank(r.get("avatar")))


def test_demo_engagement_and_activity(demo):
    generated = [r for r in demo if r["id"] >= 13]
    carrying = [r for r in generated if "engagement_score" in r or "last_activity_at" in r]
    assert 0.25 <= len(carrying) / len(generated) <= 0.45
    scores = [r["engagement_score"] for r in generated if "engagement_score" in r]
    numbers = [s for s in scores if isinstance(s, (int, float))]
    assert sum(s >= 70 for s in numbers) >= 5 and sum(40 <= s < 70 for s in numbers) >= 5
    assert sum(s < 40 for s in numbers) >= 5
    assert all(0 <= s <= 100 for s in numbers)
    assert 72.5 in scores and any(isinstance(s, float) for s in scores)
    assert scores.count(None) >= 2 and scores.count("n/a") >= 2
    activity = [r["last_activity_at"] for r in generated if "last_activity_at" in r]
    assert activity.count(None) >= 2 and activity.count("not a date") >= 2
    days_ago = [(PROCESS_START_DATE - datetime.fromisoformat(a.replace("Z", "+00:00")).date()).days
                for a in activity if parses_as_time(a)]
    assert all(1 <= d <= 80 or 100 <= d <= 400 for d in days_ago)
    assert sum(d <= 80 for d in days_ago) >= 10 and sum(d >= 100 for d in days_ago) >= 10
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", a)
               for a in activity if parses_as_time(a))


def test_demo_dates_follow_the_anchor_date(demo):
    anchor = PROCESS_START_DATE - timedelta(days=10)
    shifted = generate_records("demo", anchor_date=anchor)
    assert len(shifted) == len(demo)
    for a, b in zip(demo, shifted):
        if parses_as_time(a.get("last_activity_at")):
            da = datetime.fromisoformat(a["last_activity_at"].replace("Z", "+00:00"))
            db = datetime.fromisoformat(b["last_activity_at"].replace("Z", "+00:00"))
            assert da - db == timedelta(days=10)
        else:
            assert a == b


def test_demo_served_deterministically(demo):
    bodies = []
    for _ in range(2):
        with DemoAPI(faults="none") as api, requests.Session() as s:
            pages = [get(api, f"?page={n}&per_page=100", session=s) for n in (1, 2, 3, 4)]
            bodies.append([p.content for p in pages])
            parsed = [p.json() for p in pages]
    assert bodies[0] == bodies[1]
    assert [p["total_pages"] for p in parsed] == [3] * 4 and parsed[0]["total"] == 300
    assert [r for p in parsed[:3] for r in p["data"]] == demo and parsed[3]["data"] == []


def test_default_demo_faults_are_transient():
    with DemoAPI() as api, requests.Session() as s:
        first = get(api, "?page=1&per_page=100", session=s)
        assert first.status_code == 503 and first.headers["Retry-After"] == "0"
        assert get(api, "?page=1&per_page=100", session=s).status_code == 200
        second = get(api, "?page=2&per_page=100", session=s)
        assert second.status_code == 429 and second.headers["Retry-After"] == "1"
        assert get(api, "?page=2&per_page=100", session=s).status_code == 200
        third = get(api, "?page=3&per_page=100", session=s)
        assert third.status_code == 200
        with pytest.raises(ValueError):
            third.json()
        assert len(get(api, "?page=3&per_page=100", session=s).json()["data"]) == 100
    assert api.faults == DEMO_FAULTS


# ---- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,status", [("429", 429), ("500", 500), ("503", 503), ("401", 401), ("404", 404)])
def test_error_faults(kind, status):
    with DemoAPI(dataset="reqres", faults=[Fault(page=2, attempt=1, kind=kind)]) as api:
        assert get(api, "?page=1").status_code == 200  # other pages unaffected
        resp = get(api, "?page=2")
        assert resp.status_code == status
        assert resp.headers["Content-Type"].startswith("application/json") and "error" in resp.json()
        assert resp.headers.get("Retry-After") == ("1" if kind in ("429", "503") else None)
        assert get(api, "?page=2").json()["data"] == FIXTURES[1]["data"]  # attempt 2 is clean
        assert [r.status for r in api.requests] == [200, status, 200]


def test_truncated_and_html_faults():
    faults = [Fault(page=1, attempt=1, kind="truncated"), Fault(page=1, attempt=2, kind="html")]
    with DemoAPI(dataset="reqres", faults=faults) as api, requests.Session() as s:
        full = get(api, "?page=2", session=s).content
        cut = get(api, "?page=1", session=s)
        assert cut.status_code == 200 and cut.headers["Content-Type"].startswith("application/json")
        with pytest.raises(ValueError):
            cut.json()
        assert 0 < len(cut.content) < len(full) and cut.text.startswith('{"page":1')
        html = get(api, "?page=1", session=s)
        assert html.status_code == 200 and html.headers["Content-Type"].startswith("text/html")
        assert html.text.lstrip().lower().startswith("<!doctype html")
        assert get(api, "?page=1", session=s).json()["data"] == FIXTURES[0]["data"]


def test_fault_matching_rules():
    faults = [Fault(page=0, attempt=2, kind="500"),  # every page's second request
              Fault(page=3, attempt=0, kind="429", retry_after=None)]  # every request for page 3
    with DemoAPI(dataset="reqres", faults=faults) as api:
        assert [get(api, "?page=1").status_code for _ in range(3)] == [200, 500, 200]
        assert [get(api, "?page=2").status_code for _ in range(2)] == [200, 500]
        page3 = [get(api, "?page=3") for _ in range(3)]
        assert [r.status_code for r in page3] == [429, 500, 429]  # first match wins
        assert all("Retry-After" not in r.headers for r in page3)


def test_timeout_fault_then_answers_normally():
    with DemoAPI(dataset="reqres", faults=[Fault(page=1, attempt=1, kind="timeout", delay=0.5)]) as api:
        with pytest.raises(requests.Timeout):
            get(api, timeout=0.1)
        assert get(api).json()["data"] == FIXTURES[0]["data"]
        slow = get(api, "?page=1", timeout=2)  # attempt 3, no fault
        assert slow.status_code == 200


def test_reset_fault_drops_the_connection():
    with DemoAPI(dataset="reqres", faults=[Fault(page=1, attempt=1, kind="reset")]) as api:
        with requests.Session() as s:
            assert get(api, "?page=2", session=s).status_code == 200  # keep-alive connection open
            with pytest.raises(requests.ConnectionError):
                get(api, "?page=1", session=s)
            assert get(api, "?page=1", session=s).status_code == 200
        assert [r.status for r in api.requests] == [200, 0, 200]


def test_bad_fault_kind_is_rejected():
    with pytest.raises(ValueError):
        Fault(page=1, attempt=1, kind="418")
    with pytest.raises(ValueError):
        DemoAPI(faults="sometimes")


# ---- limits and auth ---------------------------------------------------------------------


def test_max_in_flight_answers_429_under_concurrency():
    with DemoAPI(dataset="reqres", faults="none", latency=0.3, max_in_flight=2, retry_after="2") as api:
        results: list[requests.Response] = []
        lock = threading.Lock()
        barrier = threading.Barrier(6)

        def worker(page: int) -> None:
            barrier.wait()
            resp = get(api, f"?page={page}&per_page=2")
            with lock:
                results.append(resp)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = Counter(r.status_code for r in results)
        assert statuses[200] >= 1 and statuses[429] >= 1 and sum(statuses.values()) == 6
        assert all(r.headers["Retry-After"] == "2" for r in results if r.status_code == 429)
        log = api.requests
        assert max(r.in_flight for r in log) > 2
        assert all((r.status == 429) == (r.in_flight > 2) for r in log)
        # sequential requests are fine again
        assert get(api, "?page=1").status_code == 200


def test_api_key_is_required_and_never_logged():
    key = "s3cret-Key-value-123"
    with DemoAPI(dataset="reqres", faults="none", api_key=key) as api:
        missing = get(api)
        assert missing.status_code == 401 and missing.json() == {"error": "Missing API key"}
        assert get(api, headers={"x-api-key": "wrong"}).status_code == 401
        ok = get(api, headers={"x-api-key": key})
        assert ok.status_code == 200 and ok.json()["data"] == FIXTURES[0]["data"]
        assert get(api, headers={"X-API-KEY": key}).status_code == 200  # header names are case-insensitive
        log = api.requests
        assert [(r.status, r.headers_had_api_key) for r in log] == [(401, False), (401, True), (200, True), (200, True)]
        assert key not in repr(log) and key not in repr(api) and key not in str(vars(api).get("requests"))


# ---- the scale dataset -------------------------------------------------------------------


def test_scale_dataset_composition_and_paging():
    records = generate_records("scale", customers=1000)
    assert generate_records("scale", customers=1000) == records  # deterministic
    ids = [r["id"] for r in records]
    assert len(records) == 1200 and set(ids) == set(range(1, 1001))
    assert len(ids) - len(set(ids)) == 200
    seen: set[int] = set()
    for i in ids:  # originals come first, each id's duplicates right after it
        assert i in seen or i == len(seen) + 1
        seen.add(i)
    damaged = sum(any(blank(r.get(f)) for f in FIELDS)
                  or (not blank(r.get("email")) and not EMAIL_RE.match(r["email"].strip().lower()))
                  or r.get("engagement_score") == "n/a" for r in records)
    assert 0.02 * 1200 <= damaged <= 0.25 * 1200  # 5% damaged + the blank-last-name duplicates
    assert 0.25 <= sum("engagement_score" in r for r in records) / 1200 <= 0.4
    assert 0.18 <= sum("last_activity_at" in r for r in records) / 1200 <= 0.32
    with DemoAPI(dataset="scale", customers=1000, faults="none") as api, requests.Session() as s:
        assert api.total_records == 1200 and api.records() == records
        served = []
        for page in range(1, 6):
            body = get(api, f"?page={page}&per_page=250", session=s).json()
            assert body["total"] == 1200 and body["total_pages"] == 5
            served.extend(body["data"])
        assert served == records
        assert get(api, "?page=7&per_page=37", session=s).json()["data"] == records[222:259]


def test_scale_rates_are_parameters():
    records = generate_records("scale", customers=200, duplicate_rate=0.5, damaged_rate=0.0)
    assert len(records) == 300 and len({r["id"] for r in records}) == 200
    clean = generate_records("scale", customers=200, duplicate_rate=0.0, damaged_rate=0.0)
    assert [r["id"] for r in clean] == list(range(1, 201))
    assert all(quality(r) == 100 for r in clean)


def test_scale_million_customers_page_is_served():
    with DemoAPI(dataset="scale", customers=1_000_000, faults="none") as api:
        assert api.total_records == 1_200_000
        body = get(api, "?page=6000&per_page=100").json()
        assert body["total"] == 1_200_000 and body["total_pages"] == 12_000
        assert len(body["data"]) == 100
        ids = [r["id"] for r in body["data"]]
        assert ids == sorted(ids) and 499_000 < ids[0] < 501_000
        last = get(api, "?page=12000&per_page=100").json()["data"]
        assert last[-1]["id"] == 1_000_000
        assert get(api, "?page=12001&per_page=100").json()["data"] == []


# ---- lifecycle and CLI -------------------------------------------------------------------


def test_stop_is_idempotent_and_really_stops():
    api = DemoAPI(dataset="reqres", faults="none")
    base = api.start()
    assert api.start() == base and re.fullmatch(r"http://127\.0\.0\.1:\d+/api", base)
    with requests.Session() as s:
        assert get(api, session=s).status_code == 200  # leaves a keep-alive connection open
        api.stop()
        api.stop()
        with pytest.raises(requests.ConnectionError):
            get(api, session=s, timeout=1)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_until_interrupted(stop_signal):
    proc = subprocess.Popen(
        [sys.executable, "-m", "extract.demo_api", "--port", "0", "--dataset", "reqres", "--faults", "none"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stderr.readline()
        match = re.fullmatch(r"demo API serving 12 records at (http://127\.0\.0\.1:\d+/api) \(Ctrl-C to stop\)\n", line)
        assert match, line
        assert requests.get(match.group(1) + "/users?page=2", timeout=TIMEOUT).json()["data"] == FIXTURES[1]["data"]
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_cli_reports_a_busy_port(capsys):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        assert main(["--port", str(port), "--faults", "none"]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--latency", "nan"], "error: latency must be from 0 to 3600 seconds, not nan"),
    (["--dataset", "scale", "--duplicate-rate", "nan"], "error: scale: customers >= 0, duplicate_rate >= 0"),
    (["--bogus"], "error: unrecognized arguments: --bogus"),
])
def test_bad_demo_api_flags_are_one_line_and_exit_2(args, message):
    from conftest import run_cli

    result = run_cli("demo-api", "--port", "0", *args, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
