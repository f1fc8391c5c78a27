"""Paging and landing a run: page 1 first, then the rest concurrently, landed as they arrive.

The plan is small and explicit (``PagePlan``): page 1 says how many pages there are; the
remaining ones are fetched by a bounded pool that shares one ``Throttle``; every finished
page is buffered and landed in bulk by this (the only DuckDB) thread. What was landed
stays landed when a later page fails, so ``--resume`` fetches only what is missing.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import json
import logging
import threading
import time
from dataclasses import dataclass, field

import duckdb

from .client import ApiClient, Page
from .crashpoints import crash_point
from .errors import ApiError
from .land import land_pages, landed_first_page, landed_pages

log = logging.getLogger("pipeline.extract")

MAX_PAGES = 1_000_000  # a hard stop for APIs that never end


def total_pages_of(payload: dict) -> int | None:
    """``total_pages`` when it is a usable whole number, else None (the caller says why)."""
    value = payload.get("total_pages")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def check_served(page: Page) -> None:
    """A page whose ``"page"`` (an integer) is not the page asked for fails the run.

    An API that ignores ``?page=`` answers every request with page 1: each would land, and the
    run would publish page 1's customers alone; asking again cannot help. Checked after the
    repeat checks (an API that answers past its end with its last page is at its end), and
    not on an empty page (nothing on it can be lost or doubled).
    """
    served = page.payload.get("page")
    if page.records and isinstance(served, int) and not isinstance(served, bool) and served != page.page:
        raise ApiError(f"page {page.page}: the API answered with page {served} instead; "
                       "it does not seem to read ?page= (check --base-url)")


def total_of(payload: dict) -> int | None:
    value = payload.get("total")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass
class ExtractResult:
    pages_expected: int | None = None
    pages_landed: int = 0
    records_landed: int = 0
    reported_total: int | None = None
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning(message)


class Lander:
    """Buffers fetched pages and lands them in bulk: every ``batch`` pages or ``seconds``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, run_id: int, result: ExtractResult,
                 batch: int = 200, seconds: float = 0.1, on_landed=None):
        self.con, self.run_id, self.result = con, run_id, result
        self.on_landed = on_landed  # called with the page numbers of each batch once it is committed
        self.batch, self.seconds = batch, seconds
        self.buffer: list[Page] = []
        self.last_flush = time.monotonic()

    def add(self, page: Page) -> None:
        self.buffer.append(page)
        if len(self.buffer) >= self.batch or time.monotonic() - self.last_flush >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            land_pages(self.con, self.run_id, self.buffer)
            if self.on_landed is not None:
                self.on_landed([page.page for page in self.buffer])
            self.result.pages_landed += len(self.buffer)
            self.result.records_landed += sum(len(p.records) for p in self.buffer)
            self.buffer = []
            if self.result.pages_landed > 1:
                crash_point("mid-extract")
        self.last_flush = time.monotonic()


def extract_run(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    client: ApiClient,
    concurrency: int,
    progress=None,
    first_page: futures.Future | None = None,
    on_landed=None,
) -> ExtractResult:
    """Fetch every page of the source into ``raw.api_pages`` for ``run_id``.

    Pages this run already landed (a resumed run) are not fetched again. ``first_page``:
    page 1 already requested (``prefetch_first_page``), for a run that lands nothing yet.
    ``on_landed(pages)``: told the page numbers of each batch once it is committed.
    """
    result = ExtractResult()
    already = landed_pages(con, run_id)
    result.pages_landed = len(already)
    result.records_landed = sum(already.values())
    lander = Lander(con, run_id, result, on_landed=on_landed)

    first_body = landed_first_page(con, run_id)
    if already:
        client.mark_answered()  # a resumed run: the API answered it before, so a refusal is a blip
    if first_body is not None:
        first = json.loads(first_body)
    else:
        page1 = first_page.result() if first_page is not None else client.get_page(1)
        check_served(page1)
        lander.add(page1)  # landed with the next batch: the other pages are asked for first
        first = page1.payload
        already[1] = len(page1.records)

    result.reported_total = total_of(first)
    total_pages = total_pages_of(first)
    first_records = first.get("data") or []
    if total_pages is not None and total_pages > MAX_PAGES:
        # checked before planning: the plan holds every page number (10**9 of them: tens of GB)
        lander.flush()
        raise ApiError(f"page 1 reports {total_pages} pages; more than the {MAX_PAGES} allowed")
    if progress:
        progress.update(result, total_pages, pending=len(lander.buffer))

    if not first_records:
        if total_pages and total_pages > 1:
            result.warn(f"page 1 is empty although the API reports {total_pages} pages; stopping there")
        result.pages_expected = 1
        lander.flush()
        return result

    if not total_pages:  # None, or 0 although page 1 has records: it cannot say where to stop
        result.warn(
            f"page 1 has no usable total_pages ({first.get('total_pages')!r}); "
            "paging one by one until an empty, short or repeated page"
        )
        _extract_sequential(client, lander, result, already, first_records, progress)
        return result

    result.pages_expected = total_pages
    _extract_concurrent(client, lander, result, already, total_pages, concurrency, progress)
    return result


