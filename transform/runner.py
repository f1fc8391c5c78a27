"""Build, test, publish (write-audit-publish) in one DuckDB transaction.

Every model is (re)built inside a single transaction, the data tests run against those
new relations inside the same transaction, and only when every test returns zero rows is
the transaction committed: that commit is the publish. A failing model or test rolls
the transaction back, so readers (and the export) keep seeing exactly the last good
tables; DuckDB's WAL makes the same true for a process killed halfway.

A model whose version (rendered SQL + parents' versions) and inputs (the raw run it
reads) match what is published is skipped and logged as such.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import duckdb

from extract.crashpoints import crash_point
from extract.errors import DataTestError, ModelError, first_line, raise_deferred, signals_deferred

from .project import Model, Project
from .warehouse import sql_literal, utcnow

# The data a source-reading model depends on, as a content hash (header ``-- inputs:``):
# a re-run that lands byte-identical pages changes nothing a ``latest_run`` model reads.
SOURCE_STATES = """
    select
        coalesce({{ latest_extracted_run() }}, 0) as run_id,
        (
            select coalesce(md5(string_agg(body_md5, ',' order by page)), 'empty')
            from {{ source('raw', 'api_pages') }}
            where run_id = {{ latest_extracted_run() }}
        ) as latest_run,
        (
            select coalesce(md5(string_agg(run_id || ':' || body_md5, ',' order by run_id, page)), 'empty')
            from {{ source('raw', 'api_pages') }}
            where run_id in (select run_id from {{ source('raw', 'runs') }} where extracted_at is not null)
        ) as all_runs
