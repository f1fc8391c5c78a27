"""The run: extract -> build -> test -> export, with the run recorded in ``raw.runs``.

Each step can run alone (the CLI's ``extract``/``build``/``test``/``export``). A failure
in any step marks the run failed with the step and the reason, leaves what was landed in
raw, and touches neither the published models nor the last export.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from extract.client import ApiClient, RetryPolicy
from extract.crashpoints import crash_point
from extract.errors import (PipelineError, UsageError, WarehouseError, as_interrupt, first_line,
                            forget_deferred, raise_deferred)
from extract.fetch import extract_run, in_thread, prefetch_first_page
from extract.progress import Progress
from extract.redact import redact, strip_userinfo, url_secrets
from extract.throttle import Throttle

from . import export as export_mod
from .incremental import PageStager, by_page_models, drop_landing_tables
from .project import Project
from .runner import Runner
from .warehouse import (COMPACT_EVERY, RunLock, WarehouseConfig, check_not_warehouse, check_replaceable,
                        check_settings, check_warehouse_file, check_warehouse_name, compact_bookkeeping, connect,
                        default_docs_path, ensure_schema, fetch_dicts, opens_without_waiting, require_warehouse,
                        same_file, utcnow)

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = ROOT / "sql"
DEFAULT_BASE_URL = "https://reqres.in/api"

log = logging.getLogger("pipeline")


@dataclass
class Settings:
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    per_page: int = 100
    concurrency: int = 4
    max_requests_per_minute: int | None = None
    rate_window: float = 60.0  # seconds the rate limit counts over (tests shorten it)
    warehouse: Path = Path("warehouse/customers.duckdb")
    output: Path = Path("sample_output.json")
    resume: bool = False
    quiet: bool = False
    lock_timeout: float = 10.0
    storage_version: str = "v1.0.0"
    threads: int | None = None
    memory_limit: str | None = None
    keep_runs: int | None = None
    full_refresh: bool = False  # rebuild every model from raw (unchanged and incremental ones too)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sql_dir: Path = SQL_DIR
    docs: bool = True  # write the data docs page after a successful build
    docs_output: Path | None = None  # default: warehouse.default_docs_path

    def validate(self, steps=("extract", "build", "export")) -> None:
        """Refuse what cannot work (UsageError, exit 2) before anything is made; ``steps``: the
        ones about to run, whose output files are checked."""
        if self.api_key is not None:
            # a key read from a file often ends in a line break; one inside it could never be
            # sent as a header (and requests would repeat the key in its error): never shown
            self.api_key = self.api_key.strip() or None
            if self.api_key and any(ord(c) < 32 or ord(c) == 127 for c in self.api_key):
                raise UsageError("the API key contains a line break or another control character "
                                 "(it is not shown here); check where it is read from")
        try:
            parts = urlsplit(self.base_url or "")
            parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
            usable = parts.scheme in ("http", "https") and bool(parts.hostname) and not any(
                c.isspace() or ord(c) < 32 for c in parts.netloc)
        except ValueError:  # an unclosed [IPv6 bracket, a port like :99999
            usable = False
        if not usable:
            shown = redact(strip_userinfo(self.base_url), *self.secrets) if self.base_url else self.base_url
            raise UsageError(f"--base-url must be an http(s) URL like {DEFAULT_BASE_URL}, not {shown!r}")
        for name, value, low, high in (
            ("--per-page", self.per_page, 1, 10_000),
            ("--concurrency", self.concurrency, 1, 64),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise UsageError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
        if self.max_requests_per_minute is not None and self.max_requests_per_minute < 1:
            raise UsageError(f"--max-requests-per-minute must be at least 1, not {self.max_requests_per_minute}")
        if not 0 <= self.lock_timeout <= 86_400:  # also NaN, which compares false
            raise UsageError(f"--lock-timeout must be from 0 to 86400 seconds, not {self.lock_timeout}")
        if not 1 <= self.retry.attempts <= 100:
            raise UsageError(f"--max-attempts must be from 1 to 100, not {self.retry.attempts}")
        if self.keep_runs is not None and not 1 <= self.keep_runs <= 1_000_000_000:
            raise UsageError(f"--keep-runs must be from 1 to 1,000,000,000, not {self.keep_runs}")
        check_warehouse_name(Path(self.warehouse))
        check_warehouse_file(Path(self.warehouse))
        check_settings(self.warehouse_config)
        self.check_outputs(steps)

    def check_outputs(self, steps) -> None:
        """What ``steps`` write is neither the warehouse nor one of its files (the export or the
        page renamed over it replaced the database), nor each other (the page replaced the export),
        nor a FIFO or a device (the rename replaced it with a regular file)."""
        warehouse = Path(self.warehouse)
        if "export" in steps:
            check_not_warehouse(Path(self.output), warehouse)
            check_replaceable(Path(self.output))
        if "build" in steps and self.docs:
            page = docs_path(self)
            check_not_warehouse(page, warehouse, "the data docs page")
            check_replaceable(page, "the data docs page")
            if "export" in steps and same_file(Path(self.output), page):
                shown = "" if str(page) == str(self.output) else f" ({page})"
                raise UsageError(f"--output {self.output} is where the run writes the data docs page{shown}: "
                                 "the page would replace the export; give another path")

    @property
    def warehouse_config(self) -> WarehouseConfig:
        return WarehouseConfig(Path(self.warehouse), self.storage_version, self.threads, self.memory_limit, self.lock_timeout)

    @property
    def safe_base_url(self) -> str:
        return redact(strip_userinfo(self.base_url), *self.secrets)

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """What never appears in a line, a file or the warehouse: the key, and any credential
        in the base URL (``user:password@``, ``?api_key=...``)."""
        return (self.api_key, *url_secrets(self.base_url))


@dataclass
class RunSummary:
    run_id: int | None
    status: str
    metadata: dict = field(default_factory=dict)
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    warnings_logged: set[str] = field(default_factory=set)  # shown on stderr as they happened
    pages: int = 0
    records: int = 0
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    output: str | None = None
    stage_seconds: dict = field(default_factory=dict)
    docs: str | None = None


# -- runs table ------------------------------------------------------------------------------


def _close_dead_runs(con) -> None:
    """Runs still 'running' while we hold the run lock belong to a process that died."""
    con.execute(
        """
        update raw.runs
        set status = 'failed',
            failed_stage = coalesce(failed_stage, 'interrupted'),
            error = 'the process running it died before it finished (killed or crashed)',
            -- when it was last seen at work (not now, when it is found dead): its duration stays true
            finished_at = coalesce(finished_at,
                                   greatest(extracted_at, (select max(fetched_at) from raw.api_pages p
                                                           where p.run_id = runs.run_id)),
                                   started_at),
            pages_landed = (select count(*) from raw.api_pages p where p.run_id = runs.run_id),
            records_landed = (select coalesce(sum(record_count), 0) from raw.api_pages p where p.run_id = runs.run_id)
        where status = 'running'
        """
    )


def _resumable(con):
    """The last run, if it failed (or died) before its extraction completed: (run_id, url, per_page, pages)."""
    return con.execute(
        """
        select run_id, source_url, per_page,
               (select count(*) from raw.api_pages where api_pages.run_id = runs.run_id) as pages
        from raw.runs
        where status = 'failed' and extracted_at is null
            and run_id = (select max(run_id) from raw.runs)
        """
    ).fetchone()


def _start_run(con, settings: Settings, progress: Progress) -> tuple[int, bool]:
    """A new run id, or the last failed run's when resuming; (run_id, resumed)."""
    row = _resumable(con)
    if row and not settings.resume and row[3]:
        progress.line(f"note: run {row[0]} failed during extraction after landing {row[3]} pages; "
                      "`--resume` would fetch only the pages it is missing")
    if settings.resume and row is None:
        progress.line("note: nothing to resume (the last run did not fail during extraction): starting a new run")
    if settings.resume and row:
        # pages are numbered by per_page and the source: mixing two pagings would lose or repeat records
        if row[1] != settings.safe_base_url or row[2] != settings.per_page:
            raise UsageError(
                f"run {row[0]} was fetched from {row[1]} with --per-page {row[2]}; resume it with the same "
                "--base-url and --per-page, or start a new run without --resume"
            )
        con.execute(
            """
            update raw.runs
            set status = 'running', failed_stage = null, error = null, finished_at = null,
                resumes = resumes + 1
            where run_id = ?
            """,
            [row[0]],
        )
        return row[0], True
    run_id = con.execute("select coalesce(max(run_id), 0) + 1 from raw.runs").fetchone()[0]
    con.execute(
        """
        insert into raw.runs (run_id, started_at, status, source_url, per_page, concurrency, resumes)
        values (?, ?, 'running', ?, ?, ?, 0)
        """,
        [run_id, utcnow(), settings.safe_base_url, settings.per_page, settings.concurrency],
    )
    return run_id, False


