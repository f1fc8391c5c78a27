"""SQL models on small input rows, with the exact rows each layer should hold (DESIGN.md, Business rules)."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import SQL_DIR, build, dicts, land_records, rows
from transform.project import Project
from transform.warehouse import WarehouseConfig, connect, ensure_schema

STARTED = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)  # land_records' default run start
AVATAR = "https://reqres.in/img/faces/1-image.jpg"

CHANNELS = ["website", "mobile_app", "email_campaign"]
SEGMENTS = ["US-West", "US-East", "EU-Central", "APAC"]


def person(customer_id, first="Ada", last="Lovelace", email="ada@example.com", avatar=AVATAR, **extra) -> dict:
    """A complete reqres-style record (score 100); pass ``first=MISSING`` etc. to drop a key."""
    record = {"id": customer_id, "first_name": first, "last_name": last, "email": email, "avatar": avatar, **extra}
    return {key: value for key, value in record.items() if value is not MISSING}


MISSING = object()


def md5_draw(field: str, customer_id: int) -> int:
    offset = {"engagement_level": 0, "activity_status": 6, "acquisition_channel": 12,
              "market_segment": 18, "customer_tier": 24}[field]
    return int(hashlib.md5(str(customer_id).encode()).hexdigest()[offset:offset + 6], 16)


def land_and_build(con, *pages, **kwargs):
    land_records(con, list(pages), **kwargs)
    return build(con)


# -- standardization ------------------------------------------------------------------------------


def test_names_are_trimmed_and_collapsed_case_kept_blank_is_null(con):
    land_and_build(con, [
        person(1, first="  Ada\t\tMary \n", last=" LOVELACE  "),
        person(2, first="", last="   "),
        person(3, first="\t\n\r", last=None),
        person(4, first=MISSING, last=MISSING),
        person(5, first="mary-jane", last=None),
        person(6, first=None, last="de  la\tCruz\n"),
        person(7, first="Ma\u000bry\u000cAnn\rX", last="o'NEIL"),
    ])
    assert rows(con, """
        select customer_id, first_name, last_name
        from staging.stg_reqres__users order by position_in_page
    """) == [
        (1, "Ada Mary", "LOVELACE"),
        (2, None, None),
        (3, None, None),
        (4, None, None),
        (5, "mary-jane", None),
        (6, None, "de la Cruz"),
        (7, "Ma ry Ann X", "o'NEIL"),
    ]
    assert rows(con, "select customer_id, full_name from marts.dim_customers order by customer_id") == [
        (1, "Ada Mary LOVELACE"),
        (2, None),
        (3, None),
        (4, None),
        (5, "mary-jane"),
        (6, "de la Cruz"),
        (7, "Ma ry Ann X o'NEIL"),
    ]


def test_emails_are_trimmed_and_lower_cased_blank_is_null_avatars_trimmed(con):
    land_and_build(con, [
        person(1, email="  Ada@Example.COM \t", avatar="  https://x.test/a.png\n"),
        person(2, email="", avatar=""),
        person(3, email=" \t\n ", avatar="   "),
        person(4, email=None, avatar=None),
        person(5, email=MISSING, avatar=MISSING),
        person(6, email="MiXeD.Case+Tag@Sub.Example.Org"),
    ])
    assert rows(con, """
        select customer_id, email, avatar_url
        from staging.stg_reqres__users order by position_in_page
    """) == [
        (1, "ada@example.com", "https://x.test/a.png"),
        (2, None, None),
        (3, None, None),
        (4, None, None),
        (5, None, None),
        (6, "mixed.case+tag@sub.example.org", AVATAR),
    ]


def test_unicode_whitespace_is_whitespace_in_names_emails_and_ids(con):
    # one definition everywhere: what Python's str.isspace() calls whitespace (NBSP, ideographic
    # space, line/paragraph separators, NEL, the C0 information separators); not zero-width chars
    land_and_build(con, [
        person(1, first="\u00a0Ada\u00a0\u00a0Mary\u3000", last="Love\u2028\u2029lace\x85",
               email="\u00a0ada@example.com\u202f", avatar="\u2003https://x.test/a.png\u00a0"),
        person(2, first="\u00a0", last="\x1c\x1d\x1e\x1f", email="\u3000", avatar="\u205f"),
        person("\u00a03\u3000", first="Zero\u200bWidth", email="a\u00a0b@example.com"),
        person(4, email="ada@exa\u2009mple.com"),
    ])
    assert rows(con, """
        select customer_id, first_name, last_name, email, avatar_url, email_domain, quality_issues
        from intermediate.int_customers_scored order by customer_id
    """) == [
        (1, "Ada Mary", "Love lace", "ada@example.com", "https://x.test/a.png", "example.com", []),
        (2, None, None, None, None, "unknown", ["missing_first_name", "missing_last_name", "missing_email",
                                                "missing_avatar"]),
        (3, "Zero\u200bWidth", "Lovelace", "a\u00a0b@example.com", AVATAR, "unknown", ["invalid_email"]),
        (4, "Ada", "Lovelace", "ada@exa\u2009mple.com", AVATAR, "unknown", ["invalid_email"]),
    ]


def test_full_name_from_both_either_or_neither(con):
    land_and_build(con, [
        person(1, first="Ada", last="Lovelace"),
        person(2, first="Ada", last=None),
        person(3, first=None, last="Lovelace"),
        person(4, first=None, last=None),
        person(5, first=" ", last=MISSING),
    ])
    assert rows(con, "select customer_id, first_name, last_name, full_name from marts.dim_customers order by 1") == [
        (1, "Ada", "Lovelace", "Ada Lovelace"),
        (2, "Ada", None, "Ada"),
        (3, None, "Lovelace", "Lovelace"),
        (4, None, None, None),
        (5, None, None, None),
    ]


# -- email validity and domain ----------------------------------------------------------------------


def test_email_validity_and_domain(con):
    emails = [
        "no-at-sign.example.com",
        "two@@example.com",
        "spaces in@example.com",
        "user@nodot",
        "UPPER@Example.COM ",
        "a@b.c",
        "first.last+tag@sub.example.co.uk",
        "@example.com",
        "user@.com",
        "user@example.",
        "user@exa\tmple.com",
        "a@b@c.com",
        "émile@exämple.fr",
        None,
    ]
    land_and_build(con, [person(i, email=email) for i, email in enumerate(emails, start=1)])
    assert rows(con, """
        select email, email_is_valid, email_domain, quality_issues, data_quality_score
        from intermediate.int_customers_scored order by customer_id
    """) == [
        ("no-at-sign.example.com", False, "unknown", ["invalid_email"], 90),
        ("two@@example.com", False, "unknown", ["invalid_email"], 90),
        ("spaces in@example.com", False, "unknown", ["invalid_email"], 90),
        ("user@nodot", False, "unknown", ["invalid_email"], 90),
        ("upper@example.com", True, "example.com", [], 100),
        ("a@b.c", True, "b.c", [], 100),
        ("first.last+tag@sub.example.co.uk", True, "sub.example.co.uk", [], 100),
        ("@example.com", False, "unknown", ["invalid_email"], 90),
        ("user@.com", False, "unknown", ["invalid_email"], 90),
        ("user@example.", False, "unknown", ["invalid_email"], 90),
        ("user@exa\tmple.com", False, "unknown", ["invalid_email"], 90),
        ("a@b@c.com", False, "unknown", ["invalid_email"], 90),
        ("émile@exämple.fr", True, "exämple.fr", [], 100),
        (None, None, "unknown", ["missing_email"], 90),
    ]
    assert rows(con, "select customer_id, email_domain from marts.dim_customers where customer_id in (4, 5, 14) order by 1") == [
        (4, "unknown"), (5, "example.com"), (14, "unknown"),
    ]


# -- data_quality_score ------------------------------------------------------------------------------


def test_data_quality_score_deductions_issues_and_buckets(con):
    land_and_build(con, [
        person(1),                                                       # reqres-like: no optional keys
        person(2, first=None),
        person(3, first=None, last=" "),
        person(4, first=None, last=None, avatar=""),
        person(5, first=None, last=None, avatar=None, email=None),
        person(6, email="not-an-email"),
        person(7, email="not-an-email", avatar=MISSING),
        person(8, engagement_score=None),
        person(9, engagement_score="n/a"),
        person(10, engagement_score=150),
        person(11, engagement_score=-1),
        person(12, engagement_score=55, last_activity_at="2026-11-01T00:00:00Z"),
        person(13, last_activity_at=None),
        person(14, last_activity_at="not a date"),
        person(15, engagement_score=None, last_activity_at="yesterday"),
        person(16, first=MISSING, last=MISSING, email=MISSING, avatar=MISSING,
               engagement_score=None, last_activity_at=None),
        person(17, first=None, last=None, email="bad@", avatar=None,
               engagement_score="high", last_activity_at="2026-02-30"),
    ])
    assert rows(con, """
        select customer_id, data_quality_score, quality_bucket, quality_issues
        from marts.dim_customers order by customer_id
    """) == [
        (1, 100, "high", []),
        (2, 90, "high", ["missing_first_name"]),
        (3, 80, "medium", ["missing_first_name", "missing_last_name"]),
        (4, 70, "medium", ["missing_first_name", "missing_last_name", "missing_avatar"]),
        (5, 60, "low", ["missing_first_name", "missing_last_name", "missing_email", "missing_avatar"]),
        (6, 90, "high", ["invalid_email"]),
        (7, 80, "medium", ["invalid_email", "missing_avatar"]),
        (8, 90, "high", ["invalid_engagement_score"]),
        (9, 90, "high", ["invalid_engagement_score"]),
        (10, 90, "high", ["invalid_engagement_score"]),
        (11, 90, "high", ["invalid_engagement_score"]),
        (12, 100, "high", []),
        (13, 90, "high", ["invalid_last_activity_at"]),
        (14, 90, "high", ["invalid_last_activity_at"]),
        (15, 80, "medium", ["invalid_engagement_score", "invalid_last_activity_at"]),
        # the most a record can lose is 6 x 10 (missing and invalid email exclude each other):
        # the floor at 0 can never bind, and scores are multiples of 10 (no 89 or 69 exists)
        (16, 40, "low", ["missing_first_name", "missing_last_name", "missing_email", "missing_avatar",
                         "invalid_engagement_score", "invalid_last_activity_at"]),
        (17, 40, "low", ["missing_first_name", "missing_last_name", "invalid_email", "missing_avatar",
                         "invalid_engagement_score", "invalid_last_activity_at"]),
    ]
    # the contract's bucket boundaries, on the scores that can occur
    assert dict(rows(con, """
        select data_quality_score, any_value(quality_bucket) from marts.dim_customers group by 1
    """)) == {100: "high", 90: "high", 80: "medium", 70: "medium", 60: "low", 40: "low"}


def test_customer_quality_summary_counts_per_bucket(con):
    land_and_build(con, [
        person(1),
        person(2, email="nope"),
        person(3, first=None, last=None),
        person(4, first=None, last=None, email=None, avatar=None),
        person(5, email=None),
    ])
    assert rows(con, "select * from marts.customer_quality_summary") == [
        # bucket, customers, share, avg score, missing_email, invalid_email, missing_avatar
        ("high", 3, pytest.approx(0.6), pytest.approx(93.33), 1, 1, 0),
        ("medium", 1, pytest.approx(0.2), pytest.approx(80.0), 0, 0, 0),
        ("low", 1, pytest.approx(0.2), pytest.approx(60.0), 1, 0, 1),
    ]
    # the bucket is the same ENUM as dim_customers': sorting by it goes high, medium, low
    assert rows(con, "select quality_bucket from marts.customer_quality_summary order by quality_bucket desc") == [
        ("low",), ("medium",), ("high",)]
    assert rows(con, "select distinct data_type from information_schema.columns where column_name = 'quality_bucket' "
                     "and table_name in ('customer_quality_summary', 'dim_customers')") == [
        ("ENUM('high', 'medium', 'low')",)]


def test_customer_quality_summary_shows_empty_buckets_as_zero(con):
    land_and_build(con, [person(1)])
    assert rows(con, "select quality_bucket, customers, share, missing_email from marts.customer_quality_summary") == [
        ("high", 1, pytest.approx(1.0), 0),
        ("medium", 0, pytest.approx(0.0), 0),
        ("low", 0, pytest.approx(0.0), 0),
    ]


# -- dedup ----------------------------------------------------------------------------------------------


def test_dedup_keeps_highest_score_then_lowest_page_then_position(con):
    land_and_build(
        con,
        [
            person(1, first="p1-1 missing avatar", avatar=None),     # 90
            person(1, first="p1-2 best"),                              # 100 -> wins on score
            person(2, first="p1-3 first seen"),                        # 100 -> wins the tie (page 1)
            person(4, first="p1-4 low", email=None, avatar=None),      # 80
            person(3, first="p1-5 lower", avatar=None, email=None),    # 80
            person(5, first="p1-6 alone"),
        ],
        [
            person(2, first="p2-1 same score later page"),             # 100
            person(3, first="p2-2 tie first", avatar=None),            # 90 -> wins (beats page 1's 80)
            person(3, first="p2-3 tie later", avatar=None),            # 90
            person(4, first="p2-4 better on page 2"),                  # 100 -> score beats page
            person(3, first="p2-5 tie last", email="bad"),             # 90
        ],
    )
    assert rows(con, """
        select customer_id, first_name, page, position_in_page, data_quality_score, records_received
        from intermediate.int_customers_deduplicated order by customer_id
    """) == [
        (1, "p1-2 best", 1, 2, 100, 2),
        (2, "p1-3 first seen", 1, 3, 100, 2),
        (3, "p2-2 tie first", 2, 2, 90, 4),
        (4, "p2-4 better on page 2", 2, 4, 100, 2),
        (5, "p1-6 alone", 1, 6, 100, 1),
    ]
    assert rows(con, """
        select customer_id, first_name, source_page, records_received, run_id
        from marts.dim_customers order by customer_id
    """) == [
        (1, "p1-2 best", 1, 2, 1),
        (2, "p1-3 first seen", 1, 2, 1),
        (3, "p2-2 tie first", 2, 4, 1),
        (4, "p2-4 better on page 2", 2, 2, 1),
        (5, "p1-6 alone", 1, 1, 1),
    ]
    assert rows(con, "select count(*) from intermediate.int_customers_scored") == [(11,)]


# -- enrichment --------------------------------------------------------------------------------------------


def test_engagement_level_from_engagement_score(con):
    scores = [70, 69.9, 40, 39, 39.99, 0, 100, "85", " 42 ", None, "n/a", 100.5, -0.1, True]
    land_and_build(con, [person(i, engagement_score=s) for i, s in enumerate(scores, start=1)])
    assert rows(con, """
        select customer_id, engagement_score, engagement_level, quality_issues
        from marts.dim_customers order by customer_id
    """) == [
        (1, 70.0, "high", []),
        (2, 69.9, "medium", []),
        (3, 40.0, "medium", []),
        (4, 39.0, "low", []),
        (5, 39.99, "low", []),
        (6, 0.0, "low", []),
        (7, 100.0, "high", []),
        (8, 85.0, "high", []),
        (9, 42.0, "medium", []),
        (10, None, "unknown", ["invalid_engagement_score"]),
        (11, None, "unknown", ["invalid_engagement_score"]),
        (12, None, "unknown", ["invalid_engagement_score"]),
        (13, None, "unknown", ["invalid_engagement_score"]),
        (14, None, "unknown", ["invalid_engagement_score"]),
    ]


def test_activity_status_relative_to_the_run_start(con):
    def iso(delta: timedelta) -> str:
        return (STARTED - delta).strftime("%Y-%m-%dT%H:%M:%SZ")

    values = [
        iso(timedelta(days=89)),
        iso(timedelta(days=91)),
        iso(timedelta(days=90)),                        # exactly 90 days: still within
        iso(timedelta(days=90, seconds=1)),
        iso(timedelta(days=0)),
        "2026-10-01",                                   # date only
        "2026-08-28T12:00:00+02:00",                    # = 10:00Z, exactly 90 days
        "2026-08-28T11:59:59+02:00",                    # one second older
        "not a date",
        None,
        "",
    ]
    land_and_build(con, [person(i, last_activity_at=v) for i, v in enumerate(values, start=1)])
    got = rows(con, """
        select customer_id, last_activity_at, activity_status, quality_issues
        from marts.dim_customers order by customer_id
    """)
    assert [(cid, status, issues) for cid, _, status, issues in got] == [
        (1, "active", []),
        (2, "inactive", []),
        (3, "active", []),
        (4, "inactive", []),
        (5, "active", []),
        (6, "active", []),
        (7, "active", []),
        (8, "inactive", []),
        (9, "unknown", ["invalid_last_activity_at"]),
        (10, "unknown", ["invalid_last_activity_at"]),
        (11, "unknown", ["invalid_last_activity_at"]),
    ]
    assert got[0][1] == STARTED - timedelta(days=89)
    assert got[5][1] == datetime(2026, 10, 1, tzinfo=timezone.utc)
    assert got[6][1] == STARTED - timedelta(days=90)
    assert [r[1] for r in got[8:]] == [None, None, None]


def test_last_activity_at_that_is_not_iso_8601_is_unparseable(con):
    # DuckDB's timestamptz cast alone takes 'infinity', 'epoch', time-zone names, 1-digit months
    values = ["infinity", "epoch", "-infinity", "2026-11-01 10:00:00 America/New_York", "2026-11-1",
              "11/01/2026", 1764150000, "2026-13-01", " 2026-11-01"]
    land_and_build(con, [person(i, last_activity_at=v) for i, v in enumerate(values, start=1)])
    assert rows(con, """
        select customer_id, last_activity_at, activity_status, data_quality_score, quality_issues
        from marts.dim_customers order by customer_id
    """) == [(i, None, "unknown", 90, ["invalid_last_activity_at"]) for i in range(1, len(values) + 1)]


def test_enrichment_without_the_facts_is_the_md5_hash_of_the_id(con):
    ids = [1, 2, 3, 7, 12, 42, 1000]
    land_and_build(con, [person(i) for i in ids])
    got = rows(con, """
        select customer_id, engagement_level, activity_status, acquisition_channel, market_segment, customer_tier
        from marts.dim_customers order by customer_id
    """)
    expected = []
    for i in ids:
        tier = md5_draw("customer_tier", i) % 10
        expected.append((
            i,
            ["high", "medium", "low"][md5_draw("engagement_level", i) % 3],
            ["active", "inactive"][md5_draw("activity_status", i) % 2],
            CHANNELS[md5_draw("acquisition_channel", i) % 3],
            SEGMENTS[md5_draw("market_segment", i) % 4],
            "basic" if tier < 6 else "premium" if tier < 9 else "enterprise",
        ))
    assert got == expected
    # spelled out for two ids, straight from the rule
    channel = dict((cid, ch) for cid, _, _, ch, _, _ in got)
    assert channel[7] == CHANNELS[int(hashlib.md5(b"7").hexdigest()[12:18], 16) % 3]
    assert channel[42] == CHANNELS[int(hashlib.md5(b"42").hexdigest()[12:18], 16) % 3]


def test_hashed_fields_are_the_same_for_the_same_id_across_warehouses(con, tmp_path):
    columns = "customer_id, engagement_level, activity_status, acquisition_channel, market_segment, customer_tier"
    land_and_build(con, [person(i) for i in range(1, 41)])
    first = rows(con, f"select {columns} from marts.dim_customers order by customer_id")

    # another warehouse, other names, other order and pages, the id sent as text: same answers
    other = connect(WarehouseConfig(tmp_path / "other" / "customers.duckdb"))
    try:
        ensure_schema(other)
        land_and_build(
            other,
            [person(str(i), first=f"X{i}", email=None) for i in range(40, 20, -1)],
            [person(f" {i} ", last=None) for i in range(1, 21)],
            started_at=STARTED + timedelta(days=3),
        )
        second = rows(other, f"select {columns} from marts.dim_customers order by customer_id")
    finally:
        other.close()
    assert second == first
    assert {r[1] for r in first} <= {"high", "medium", "low"}
    assert {r[2] for r in first} <= {"active", "inactive"}
    assert {r[3] for r in first} <= set(CHANNELS)
    assert {r[4] for r in first} <= set(SEGMENTS)
    assert {r[5] for r in first} <= {"basic", "premium", "enterprise"}
    # 40 ids spread over every value of each field
    assert len({r[3] for r in first}) == 3 and len({r[4] for r in first}) == 4
    assert len({r[5] for r in first}) == 3


# -- ids and quarantine -----------------------------------------------------------------------------------------


def test_ids_cast_or_go_to_quarantine_with_a_reason(con):
    records = [
        person("7", first="seven"),
        person(" 8 ", first="eight"),
        person("\t10\n", first="ten"),
        person(-3, first="negative"),
        person("abc", first="letters"),
        person(7.5, first="fraction"),
        person(None, first="null id"),
        {"first_name": "no id", "email": "noid@example.com"},
        person(" \u00a0", first="blank id"),
        "just a string",
        42,
        None,
        [1, 2],
        person(9, first="nine"),
    ]
    land_and_build(con, records)
    assert rows(con, """
        select position_in_page, customer_id, is_keyed, quarantine_reason
        from staging.stg_reqres__users order by position_in_page
    """) == [
        (1, 7, True, None),
        (2, 8, True, None),
        (3, 10, True, None),
        (4, -3, True, None),
        (5, None, False, "invalid_id"),
        (6, None, False, "invalid_id"),
        (7, None, False, "missing_id"),
        (8, None, False, "missing_id"),
        (9, None, False, "missing_id"),
        (10, None, False, "not_an_object"),
        (11, None, False, "not_an_object"),
        (12, None, False, "not_an_object"),
        (13, None, False, "not_an_object"),
        (14, 9, True, None),
    ]
    quarantined = rows(con, "select page, position_in_page, reason, record from marts.quarantined_records order by 2")
    assert [(r[0], r[1], r[2], json.loads(r[3])) for r in quarantined] == [
        (1, 5, "invalid_id", records[4]),
        (1, 6, "invalid_id", records[5]),
        (1, 7, "missing_id", records[6]),
        (1, 8, "missing_id", records[7]),
        (1, 9, "missing_id", records[8]),
        (1, 10, "not_an_object", "just a string"),
        (1, 11, "not_an_object", 42),
        (1, 12, "not_an_object", None),
        (1, 13, "not_an_object", [1, 2]),
    ]
    assert rows(con, "select customer_id, first_name from marts.dim_customers order by 1") == [
        (-3, "negative"), (7, "seven"), (8, "eight"), (9, "nine"), (10, "ten"),
    ]
    assert rows(con, "select customer_id from intermediate.int_customer_sightings order by 1") == [
        (-3,), (7,), (8,), (9,), (10,),
    ]


# -- hostile strings are data ------------------------------------------------------------------------------------

HOSTILE = [
    "<script>alert('x')</script>",
    "O'Brien \"The Rock\"",
    "🦆👩‍💻 Duck",
    "مريم الخوري",
    "שָׁלוֹם",
    "Robert'); drop table marts.dim_customers; --",
    "{{ ref('dim_customers') }}",
    "\\N NULL null",
    "A" * 5000 + "é" * 5000,
]


def test_hostile_strings_are_stored_unchanged_as_data(con):
    land_and_build(con, [
        person(i, first=name, last=name, email=f"{i}@example.com", avatar=name)
        for i, name in enumerate(HOSTILE, start=1)
    ])
    got = rows(con, "select customer_id, first_name, last_name, full_name, avatar_url from marts.dim_customers order by 1")
    assert got == [(i, name, name, f"{name} {name}", name) for i, name in enumerate(HOSTILE, start=1)]
    assert len(got[-1][1]) == 10_000
    tables = set(rows(con, """
        select schema_name || '.' || table_name from duckdb_tables()
        union all
        select schema_name || '.' || view_name from duckdb_views() where not internal
    """))
    for relation in ["raw.runs", "raw.api_pages", "staging.stg_reqres__users", "intermediate.int_customer_sightings",
                     "intermediate.int_customers_scored", "intermediate.int_customers_deduplicated",
                     "intermediate.int_customers_enriched", "marts.dim_customers", "marts.quarantined_records",
                     "marts.customer_quality_summary", "meta.model_builds", "meta.published_models"]:
        assert (relation,) in tables
    # and a second build over the same warehouse still works
    land_and_build(con, [person(1, first=HOSTILE[5])], run_id=2)
    assert rows(con, "select customer_id, first_name from marts.dim_customers") == [(1, HOSTILE[5])]


def test_hostile_strings_in_ids_are_quarantined_not_executed(con):
    records = [person("1; drop table raw.runs; --"), person("1' or '1'='1"), person(1)]
    land_and_build(con, records)
    assert [(r[0], r[1], json.loads(r[2])) for r in rows(
        con, "select position_in_page, reason, record from marts.quarantined_records order by 1"
    )] == [(1, "invalid_id", records[0]), (2, "invalid_id", records[1])]
    assert rows(con, "select count(*) from raw.runs") == [(1,)]


# -- pages -------------------------------------------------------------------------------------------------------


def test_null_and_empty_data_pages_add_nothing_and_unknown_fields_are_ignored(con):
    land_and_build(
        con,
        json.dumps({"page": 1, "per_page": 2, "total_pages": 4, "data": None}),
        [person(1, favourite_colour="blue", nested={"id": 99, "email": "x@y.z"}, support={"url": "u"})],
        json.dumps({"page": 3, "per_page": 2, "total_pages": 4, "data": []}),
        [person(2, first="Two"), person(3, first="Three", id_extra=5)],
    )
    assert rows(con, "select page, position_in_page, customer_id from staging.stg_reqres__users order by 1, 2") == [
        (2, 1, 1), (4, 1, 2), (4, 2, 3),
    ]
    assert rows(con, """
        select customer_id, full_name, email, data_quality_score, quality_issues, source_page
        from marts.dim_customers order by 1
    """) == [
        (1, "Ada Lovelace", "ada@example.com", 100, [], 2),
        (2, "Two Lovelace", "ada@example.com", 100, [], 4),
        (3, "Three Lovelace", "ada@example.com", 100, [], 4),
    ]
    assert rows(con, "select count(*) from marts.quarantined_records") == [(0,)]


def test_a_run_with_only_empty_pages_builds_empty_marts(con):
    land_and_build(con, json.dumps({"page": 1, "total_pages": 1, "data": []}))
    assert rows(con, "select count(*) from marts.dim_customers") == [(0,)]
    assert rows(con, "select quality_bucket, customers, share from marts.customer_quality_summary") == [
        ("high", 0, None), ("medium", 0, None), ("low", 0, None),
    ]


# -- export order --------------------------------------------------------------------------------------------------


def test_export_order_is_case_and_accent_insensitive_nulls_last_ties_by_id(con):
    names = {
        1: "Emma",
        2: None,
        3: "émile",
        4: "Emil",
        5: "zoe",
        6: "Zoë",
        7: "emil",
        8: "adam",
        9: "Ängel",
        10: "Bob",
        11: None,
        12: "EMIL ZOLA",
        13: "Émile",
    }
    land_and_build(con, [person(i, first=name, last=None) for i, name in names.items()])
    export = rows(con, Project(SQL_DIR).queries["customers"].sql)
    assert [(r[0], r[1]) for r in export] == [
        (8, "adam"),
        (9, "Ängel"),
        (10, "Bob"),
        (4, "Emil"),
        (7, "emil"),
        (12, "EMIL ZOLA"),
        (3, "émile"),
        (13, "Émile"),
        (1, "Emma"),
        (5, "zoe"),
        (6, "Zoë"),
        (2, None),
        (11, None),
    ]
    assert [d["customer_id"] for d in dicts(con, Project(SQL_DIR).queries["customers"].sql)][:3] == [8, 9, 10]


# -- which run -------------------------------------------------------------------------------------------------------


def test_marts_describe_the_latest_run_history_spans_all_runs(con):
    run1 = STARTED - timedelta(days=6)
    land_records(con, [[person(1, first="Old1"), person(2, first="Old2"), person(3, first="Old3"), person("x")]],
                 run_id=1, started_at=run1)
    land_records(con, [[person(2, first="New2"), person(3, first="New3", email=None)], [person(4, first="New4")]],
                 run_id=2, started_at=STARTED)
    build(con, run_id=2)
    assert rows(con, """
        select customer_id, first_name, data_quality_score, run_id, first_seen_at, last_seen_at, runs_seen
        from marts.dim_customers order by customer_id
    """) == [
        (2, "New2", 100, 2, run1, STARTED, 2),
        (3, "New3", 90, 2, run1, STARTED, 2),
        (4, "New4", 100, 2, STARTED, STARTED, 1),
    ]
    assert rows(con, "select customer_id from staging.stg_reqres__users order by page, position_in_page") == [
        (2,), (3,), (4,),
    ]
    assert rows(con, "select count(*) from marts.quarantined_records") == [(0,)]
    assert rows(con, "select run_id, customer_id, seen_at from intermediate.int_customer_sightings order by 1, 2") == [
        (1, 1, run1), (1, 2, run1), (1, 3, run1), (2, 2, STARTED), (2, 3, STARTED), (2, 4, STARTED),
    ]
    assert rows(con, "select count(*) from raw.api_pages") == [(3,)]


def test_a_run_whose_extraction_did_not_complete_is_not_described(con):
    land_records(con, [[person(1, first="Done")]], run_id=1)
    # run 2 landed a page, then failed before its extraction completed
    land_records(con, [[person(1, first="Half"), person(5)]], run_id=2, started_at=STARTED + timedelta(hours=1))
    con.execute("update raw.runs set extracted_at = null, status = 'failed' where run_id = 2")
    build(con)
    assert rows(con, "select customer_id, first_name, run_id, runs_seen from marts.dim_customers") == [(1, "Done", 1, 1)]


def test_activity_window_does_not_depend_on_the_host_time_zone(tmp_path, monkeypatch):
    # a host in California: DuckDB would default to its zone, where 90 days cross a DST change
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        con = connect(WarehouseConfig(tmp_path / "tz.duckdb"))
        ensure_schema(con)
        assert con.execute("select current_setting('TimeZone')").fetchone()[0] == "UTC"
        land_and_build(con, [
            person(1, last_activity_at="2026-08-28T09:30:00Z"),  # 90 days and 30 minutes before the run
            person(2, last_activity_at="2026-08-28T10:00:00Z"),  # exactly 90 days before the run
        ])
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert rows(con, "select customer_id, activity_status from marts.dim_customers order by 1") == [
        (1, "inactive"), (2, "active"),
    ]
