"""Staging while landing: ``incremental: by_page`` models are built as a run's pages land.

A by_page model (``stg_reqres__users``) makes each raw page into rows without looking at any
other page, so it need not wait for the last one. While the extraction lands pages, a
thread of its own runs the model's SQL over each newly landed batch (``Project.batch_sql``,
the same template with ``source()`` narrowed to the batch) and appends the rows to
``<schema>.<model>__landing`` through a cursor of its own. DuckDB does that work outside
the GIL, so the threads that fetch pages do not wait for it. The build then publishes that
table under the model's name (a rename inside the build's transaction, so write-audit-publish
holds), instead of parsing every page again after the last one arrives.

Only a table that holds every landed page of the run, each staged once, is handed to the
build; anything else (a batch that failed, an interrupted run) and the build runs the
model over the whole run, as it always can. The data tests check the result either way
(``dim_customers__reconciles_with_raw``: every landed record reaches staging).
"""

from __future__ import annotations

import contextlib
import threading

import duckdb

from extract.errors import first_line

from .project import Model, Project
from .warehouse import sql_literal

LANDING_SUFFIX = "__landing"


def landing_table(model: Model) -> str:
    return f"{model.schema}.{model.name}{LANDING_SUFFIX}"


def by_page_models(project: Project) -> list[Model]:
    return [model for model in project.order if model.incremental == "by_page"]


def drop_landing_tables(con: duckdb.DuckDBPyConnection, models: list[Model]) -> None:
    """Drop the landing tables of ``models`` (a killed run's leftovers, or what a build did not publish)."""
    for model in models:
        con.execute(f"drop table if exists {landing_table(model)}")


class PageStager:
    """Stages one run's landed pages into the landing tables of the project's by_page models.

    ``landed(pages)`` after each landing commit; ``landed_all()`` when the extraction is over;
    ``finish()`` before the build (it waits for the last batch and says which tables are
    complete); ``close()`` always, last: it stops the thread and drops a landing table that
    the build did not publish.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, project: Project, run_id: int):
        self.run_id = run_id
        self.models = by_page_models(project)
        self._sql = {model.name: project.batch_sql(model) for model in self.models}
        self._cursor = con.cursor() if self.models else None
        if self._cursor is not None:  # a cursor does not inherit the connection's settings
            self._cursor.execute("set TimeZone = 'UTC'")
        self._pending: list[int] = []
        self._staged: set[int] = set()
        self._changed = threading.Condition()
        self._closing = False
        self._done = threading.Event()
        self.error: str | None = None
        if self.models:
            threading.Thread(target=self._run, name="stage-pages", daemon=True).start()
        else:
            self._done.set()

    def landed(self, pages: list[int]) -> None:
        """Pages of the run just committed to ``raw.api_pages``."""
        if self.models and pages:
            with self._changed:
                self._pending.extend(pages)
                self._changed.notify()

    def _run(self) -> None:
        try:
            # pages the run landed before this process (a resumed run) are the first batch;
            # the first batch also (re)creates the tables, empty if need be
            batch = self._cursor.execute(
                "select coalesce(list(page), []) from raw.api_pages where run_id = ?", [self.run_id]
            ).fetchall()[0][0]
            self._stage(batch, create=True)
            while True:
                with self._changed:
                    # whatever landed while the last batch was staged: batches grow when DuckDB
                    # is busy, and the last one is small when the extraction ends
                    while not self._pending and not self._closing:
                        self._changed.wait()
                    batch, self._pending = self._pending, []
                    # a page landed as the first batch was read can be announced after it
                    batch = [page for page in batch if page not in self._staged]
                if not batch:
                    if self._closing:
                        return
                    continue
                self._stage(batch, create=False)
        except Exception as exc:  # the build stages the run itself; the error is kept for the log
            self.error = first_line(exc)
        finally:
            self._done.set()

    def _stage(self, pages: list[int], create: bool) -> None:
        params = {"run_id": self.run_id, "pages": pages}
        for model in self.models:
            table = landing_table(model)
            if create:
                self._cursor.execute(f"create or replace table {table} as {self._sql[model.name]}", params)
                columns = [d[0] for d in self._cursor.execute(f"select * from {table} limit 0").description]
                # the model's column comments now, while the pages land, not in the build: the
                # rename that publishes the table keeps them (the build sets the table's own)
                self._cursor.execute(";\n".join([
                    f"comment on table {table} is "
                    + sql_literal(f"Rows of run {self.run_id} staged while its pages land; the run's build "
                                  f"publishes them as {model.relation}. Not for analysis."),
                    *model.column_comments(table, columns),
                ]))
            else:
                self._cursor.execute(f"insert into {table} {self._sql[model.name]}", params)
        self._staged.update(pages)

    def landed_all(self) -> None:
        """The extraction is over: the thread stages what is left, then ends."""
        with self._changed:
            self._closing = True
            self._changed.notify()

    def finish(self) -> dict[str, str]:
        """After the extraction: stage the last pages, then the landing table of each model that
        holds every page the run landed, each once (model name -> table); {} if none does."""
        if not self.models:
            return {}
        self.landed_all()
        while not self._done.wait(0.1):  # not Thread.join: a Ctrl-C must be able to land here
            pass
        if self.error is not None:
            return {}
        landed = self._cursor.execute(  # fetchall: a result left half-read keeps its transaction open,
            # and DuckDB will not checkpoint beside it
            "select coalesce(list(page order by page), []) from raw.api_pages where run_id = ?", [self.run_id]
        ).fetchall()[0][0]
        if landed != sorted(self._staged):
            return {}
        return {model.name: landing_table(model) for model in self.models}

    def close(self) -> None:
        """Stop staging (a running batch is interrupted) and drop what the build did not publish."""
        if self._cursor is None:
            return
        with self._changed:
            self._closing = True
            self._pending = []
            self._changed.notify()
        if not self._done.is_set():
            with contextlib.suppress(Exception):
                self._cursor.interrupt()
            self._done.wait()
        with contextlib.suppress(duckdb.Error):
            drop_landing_tables(self._cursor, self.models)
        with contextlib.suppress(duckdb.Error):
            self._cursor.close()
        self._cursor = None