def _extracted_not_built(con) -> tuple[int | None, bool]:
    """The run a build publishes (the latest extracted one) if it has not succeeded: only
    extracted, or failed after its extraction (a data test, the export, a kill); (None, False) if
    it succeeded. And whether its rows are published already (a run killed after its commit):
    then a failing build leaves its row as it is, since the marts still describe it."""
    row = con.execute(
        """
        select run_id,
               run_id in (select run_id from meta.published_models where run_id is not null) as published
        from raw.runs
        where status in ('extracted', 'failed')
          and run_id = (select max(run_id) from raw.runs where extracted_at is not null)
        """
    ).fetchone()
    return (row[0], bool(row[1])) if row else (None, False)


def _fail_run(con, run_id: int, stage: str, error: str) -> None:
    # what it landed is counted too: a run that failed while extracting never got to count it
    with contextlib.suppress(Exception):
        con.execute(
            """
            update raw.runs
            set status = 'failed', failed_stage = $stage, error = $error, finished_at = $at,
                pages_landed = (select count(*) from raw.api_pages where run_id = $run),
                records_landed = (select coalesce(sum(record_count), 0) from raw.api_pages where run_id = $run)
            where run_id = $run
            """,
            {"stage": stage, "error": error[:1000], "at": utcnow(), "run": run_id},
        )


