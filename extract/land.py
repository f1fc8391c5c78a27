"""Landing: pages go to ``raw.api_pages`` unchanged, many pages per INSERT.

Python hands DuckDB one list per column and a single ``unnest`` inserts the batch: no
per-record rows, no per-page round trips, and the body text is stored byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import duckdb

from .client import Page

INSERT_PAGES = """
insert into raw.api_pages (run_id, page, url, http_status, fetched_at, attempts, record_count, body_md5, body)
select
    $run_id,
    unnest($pages),
    unnest($urls),
    unnest($statuses),
    unnest($fetched),
    unnest($attempts),
    unnest($counts),
    unnest($md5s),
    unnest($bodies)::json
"""


def land_pages(con: duckdb.DuckDBPyConnection, run_id: int, pages: Iterable[Page]) -> int:
    """Insert a batch of pages in one statement and commit it; returns how many landed."""
    batch = list(pages)
    if not batch:
        return 0
    con.execute(
        INSERT_PAGES,
        {
            "run_id": run_id,
            "pages": [p.page for p in batch],
            "urls": [p.url for p in batch],
            "statuses": [p.status for p in batch],
            "fetched": [p.fetched_at for p in batch],
            "attempts": [p.attempts for p in batch],
            "counts": [len(p.records) for p in batch],
            "md5s": [hashlib.md5(p.body.encode()).hexdigest() for p in batch],
            "bodies": [p.body for p in batch],
        },
    )
    return len(batch)


def landed_pages(con: duckdb.DuckDBPyConnection, run_id: int) -> dict[int, int]:
    """Pages already landed for a run (page -> record count), for resuming it."""
    rows = con.execute(
        "select page, record_count from raw.api_pages where run_id = ?", [run_id]
    ).fetchall()
    return {page: count for page, count in rows}


def landed_first_page(con: duckdb.DuckDBPyConnection, run_id: int) -> str | None:
    row = con.execute(
        "select body::varchar from raw.api_pages where run_id = ? and page = 1", [run_id]
    ).fetchone()
    return row[0] if row else None