def prefetch_first_page(client: ApiClient) -> futures.Future:
    """Request page 1 in a thread now, while the caller opens the warehouse.

    Page 1 says how many pages there are, so nothing else can start before it; asking for
    it first overlaps its round trip with the warehouse's start-up. If the run stops before
    using it, ``client.cancel()`` ends its retries.
    """
    return in_thread("fetch-first", client.get_page, 1)


def in_thread(name: str, work, *args) -> futures.Future:
    """``work(*args)`` on a daemon thread of its own, started now; its result (or exception) in
    the returned future. A daemon, so work still going (a request on the wire) never holds up
    the process's exit."""
    future: futures.Future = futures.Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work(*args))
        except BaseException as exc:  # handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def _extract_sequential(client, lander, result, already, first_records, progress) -> None:
    previous = first_records
    page_no = 1
    try:
        while True:
            page_no += 1
            if page_no > MAX_PAGES:
                raise ApiError(f"the API is still returning data after {MAX_PAGES} pages; giving up")
            if page_no in already:
                continue
            page = client.get_page(page_no)
            records = page.records
            if not records:
                lander.add(page)
                break
            if records == previous:
                result.warn(f"page {page_no} repeats page {page_no - 1}; treating it as the end")
                break
            check_served(page)
            lander.add(page)
            previous = records
            if progress:
                progress.update(result, None, pending=len(lander.buffer))
            if len(records) < client.per_page:
                break
        result.pages_expected = page_no
    finally:
        lander.flush()