def _checkpoint_failed(exc: BaseException, warehouse, run_id: int | None, steps: tuple, exported: bool) -> str:
    """A checkpoint DuckDB could not write (a full disk): the commit is safe in the WAL, which
    DuckDB applies when the file is next opened; DuckDB's own words say why."""
    reason = first_line(exc)
    for prefix in ("FATAL Error: ", "Failed to create checkpoint because of error: ", "IO Error: "):
        reason = reason.removeprefix(prefix)
    if run_id is not None and "build" in steps:
        what = f"run {run_id} was published, but DuckDB could not write it into"
    elif run_id is not None and "extract" in steps:
        what = f"run {run_id}'s pages were landed, but DuckDB could not write them into"
    else:  # `export` alone: what it recorded
        what = "DuckDB could not write what this command committed into"
    export = ("the export is written" if exported else "the last export is unchanged") if "export" in steps else ""
    return (f"{what} {warehouse} ({reason[:200]}); it is kept in {warehouse}.wal, which DuckDB applies "
            "when the warehouse next opens with room to write" + (f"; {export}" if export else ""))


# -- steps -------------------------------------------------------------------------------------


def _client(settings: Settings) -> ApiClient:
    throttle = Throttle(settings.concurrency, max_requests=settings.max_requests_per_minute,
                        window=settings.rate_window)
    return ApiClient(settings.base_url, settings.per_page, settings.api_key, settings.retry, throttle)


def _extract(con, run_id: int, settings: Settings, progress: Progress, summary: RunSummary,
             client: ApiClient, first_page=None, on_landed=None) -> None:
    stats = client.stats
    progress.stats = stats
    counts = "requests = coalesce(requests, 0) + $requests, retries = coalesce(retries, 0) + $retries, " \
             "throttled = coalesce(throttled, 0) + $throttled"

    def counted() -> dict:
        return {"requests": stats.requests, "retries": stats.retries, "throttled": stats.throttled, "run": run_id}

    try:
        result = extract_run(con, run_id, client, settings.concurrency, progress, first_page=first_page,
                             on_landed=on_landed)
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # what the failed run asked of the API still counts
            con.execute(f"update raw.runs set {counts} where run_id = $run", counted())
        raise
    finally:
        client.close()
        progress.done()
        summary.requests, summary.retries = stats.requests, stats.retries
    con.execute(
        f"""
        update raw.runs
        set {counts}, extracted_at = $at, reported_total = $total, pages_expected = $expected,
            pages_landed = (select count(*) from raw.api_pages where run_id = $run),
            records_landed = (select coalesce(sum(record_count), 0) from raw.api_pages where run_id = $run)
        where run_id = $run
        """,
        {**counted(), "at": utcnow(), "total": result.reported_total, "expected": result.pages_expected},
    )
    summary.pages, summary.records = result.pages_landed, result.records_landed
    summary.warnings.extend(result.warnings)
    summary.warnings_logged.update(result.warnings)  # ExtractResult.warn logs each as it happens
    if result.reported_total is not None and result.records_landed != result.reported_total:
        summary.warnings.append(
            f"the API reported {result.reported_total} records but {result.records_landed} were received"
        )


