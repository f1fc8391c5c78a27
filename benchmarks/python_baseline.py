"""The plain-Python baseline, in the seed's style: what the pipeline has to beat.

    python benchmarks/python_baseline.py --base-url http://127.0.0.1:8000/api --output out.json

A naive script: ``requests.get`` page after page (sequential, a new connection each time),
``json`` + dicts, the business rules of DESIGN.md in Python, ``sorted`` and ``json.dump``.
No warehouse, no history, no tests, no atomic write. Prints one JSON line of timings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
import unicodedata
from datetime import datetime, timedelta, timezone

import requests

EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")  # whitespace as str.split() sees it
ID_TEXT = re.compile(r"-?[0-9]{1,18}")


def fetch_all(base_url: str, per_page: int) -> list[list]:
    pages, page = [], 1
    while True:
        response = requests.get(f"{base_url}/users", params={"page": page, "per_page": per_page}, timeout=30)
        response.raise_for_status()
        payload = response.json()
        data = payload.get("data") or []
        if not data:
            break
        pages.append(data)
        if page >= int(payload.get("total_pages") or page):
            break
        page += 1
    return pages


def name(value):
    if value is None:
        return None
    return " ".join(value.split()) or None


def trimmed(value, lower=False):
    if value is None:
        return None
    value = value.strip()
    return (value.lower() if lower else value) or None


def engagement(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= 100 else None


def timestamp(value):
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def draw(field: str, customer_id: int) -> int:
    offset = {"engagement_level": 0, "activity_status": 6, "acquisition_channel": 12,
              "market_segment": 18, "customer_tier": 24}[field]
    return int(hashlib.md5(str(customer_id).encode()).hexdigest()[offset:offset + 6], 16)


def customer_id_of(record):
    if not isinstance(record, dict) or record.get("id") is None:
        return None
    text = str(record["id"]).strip()
    return int(text) if ID_TEXT.fullmatch(text) else None


def score(record: dict) -> dict:
    first, last = name(record.get("first_name")), name(record.get("last_name"))
    email, avatar = trimmed(record.get("email"), lower=True), trimmed(record.get("avatar"))
    valid = email is not None and EMAIL.fullmatch(email) is not None
    has_score, has_activity = "engagement_score" in record, "last_activity_at" in record
    eng, activity = engagement(record.get("engagement_score")), timestamp(record.get("last_activity_at"))
    issues = []
    if first is None:
        issues.append("missing_first_name")
    if last is None:
        issues.append("missing_last_name")
    if email is None:
        issues.append("missing_email")
    elif not valid:
        issues.append("invalid_email")
    if avatar is None:
        issues.append("missing_avatar")
    if has_score and eng is None:
        issues.append("invalid_engagement_score")
    if has_activity and activity is None:
        issues.append("invalid_last_activity_at")
    return {
        "first_name": first, "last_name": last, "email": email, "valid": valid,
        "has_score": has_score, "engagement_score": eng, "has_activity": has_activity, "activity": activity,
        "issues": issues, "score": max(0, 100 - 10 * len(issues)),
    }


def enrich(customer_id: int, c: dict, run_started: datetime) -> dict:
    if c["has_score"]:
        s = c["engagement_score"]
        level = "unknown" if s is None else "high" if s >= 70 else "medium" if s >= 40 else "low"
    else:
        level = ("high", "medium", "low")[draw("engagement_level", customer_id) % 3]
    if c["has_activity"]:
        a = c["activity"]
        status = "unknown" if a is None else "active" if a >= run_started - timedelta(days=90) else "inactive"
    else:
        status = ("active", "inactive")[draw("activity_status", customer_id) % 2]
    tier = draw("customer_tier", customer_id) % 10
    full = " ".join(p for p in (c["first_name"], c["last_name"]) if p is not None) or None
    return {
        "customer_id": customer_id,
        "full_name": full,
        "email_domain": c["email"].split("@", 1)[1] if c["valid"] else "unknown",
        "engagement_level": level,
        "activity_status": status,
        "acquisition_channel": ("website", "mobile_app", "email_campaign")[draw("acquisition_channel", customer_id) % 3],
        "market_segment": ("US-West", "US-East", "EU-Central", "APAC")[draw("market_segment", customer_id) % 4],
        "customer_tier": "basic" if tier < 6 else "premium" if tier < 9 else "enterprise",
        "data_quality_score": c["score"],
        "quality_bucket": "high" if c["score"] >= 90 else "medium" if c["score"] >= 70 else "low",
        "quality_issues": c["issues"],
    }


def sort_key(customer: dict):
    full = customer["full_name"]
    if full is None:
        return (True, "", customer["customer_id"])
    folded = "".join(ch for ch in unicodedata.normalize("NFKD", full) if not unicodedata.combining(ch))
    return (False, folded.lower(), customer["customer_id"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python_baseline.py")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--per-page", type=int, default=100)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    run_started = datetime.now(timezone.utc)
    pages = fetch_all(args.base_url, args.per_page)
    fetched = time.perf_counter()

    best: dict[int, dict] = {}
    records = 0
    for page in pages:
        for record in page:
            records += 1
            customer_id = customer_id_of(record)
            if customer_id is None:
                continue
            candidate = score(record)
            current = best.get(customer_id)
            if current is None or candidate["score"] > current["score"]:  # ties: first seen wins
                best[customer_id] = candidate
    customers = sorted((enrich(cid, c, run_started) for cid, c in best.items()), key=sort_key)
    transformed = time.perf_counter()

    buckets = {"high": 0, "medium": 0, "low": 0}
    for c in customers:
        buckets[c["quality_bucket"]] += 1
    document = {
        "metadata": {
            "total_customers": len(customers),
            "export_timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "data_quality_summary": {f"{k}_quality": v for k, v in buckets.items()},
        },
        "customers": customers,
    }
    with open(args.output, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2, ensure_ascii=False)
    done = time.perf_counter()
    print(json.dumps({
        "seconds": done - started, "fetch": fetched - started, "transform": transformed - fetched,
        "write": done - transformed, "pages": len(pages), "records": records, "customers": len(customers),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
