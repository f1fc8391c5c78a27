"""Landing: pages go to ``raw.api_pages`` unchanged, many pages per INSERT.

Python hands DuckDB one list per column and a single ``unnest`` inserts the batch: no
per-record rows, no per-page round trips, and the body text is stored byte for byte.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable

import duckdb

from .client import Page
from .errors import WarehouseError

# where DuckDB's conversion errors start quoting the value they could not convert
_QUOTED_INPUT = re.compile(r"\s*\b(?:Input|input)\s*:\s*[\"'{\[]|\s+when casting from ")

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
    """Insert a batch of pages in one statement and commit it; returns how many landed.

    DuckDB refusing the batch (a body its JSON parser rejects, a full disk) raises
    ``WarehouseError`` naming the pages: DuckDB's own message quotes the rejected input, which
    for a page is the customers' records, and it would reach stderr and ``raw.runs.error``.
    """
    batch = list(pages)
    if not batch:
        return 0
    try:
        _insert(con, run_id, batch)
    except (duckdb.InterruptException, duckdb.OutOfMemoryException):
        raise  # a stop, and a --memory-limit too small: the CLI says what each means
    except duckdb.Error as exc:
        raise WarehouseError(f"landing {_page_list([p.page for p in batch])} failed (none of them landed): "
                             f"DuckDB: {_first_line(exc)}") from None
    return len(batch)


def _insert(con: duckdb.DuckDBPyConnection, run_id: int, batch: list[Page]) -> None:
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


def _page_list(numbers: list[int]) -> str:
    """``page 4``, ``pages 2-7, 9``: runs of consecutive pages, the first few runs only."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:5])
    if len(runs) > 5:
        shown += f" and {sum(b - a + 1 for a, b in runs[5:])} more"
    return f"page{'s' if len(numbers) > 1 else ''} {shown}"


def _first_line(exc: Exception) -> str:
    """DuckDB's message up to where it quotes its input (``Input: "{...}"``), clipped to one line."""
    text = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
    text = _QUOTED_INPUT.split(text, maxsplit=1)[0].rstrip(" .:") or exc.__class__.__name__
    return text if len(text) <= 200 else text[:197] + "..."


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