def _prune(con, keep_runs: int) -> int:
    """Delete the pages of runs older than the last ``keep_runs`` whose extraction completed (a
    run that failed halfway does not take one of the places: its pages are no sync's)."""
    cutoff = con.execute(
        """
        select coalesce(min(run_id), 0)
        from (select run_id from raw.runs where extracted_at is not null order by run_id desc limit ?)
        """,
        [keep_runs],
    ).fetchone()[0]
    deleted = con.execute("select count(*) from raw.api_pages where run_id < ?", [cutoff]).fetchone()[0]
    if deleted:
        con.execute("delete from raw.api_pages where run_id < ?", [cutoff])
    return deleted


def run(settings: Settings, steps=("extract", "build", "export"), progress: Progress | None = None) -> RunSummary:
    """Run the given steps under the warehouse's run lock; raise PipelineError on failure."""
    settings.validate(steps)
    if "extract" not in steps:  # build or export alone: of a warehouse a run made
        require_warehouse(Path(settings.warehouse))
    if "export" in steps:
        export_mod.check_output_path(Path(settings.output))
    return _Run(settings, tuple(steps), progress or Progress(quiet=settings.quiet)).run()


class _Run:
    """One invocation of the steps: extract -> build (test, publish) -> finish (checkpoint,
    export, docs, the run's final row). Each step marks the run failed with its name, and
    re-raises; ``run()`` holds the lock and closes everything, whatever happens."""

    def __init__(self, settings: Settings, steps: tuple, progress: Progress):
        self.settings, self.steps, self.progress = settings, steps, progress
        self.summary = RunSummary(run_id=None, status="running")
        self.run_id: int | None = None
        self.published_before = False  # `build` alone, of a run whose rows the marts already hold
        self.completed = False  # the run's final row is written
        self.client = self.first_page = self.stager = self.prepared = self.project = self.con = None
        self.runner: Runner | None = None

    def _fail(self, stage: str, exc: BaseException) -> None:
        if self.run_id is not None and not self.published_before:
            _fail_run(self.con, self.run_id, stage, redact(str(exc), *self.settings.secrets) or exc.__class__.__name__)

    def run(self) -> RunSummary:
        try:
            return self._run()
        except BaseException as exc:
            stop = as_interrupt(exc)
            if isinstance(stop, KeyboardInterrupt) and self.completed and not hasattr(stop, "published_run"):
                # a stop after the run's final row was written (the docs page, closing): it is done
                stop.published_run, stop.exported, stop.completed = self.run_id, True, True
            if stop is not exc:
                raise stop from None
            raise
        finally:
            forget_deferred()  # held back and never raised: it does not outlive this run

    def _stopped_after_publish(self, exc: BaseException) -> BaseException:
        """``exc``; a stop that came between the build's commit and what ``_finish`` handles
        (the build's last lines, the call) is a stop of a published run, recorded and told so."""
        stop = as_interrupt(exc)
        committed = self.runner is not None and self.runner.committed
        if isinstance(stop, KeyboardInterrupt) and committed and not self.completed \
                and not hasattr(stop, "published_run"):
            self._fail("export" if "export" in self.steps else "checkpoint", stop)
            # `build` alone of the published run has no run of its own: the runner names it
            stop.published_run, stop.exported = self.runner.run_id, False
        return stop

    def _run(self) -> RunSummary:
        started = time.monotonic()
        settings, steps = self.settings, self.steps
        lock = RunLock(Path(settings.warehouse)).acquire(" ".join(steps))
        try:
            if lock.stale_holder:
                self.progress.line(f"note: cleared a stale run lock ({lock.stale_holder}); that process is gone")
            loading = self._start_early()
            self.con = connect(settings.warehouse_config)
            try:
                self._open(loading)
                if "extract" in steps:
                    self._extract()
                elif "build" in steps:
                    # `build` after `extract`: the build completes the run it publishes, as `run` would
                    # (its status, its meta rows); a run built before stays as it was, even if this fails
                    self.run_id, self.published_before = _extracted_not_built(self.con)
                try:
                    if "build" in steps:
                        self._build()
                    self._finish()
                except BaseException as exc:
                    stop = self._stopped_after_publish(exc)
                    if stop is not exc:
                        raise stop from None
                    raise
            finally:
                if self.prepared is not None:
                    self.prepared.discard()  # a run that failed after writing it: the last export stays
                if self.stager is not None:
                    self.stager.close()
                self.con.close()
        finally:
            if self.client is not None:
                self.client.cancel()  # a failure before the extraction used page 1: stop fetching it
                self.client.close()
            lock.release()
        if self.summary.status == "running":
            self.summary.status = "succeeded"
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _start_early(self):
        """What can start before the warehouse is open; returns the project's loading future.

        Page 1 says how many pages there are, so it is asked for while DuckDB opens the
        warehouse (~30 ms, most of it DuckDB's start-up). Not when the file is known not to
        open at once (locked by another process, or too small to be a database): those runs
        fail or wait without a request, and ask once it is open. One the check cannot see (a
        damaged database), or a broken sql/ folder (the models load while DuckDB opens), costs
        that one request; the client is cancelled when the run fails. A resumed run may have
        landed page 1 already: extract_run asks if it needs it.
        """
        settings, steps = self.settings, self.steps
        self.prefetch = "extract" in steps and not settings.resume
        if "extract" in steps:
            self.client = _client(settings)
        if self.prefetch and opens_without_waiting(Path(settings.warehouse)):
            self.first_page = prefetch_first_page(self.client)
        # the models are read and rendered (Jinja) on a thread while DuckDB opens the warehouse:
        # both take a while, and DuckDB's start-up does not hold the GIL
        return in_thread("load-project", Project, settings.sql_dir) \
            if ("build" in steps or "export" in steps) else None

    def _open(self, loading) -> None:
        if self.prefetch and self.first_page is None:
            self.first_page = prefetch_first_page(self.client)
        self.project = loading.result() if loading is not None else None
        ensure_schema(self.con)
        if "export" in self.steps and "build" not in self.steps:
            _require_published(self.con, self.project, Path(self.settings.warehouse))
        _close_dead_runs(self.con)

    def _extract(self) -> None:
        settings, con = self.settings, self.con
        self.run_id, resumed = _start_run(con, settings, self.progress)
        self.summary.run_id = self.run_id
        self.progress.line(f"run {self.run_id}: {'resuming' if resumed else 'extracting'} from {settings.safe_base_url}")
        stage_started = time.monotonic()
        try:
            if not resumed and self.run_id % COMPACT_EVERY == 0:
                compact_bookkeeping(con)  # ~25 ms every few runs, or the file grows ~1 MiB a run
            if "build" in self.steps:  # staging models that go page by page are built as pages land
                self.stager = PageStager(con, self.project, self.run_id)
            _extract(con, self.run_id, settings, self.progress, self.summary, self.client, self.first_page,
                     on_landed=self.stager.landed if self.stager is not None else None)
        except BaseException as exc:
            stop = as_interrupt(exc)
            self._fail("extract", stop)
            if stop is not exc:
                raise stop from None
            raise
        if self.stager is not None:
            self.stager.landed_all()  # its last batch is staged while the run is marked extracted
        self.summary.stage_seconds["extract"] = time.monotonic() - stage_started
        crash_point("after-extract")
        if settings.keep_runs:
            _prune(con, settings.keep_runs)

    def _build(self) -> None:
        settings, con, project, summary = self.settings, self.con, self.project, self.summary
        stage_started = time.monotonic()
        if self.stager is None:  # rows a killed run staged while landing are of no use now
            drop_landing_tables(con, by_page_models(project))
        self.progress.line("build: models and data tests")
        self.writing_export = False
        self.runner = Runner(con, project, self.run_id, log=self.progress.line,
                             staged=_staged_tables(self.stager, self.progress) if self.stager else None)
        try:
            result = self.runner.build_and_publish(
                force=settings.full_refresh, before_commit=self._write_export if "export" in self.steps else None)
        except BaseException as exc:
            stop = as_interrupt(exc)
            if self.runner.committed:  # published: _run says so (_stopped_after_publish)
                raise
            self._fail("export" if self.writing_export else "build", stop)
            if stop is not exc:
                raise stop from None
            raise
        if self.stager is not None:  # a landing table the build did not publish goes before the checkpoint
            self.stager.close()
        summary.built, summary.skipped = result.built, result.skipped
        summary.run_id = summary.run_id or result.input_run_id
        summary.stage_seconds["build"] = time.monotonic() - stage_started

    def _write_export(self) -> None:
        """Just before the build commits: an export that cannot be written must publish nothing.
        The folder is probed again (it may have gone since the start); a disk short of space
        gets the export now, inside the transaction, and one with room after the commit, beside
        the checkpoint (export.short_of_space says why)."""
        self.writing_export, started = True, time.monotonic()
        output = Path(self.settings.output)
        export_mod.check_output_path(output)
        if export_mod.short_of_space(self.con, self.project, output, Path(self.settings.warehouse)):
            self.prepared = export_mod.prepare(self.con, self.project, output)
            self.summary.stage_seconds["export"] = time.monotonic() - started
        self.writing_export = False

    def _finish(self) -> None:
        """After the publish, the checkpoint writes the run into the file while, on a cursor of its
        own, the export is written (or, if written before the commit, renamed into place) and the
        docs page rendered: DuckDB lets readers run beside a checkpoint (not writers), and on two
        cores they overlap where one after the other they added up. The page shows the run's
        final status, the row written next, and is put in place only once that row is committed."""
        settings, steps, con, summary, run_id = self.settings, self.steps, self.con, self.summary, self.run_id
        final = {"run_id": run_id, "status": "succeeded" if "build" in steps else "extracted",
                 "finished_at": None, "customers_exported": None, "export_path": None}
        wants_docs = "build" in steps and settings.docs
        finishing = None
        failed_stage = "checkpoint"
        try:
            raise_deferred()  # Ctrl-C during the commit: the run is published, nothing more is done
            if "export" in steps or wants_docs:
                prepared = self.prepared
                finishing = _CursorJob(con, "finish", lambda cursor, stopping: _export_and_render(
                    cursor, stopping, self.project, settings, "export" in steps, wants_docs,
                    final if run_id is not None else None, summary, prepared))
            try:
                con.execute("checkpoint")
            except duckdb.TransactionException:
                if finishing is None:
                    raise
                finishing.wait()  # a DuckDB that will not checkpoint beside a reader: one after the other
                con.execute("checkpoint")
            if finishing is not None:
                finishing.wait()
                if finishing.error is not None:
                    failed_stage = "export"
                    raise finishing.error
        except BaseException as exc:  # the export failed, or the checkpoint, or Ctrl-C
            stop = as_interrupt(exc)  # Ctrl-C inside the checkpoint reaches here as DuckDB's RuntimeError
            if finishing is not None:
                finishing.stop()
            exported = final["finished_at"] is not None  # set once the export is written
            if run_id is not None and isinstance(stop, KeyboardInterrupt) and exported:
                with contextlib.suppress(Exception):  # only the docs page was left: the run is done
                    _record_final(con, final)
            else:
                if isinstance(stop, KeyboardInterrupt) and "export" in steps:
                    failed_stage = "export"  # Ctrl-C: the export is what had not finished
                self._fail(failed_stage, stop)
            if isinstance(stop, duckdb.Error) and failed_stage == "checkpoint":
                raise WarehouseError(_checkpoint_failed(stop, settings.warehouse, run_id, steps, exported)) from None
            if run_id is not None and "build" in steps:
                # the build committed: say so, rather than that nothing changed
                stop.published_run, stop.exported = run_id, exported
                if isinstance(stop, PipelineError) and "export" in steps and not exported:
                    raise export_mod.ExportError(f"{stop}; run {run_id} was published before the export failed, and the "
                                                 "last export is unchanged: `python pipeline.py export` writes it") from None
            if stop is not exc:
                raise stop from None
            raise
        page = None
        if finishing is not None:
            summary.metadata, page = finishing.result
            if "export" in steps:
                summary.output = str(settings.output)
                crash_point("after-export")
        if run_id is not None:
            final["finished_at"] = final["finished_at"] or utcnow()
            _record_final(con, final)
            self.completed = True
            summary.status = final["status"]  # `extract` alone: "extracted"
        elif "export" in steps and summary.metadata.get("run_id") is not None:
            # `export` alone: the run it describes (the published one) now has its export; if it
            # failed after its publish (the export, a kill), nothing of it is missing any more
            con.execute(
                """
                update raw.runs
                set customers_exported = ?, export_path = ?,
                    failed_stage = case when status = 'failed' then null else failed_stage end,
                    error = case when status = 'failed' then null else error end,
                    status = case when status = 'failed' then 'succeeded' else status end
                where run_id = ?
                """,
                [summary.metadata.get("total_customers"), str(settings.output), summary.metadata["run_id"]])
        if page is not None:
            from .docs import write_page

            try:
                summary.docs = str(write_page(page, docs_path(settings)))
            except (OSError, PipelineError) as exc:  # e.g. a FIFO made there since the run's start
                summary.warnings.append(f"data docs not written: {getattr(exc, 'strerror', None) or exc}")