"""


@dataclass
class ModelResult:
    model: str
    relation: str
    version: str
    status: str  # built | skipped
    rows: int | None
    seconds: float
    how: str = ""  # how it was built, when not from scratch (for the log)


@dataclass
class TestResult:
    test: str
    failing_rows: int
    status: str  # pass | fail
    seconds: float
    sample: list = field(default_factory=list)


@dataclass
class BuildResult:
    models: list[ModelResult]
    tests: list[TestResult]
    input_run_id: int

    @property
    def built(self) -> list[str]:
        return [m.model for m in self.models if m.status == "built"]

    @property
    def skipped(self) -> list[str]:
        return [m.model for m in self.models if m.status == "skipped"]


def _relation_kinds(con) -> dict[tuple[str, str], str]:
    """(schema, name) -> 'table' or 'view', for every relation of the warehouse, in one query."""
    rows = con.execute(
        """
        select schema_name, table_name, 'table' from duckdb_tables() where database_name = current_database()
        union all
        select schema_name, view_name, 'view' from duckdb_views()
        where database_name = current_database() and not internal
        """
    ).fetchall()
    return {(schema, name): kind for schema, name, kind in rows}


def _published(con) -> dict[str, tuple[str, str]]:
    rows = con.execute("select model, version, input_state from meta.published_models").fetchall()
    return {model: (version, state) for model, version, state in rows}


def _error_line(project: Project, model_path, exc: Exception) -> str:
    message = str(exc).strip()
    first = message.splitlines()[0] if message else exc.__class__.__name__
    line = re.search(r"LINE (\d+):", message)
    where = project.rel(model_path) + (f":{line[1]}" if line else "")
    return f"{where}: {first}"


class Runner:
    def __init__(self, con: duckdb.DuckDBPyConnection, project: Project, run_id: int | None, log=print,
                 staged: Callable[[], dict[str, str]] | None = None):
        self.con = con
        self.project = project
        self.run_id = run_id
        self.log = log
        # returns model name -> a table that already holds the model's rows for run_id, staged
        # while its pages landed (transform.incremental.PageStager.finish), published by renaming
        # it. Asked just before the build's transaction begins (its last batch overlaps the
        # change detection), never inside it: the transaction would not see what the stager
        # commits after its start.
        self._staged = staged
        self.committed = False  # the build's transaction is committed: what it built is published

    def _source_states(self) -> dict:
        """The latest extracted run and content hashes of the raw pages models read, in one query."""
        sql, _, _ = self.project.render(SOURCE_STATES, self.project.sql_dir / "macros")
        cursor = self.con.execute(sql)
        return dict(zip([d[0] for d in cursor.description], cursor.fetchone()))

    def _input_states(self, sources: dict) -> dict[str, str]:
        """Per model: a hash of the raw data it reads, directly or through its parents."""
        states: dict[str, str] = {}
        for model in self.project.order:
            parts = [f"{model.inputs}={sources[model.inputs]}"] if model.sources else []
            parts += [states[parent] for parent in sorted(model.refs)]
            states[model.name] = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
        return states

    def _unchanged(self, model: Model, published: dict, states: dict, kinds: dict) -> bool:
        """A view stores no data: only its SQL matters. A table also depends on its inputs."""
        if kinds.get((model.schema, model.name)) != model.materialized:
            return False
        built = published.get(model.name)
        if built is None or built[0] != model.version:
            return False
        return model.materialized == "view" or built[1] == states[model.name]

    # -- build ---------------------------------------------------------------------------

    def build_and_publish(self, force: bool = False, before_commit: Callable[[], None] | None = None) -> BuildResult:
        """Build every model and run the data tests in one transaction; commit (publish) if all pass.

        ``before_commit()``: called inside the transaction once the tests pass (the run writes
        its export there); if it raises, nothing is published.
        """
        sources = self._source_states()
        input_run = sources["run_id"]
        if input_run == 0:
            raise ModelError("nothing to build: no run has landed its pages yet (run `python pipeline.py extract` or `run`)")
        if self.run_id is None:  # `build` alone: the build log names the run it publishes
            self.run_id = input_run
        states = self._input_states(sources)
        published = _published(self.con)
        kinds = _relation_kinds(self.con)
        results: list[ModelResult] = []
        tests: list[TestResult] = []
        building: str | None = None  # the model being built, named as failed if its build raises
        staged = self._staged() if self._staged is not None and input_run == self.run_id else {}
        self.con.execute("begin transaction")
        try:
            for model in self.project.order:
                if not force and self._unchanged(model, published, states, kinds):
                    results.append(ModelResult(model.name, model.relation, model.version, "skipped", None, 0.0))
                    why = "same SQL" if model.materialized == "view" else "same SQL and inputs"
                    self.log(f"  {model.relation}: unchanged (version {model.version}, {why}): skipped")
                    continue
                building = model.name
                existing = kinds.get((model.schema, model.name))
                if model.incremental == "by_run" and not force and existing == "table" \
                        and published.get(model.name, ("",))[0] == model.version:
                    results.append(self._build_by_run(model))
                else:
                    results.append(self._build(model, existing, staged.get(model.name)))
                building = None
                crash_point("mid-build")
                built = results[-1]
                rows = "" if built.rows is None else f", {built.rows:,} rows"
                self.log(f"  {model.relation}: built {model.materialized} "
                         f"(version {model.version}{rows}, {built.seconds:.2f}s{built.how})")
            tests = self.run_tests()
            failing = [t for t in tests if t.status != "pass"]
            if failing:
                raise DataTestError(self._test_failure_message(failing))
            self._record(results, tests, states, "built")
            self._record_quality()
            self._document({m.model for m in results if m.status == "built"}, set(staged))
            if before_commit is not None:
                before_commit()
            crash_point("before-publish")
            with signals_deferred():  # a commit is not cut in two: a stop meanwhile comes after it
                self.con.execute("commit")
                self.committed = True
        except BaseException as exc:
            if self.committed:  # a stop as the commit ended: there is nothing to roll back
                raise
            with signals_deferred():  # nor the rollback
                self.con.execute("rollback")
                self._record_failure(results, tests, states, building, exc)
            raise_deferred()  # a stop during the commit or the rollback: nothing is published, say so
            raise
        return BuildResult(results, tests, input_run)

    def _build(self, model: Model, existing: str | None, staged: str | None = None) -> ModelResult:
        started = time.perf_counter()
        try:
            if staged is not None:  # the rows are there already: the staged table takes the model's name
                if existing:
                    self.con.execute(f"drop {existing} {model.relation}")
                self.con.execute(f"alter table {staged} rename to {model.name}")
                rows = self.con.execute(f"select count(*) from {model.relation}").fetchone()[0]
                return ModelResult(model.name, model.relation, model.version, "built", rows,
                                   time.perf_counter() - started, ", staged while its pages landed")
            if existing and existing != model.materialized:
                self.con.execute(f"drop {existing} {model.relation}")
            created = self.con.execute(f"create or replace {model.materialized} {model.relation} as {model.sql}")
            rows = created.fetchone()[0] if model.materialized == "table" else None  # CTAS answers its row count
        except duckdb.Error as exc:
            raise ModelError(f"model {model.name} failed to build ({_error_line(self.project, model.path, exc)})") from None
        seconds = time.perf_counter() - started
        return ModelResult(model.name, model.relation, model.version, "built", rows, seconds)

    def _build_by_run(self, model: Model) -> ModelResult:
        """An ``incremental: by_run`` table built before under this same version: kept, not rebuilt.

        Each run's rows come from that run's raw pages alone, and a run's pages never change
        once its extraction completed, so the rows of runs the table holds stay right. The
        build drops the rows of runs whose pages are gone (``--keep-runs`` pruned them: a
        rebuild from raw would not have them either) and adds those of the runs it does not
        hold yet (the model's SQL with ``is_incremental()`` true). The result is the table a
        rebuild from raw would give, for the cost of the new runs only, where a rebuild
        parses every earlier run's pages again. ``--full-refresh`` rebuilds it anyway.
        """
        started = time.perf_counter()
        try:
            dropped = self.con.execute(
                f"delete from {model.relation} where run_id not in (select distinct run_id from raw.api_pages)"
            ).fetchone()[0]
            added = self.con.execute(f"insert into {model.relation} by name ({model.incremental_sql})").fetchone()[0]
            rows = self.con.execute(f"select count(*) from {model.relation}").fetchone()[0]
        except duckdb.Error as exc:
            raise ModelError(f"model {model.name} failed to build ({_error_line(self.project, model.path, exc)})") from None
        how = f", incremental: {added:,} rows added" + (f", {dropped:,} of pruned runs dropped" if dropped else "")
        return ModelResult(model.name, model.relation, model.version, "built", rows, time.perf_counter() - started, how)

    # -- tests ---------------------------------------------------------------------------

    def run_tests(self) -> list[TestResult]:
        results = []
        for test in self.project.tests.values():
            started = time.perf_counter()
            try:
                failing = self.con.execute(f"select count(*) from ({test.sql}) as failing").fetchone()[0]
                sample = self.con.execute(f"select * from ({test.sql}) as failing limit 3").fetchall() if failing else []
            except duckdb.Error as exc:
                raise ModelError(f"data test {test.name} could not run ({_error_line(self.project, test.path, exc)})") from None
            results.append(
                TestResult(test.name, failing, "pass" if failing == 0 else "fail", time.perf_counter() - started, sample)
            )
        return results

    @staticmethod
    def _test_failure_message(failing: list[TestResult]) -> str:
        parts = [f"{t.test} ({t.failing_rows} rows, e.g. {t.sample[0] if t.sample else '?'})" for t in failing]
        return "data tests failed, nothing was published: " + "; ".join(parts)

    # -- bookkeeping ---------------------------------------------------------------------

    def _record(self, results, tests, states, status) -> None:
        now = utcnow()
        builds = []
        for result in results:
            model = self.project.models[result.model]
            builds.append([self.run_id, result.model, result.relation, model.materialized, result.version,
                           states[result.model], result.status if status == "built" else status,
                           result.rows, result.seconds, now, None])
        _insert_rows(self.con, "meta.model_builds", builds)
        _insert_rows(self.con, "meta.test_results",
                     [[self.run_id, t.test, t.failing_rows, t.status, t.seconds, now, None] for t in tests])
        if status != "built":
            return
        published = []
        for result in results:
            if result.status != "built":
                continue
            model = self.project.models[result.model]
            published.append([model.name, model.relation, model.materialized, model.version, states[model.name],
                              result.rows, model.version, now, self.run_id])
        if published:
            self.con.execute("delete from meta.published_models where list_contains(?, model)",
                             [[row[0] for row in published]])
            _insert_rows(self.con, "meta.published_models", published)

    def _record_quality(self) -> None:
        """Bucket counts as published, one row per publish: the quality trend over runs."""
        if "customer_quality_summary" not in self.project.models or "dim_customers" not in self.project.models:
            return
        summary = self.project.models["customer_quality_summary"].relation
        customers = self.project.models["dim_customers"].relation
        self.con.execute(
            f"""
            insert into meta.run_quality
            select
                (select max(run_id) from {customers}),
                now(),
                sum(customers),
                sum(customers) filter (where quality_bucket = 'high'),
                sum(customers) filter (where quality_bucket = 'medium'),
                sum(customers) filter (where quality_bucket = 'low'),
                (select avg(data_quality_score) from {customers})
            from {summary}
            """
        )

    def _record_failure(self, results, tests, states, building: str | None, exc) -> None:
        """After a rollback: what was built is rolled_back, the model that raised failed, the rest not_built."""
        try:
            self._record(results, tests, states, "rolled_back")
            error = first_line(exc)[:500]
            attempted = {m.model for m in results}
            now = utcnow()
            _insert_rows(self.con, "meta.model_builds", [
                [self.run_id, model.name, model.relation, model.materialized, model.version, states[model.name],
                 "failed" if model.name == building else "not_built", None, None, now, error]
                for model in self.project.order if model.name not in attempted
            ])
        except duckdb.Error:
            pass  # bookkeeping must never hide the real failure

    def _document(self, rebuilt: set[str], commented: set[str] = frozenset()) -> None:
        """COMMENT ON every rebuilt relation and its columns, so DBeaver and the CLI show them.

        A skipped model keeps its relation, and so its comments (they are part of its SQL, so
        a changed comment is a changed version and a rebuild). ``commented``: models published
        from a staged table whose columns the stager commented already (a rename keeps them).
        All comments go to DuckDB as one script: one round trip, not one per column.
        """
        models = [model for model in self.project.order if model.name in rebuilt]
        if not models:
            return
        existing: dict[str, list[str]] = {}
        for schema, name, column in self.con.execute(
            """
            select schema_name, table_name, column_name from duckdb_columns()
            where database_name = current_database()
            """
        ).fetchall():
            model = self.project.models.get(name)
            if model is not None and model.schema == schema:
                existing.setdefault(name, []).append(column)
        statements = []
        for model in models:
            kind = "view" if model.materialized == "view" else "table"
            text = model.description + (f" Grain: {model.grain}." if model.grain else "") + f" Version {model.version}."
            statements.append(f"comment on {kind} {model.relation} is {sql_literal(text.strip())}")
            if model.name not in commented:
                statements += model.column_comments(model.relation, existing.get(model.name, ()))
        self.con.execute(";\n".join(statements))


def _insert_rows(con, table: str, rows: list[list]) -> None:
    """One INSERT for many rows (parameters, never values pasted into the SQL)."""
    if not rows:
        return
    placeholders = "(" + ", ".join("?" * len(rows[0])) + ")"
    con.execute(f"insert into {table} values " + ", ".join([placeholders] * len(rows)),
                [value for row in rows for value in row])