def _extract_concurrent(client, lander, result, already, total_pages, concurrency, progress) -> None:
    planned = total_pages
    pool = futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fetch")
    pending: dict[futures.Future, int] = {}
    # pages not yet handed to the pool: only a few are queued at a time, so waiting on the
    # pending futures stays cheap (futures.wait is linear in them) however many pages there are
    to_fetch: collections.deque[int] = collections.deque()
    window = 2 * concurrency

    def plan(first: int, last: int) -> None:
        to_fetch.extend(number for number in range(first, last + 1) if number not in already)

    def refill() -> None:
        while to_fetch and len(pending) < window:
            number = to_fetch.popleft()
            pending[pool.submit(client.get_page, number)] = number

    # An empty page before total_pages means the API holds fewer records than page 1 said: of the
    # pages after it, only the next is asked for, to make sure (those already on the wire still
    # land). Should one of those come back with records, the empty page was not the end, and the
    # pages put off are fetched.
    empty_seen: int | None = None
    stopped_at: int | None = None
    put_off: list[int] = []
    planned_before_stop = total_pages
    highest_with_records = max((number for number, count in already.items() if count), default=1)
    # An API whose total_pages keeps growing while its pages repeat would page forever: from the
    # last page page 1 planned on, each page's records are kept (as JSON) until the next page's
    # arrive, and a grown page that repeats the one before it ends the run there, as the
    # sequential path ends on a repeated page.
    tail: dict[int, str] = {}
    ended_at: int | None = None
    try:
        plan(2, total_pages)
        refill()
        while pending:
            done, _ = futures.wait(pending, timeout=0.5, return_when=futures.FIRST_COMPLETED)
            for future in done:
                del pending[future]
                page = future.result()  # an ApiError here fails the run (after the flush below)
                if ended_at is not None and page.page > ended_at:
                    continue  # asked for before the repeat was seen: past the end
                if page.page >= total_pages and page.records:
                    tail[page.page] = json.dumps(page.records, sort_keys=True)
                    if page.page > total_pages and tail.get(page.page - 1) == tail[page.page]:
                        result.warn(f"page {page.page} repeats page {page.page - 1} although total_pages "
                                    f"grew to {planned}; treating it as the end")
                        ended_at = planned = result.pages_expected = page.page - 1
                        to_fetch.clear()
                        continue
                    tail.pop(page.page - 2, None)
                check_served(page)
                lander.add(page)
                reported = total_pages_of(page.payload)
                if ended_at is not None:
                    continue
                if page.records:
                    highest_with_records = max(highest_with_records, page.page)
                if stopped_at is not None and page.page > stopped_at and page.records:
                    result.warn(f"page {page.page} has records after the empty page {stopped_at}; "
                                "fetching the pages after it after all")
                    to_fetch.extend(sorted(put_off))
                    planned = result.pages_expected = max(planned, planned_before_stop)
                    stopped_at, put_off = None, []
                if stopped_at is not None and page.page > stopped_at:
                    continue  # past the end: a larger total_pages on it is not followed
                if reported is not None and reported > MAX_PAGES:
                    raise ApiError(f"page {page.page} reports {reported} pages; more than the {MAX_PAGES} allowed")
                if stopped_at is not None and reported is not None and reported > planned_before_stop:
                    # paging stopped at an empty page: the new pages are fetched only if a page
                    # after it turns out to have records
                    put_off.extend(number for number in range(planned_before_stop + 1, reported + 1)
                                   if number not in already)
                    planned_before_stop = reported
                elif stopped_at is None and reported is not None and reported > planned:
                    result.warn(
                        f"total_pages grew from {planned} to {reported} during the run (page {page.page}); "
                        "fetching the new pages too"
                    )
                    plan(planned + 1, reported)
                    planned = reported
                    result.pages_expected = planned
                elif reported is not None and reported < total_pages:
                    result.warn(f"total_pages shrank from {total_pages} to {reported} during the run")
                if not page.records and page.page <= planned and empty_seen is None:
                    empty_seen = page.page
                    if highest_with_records > page.page:
                        result.warn(f"page {page.page} of {planned} is empty although page "
                                    f"{highest_with_records} has records; fetching on to page {planned}")
                    else:
                        stopped_at, planned_before_stop = page.page, planned
                        # the next page is asked for all the same (unless it came already): whether
                        # the empty page was the end must not hang on what was on the wire by then
                        probe = stopped_at + 1
                        result.warn(f"page {page.page} of {planned} is empty: the API holds fewer records "
                                    f"than it reported; stopping there"
                                    + (f" (page {probe} is asked for to make sure)" if probe <= planned else ""))
                        put_off = [number for number in to_fetch if number > probe]
                        for future, number in list(pending.items()):
                            if number > probe and future.cancel():
                                del pending[future]
                                put_off.append(number)
                        kept = [number for number in to_fetch if number < stopped_at or number == probe]
                        to_fetch.clear()
                        to_fetch.extend(kept)
                        planned = result.pages_expected = max([stopped_at, *pending.values(), *kept])
            refill()
            if progress:
                progress.update(result, planned, pending=len(lander.buffer))
            if not done and time.monotonic() - lander.last_flush >= lander.seconds:
                lander.flush()
    except BaseException:
        for future in pending:
            future.cancel()
        client.cancel()  # workers in a backoff sleep or waiting for the throttle stop now
        pool.shutdown(wait=True, cancel_futures=True)
        # land what did arrive: a resumed run will not fetch it again
        for future in list(pending):
            if future.done() and not future.cancelled() and future.exception() is None:
                lander.add(future.result())
        lander.flush()
        raise
    pool.shutdown(wait=True)
    lander.flush()
    if progress:
        progress.update(result, planned, force=True)  # the final count, in logs too