def docs_path(settings: Settings) -> Path:
    return Path(settings.docs_output) if settings.docs_output else default_docs_path(Path(settings.warehouse))


class _CursorJob(threading.Thread):
    """``work(cursor, stopping)`` on its own cursor of ``con``, in a thread: ``result``, ``error``.
    ``stopping`` is an Event that ``stop()`` sets, for the work to give up at its
    next safe point (its running query is interrupted too).

    ``done`` is set when the work has ended and its cursor is closed. The waits below use it
    rather than ``Thread.join``, which a Ctrl-C landing inside it can leave believing a
    still-running thread has finished (CPython 3.11).
    """

    def __init__(self, con, name: str, work):
        super().__init__(name=name, daemon=True)
        self.cursor = con.cursor()
        self.cursor.execute("set TimeZone = 'UTC'")  # a cursor does not inherit the connection's settings
        self.work = work
        self.result = self.error = None
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            self.result = self.work(self.cursor, self.stopping)
        except BaseException as exc:  # handed to the main thread by wait()
            self.error = exc
        finally:
            self.cursor.close()
            self.done.set()

    def wait(self) -> None:
        """Wait for the work; interrupted (Ctrl-C), stop it first, so the connection can close."""
        try:
            while not self.done.wait(0.1):
                pass
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the work and wait until it has ended: nothing runs on after the caller returns."""
        self.stopping.set()
        with contextlib.suppress(Exception):
            self.cursor.interrupt()
        self.done.wait()


def _staged_tables(stager: PageStager, progress: Progress):
    """For the runner: the tables staged while the pages landed, once the last batch is in."""

    def staged() -> dict[str, str]:
        tables = stager.finish()
        if stager.error is not None:
            progress.line(f"  note: pages were not staged while landing ({stager.error}); the build stages the run")
        return tables

    return staged


def _require_published(con, project: Project, path: Path) -> None:
    """``export`` alone reads the published marts: none yet is one line, not a catalog error."""
    needed = {project.models[name].relation for query in project.queries.values() for name in query.refs}
    present = {f"{schema}.{name}" for schema, name in con.execute(
        """
        select schema_name, table_name from duckdb_tables() where database_name = current_database()
        union all
        select schema_name, view_name from duckdb_views() where database_name = current_database()
        """).fetchall()}
    if not needed <= present:
        raise WarehouseError(f"nothing is published in {path} yet: run `python pipeline.py build` "
                             "(or `run`) first")


def _record_final(con, final: dict) -> None:
    # failed_stage and error cleared: a run that failed after its extraction may be built later
    con.execute(
        """
        update raw.runs
        set status = ?, finished_at = ?, customers_exported = coalesce(?, customers_exported),
            export_path = coalesce(?, export_path), failed_stage = null, error = null
        where run_id = ?
        """,
        [final["status"], final["finished_at"], final["customers_exported"], final["export_path"], final["run_id"]],
    )


def _export_and_render(cursor, stopping, project, settings: Settings, exporting: bool, wants_docs: bool,
                       final: dict | None, summary: RunSummary,
                       prepared: export_mod.PreparedExport | None = None) -> tuple[dict, str | None]:
    """The export (if asked for), then the docs page (if wanted): (the export's metadata, the page).
    ``prepared``: the export the build wrote before its commit, put in place here; without
    one (``export`` alone), it is written now. ``final``: the run's status row, filled in here
    and written by the caller; the page shows it."""
    from .docs import render_docs

    metadata = {}
    if exporting and prepared is not None:
        metadata = prepared.publish(stopping)
    elif exporting:
        started = time.monotonic()
        metadata = export_mod.export(cursor, project, Path(settings.output), stopping)
        summary.stage_seconds["export"] = time.monotonic() - started
    if final is not None:
        final.update(finished_at=utcnow(), customers_exported=metadata.get("total_customers"),
                     export_path=str(settings.output) if exporting else None)
    if not wants_docs or stopping.is_set():
        return metadata, None
    try:
        return metadata, render_docs(cursor, project, final)
    except Exception as exc:  # the run itself succeeded: a page that cannot be made is a warning
        summary.warnings.append(f"data docs not written: {str(exc).splitlines()[0] if str(exc) else exc!r}")
        return metadata, None


def write_docs_only(settings: Settings) -> Path:
    """``pipeline.py docs``: the page from the warehouse as it is (read-only)."""
    from .docs import write_docs

    what = "--output" if settings.docs_output else "the data docs page"
    check_not_warehouse(docs_path(settings), Path(settings.warehouse), what)
    check_replaceable(docs_path(settings), what)
    project = Project(settings.sql_dir)
    con = connect(settings.warehouse_config, read_only=True)
    try:
        return write_docs(con, project, docs_path(settings))
    except OSError as exc:
        raise PipelineError(f"cannot write the data docs to {docs_path(settings)}: {exc.strerror or exc}") from None
    finally:
        con.close()


def run_tests_only(settings: Settings) -> list:
    """Run the data tests against the published models (no build, no publish)."""
    check_settings(settings.warehouse_config)
    project = Project(settings.sql_dir)
    require_warehouse(Path(settings.warehouse))
    con = connect(settings.warehouse_config)
    try:
        ensure_schema(con)
        return Runner(con, project, None).run_tests()
    finally:
        con.close()


def status(settings: Settings, limit: int = 5) -> dict:
    """What is in the warehouse: last runs, models (current vs built version), last tests."""
    con = connect(settings.warehouse_config, read_only=True)
    try:
        runs = fetch_dicts(con,
            """
            select run_id, status, started_at, finished_at, failed_stage, error,
                   -- a run that died before counting what it landed: counted now
                   coalesce(pages_landed, (select count(*) from raw.api_pages p where p.run_id = runs.run_id))
                       as pages_landed,
                   coalesce(records_landed, (select sum(record_count) from raw.api_pages p
                                             where p.run_id = runs.run_id)::bigint, 0) as records_landed,
                   requests, retries, customers_exported, export_path
            from raw.runs order by run_id desc limit ?
            """,
            [limit],
        )
        # this read-only connection opened, so no run has the file open: a run still 'running'
        # is one whose process died (the next run marks it failed)
        for run in runs:
            run["stale"] = run["status"] == "running"
        published = {
            row[0]: row[1:]
            for row in con.execute(
                "select model, version, rows, published_at, run_id from meta.published_models"
            ).fetchall()
        }
        tests = fetch_dicts(con,
            """
            select test, failing_rows, status, tested_at from meta.test_results
            where tested_at = (select max(tested_at) from meta.test_results)
            order by test
            """
        )
    except Exception as exc:  # an older or foreign file without our tables
        raise PipelineError(f"{settings.warehouse} has no pipeline tables yet ({str(exc).splitlines()[0]})") from None
    finally:
        con.close()
    models = []
    try:
        project = Project(settings.sql_dir)
        for model in project.order:
            built = published.get(model.name)
            models.append(
                {
                    "model": model.relation,
                    "current_version": model.version,
                    "built_version": built[0] if built else None,
                    "rows": built[1] if built else None,
                    "changed": (built is None) or built[0] != model.version,
                }
            )
    except PipelineError as exc:
        models.append({"error": str(exc)})
    return {"runs": runs, "models": models, "tests": tests}
