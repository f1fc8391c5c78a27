"""The SQL project: model files rendered with Jinja, their dependency graph and versions.

Models are ``sql/<layer>/<name>.sql`` where the folder is the DuckDB schema. Inside,
``{{ ref('name') }}`` resolves to ``schema.name`` and records a dependency;
``{{ source('raw', 'api_pages') }}`` resolves to the raw table. Order comes from
``graphlib.TopologicalSorter``. A model's version is SQLMesh-style: the hash of its
rendered SQL and its parents' versions, so an upstream edit re-versions everything below it.

A model's header comment documents it (shown as DuckDB COMMENTs, so DBeaver shows them):

    -- One line that says what the model is.
    -- grain: one row per customer_id
    -- materialized: table            (or view)
    -- column customer_id: what it means

Two kinds of table are kept up to date instead of rebuilt whole (``-- incremental:``):
``by_page`` (staged batch by batch while a run's pages land, ``transform.incremental``) and
``by_run`` (each run's rows come from that run's raw pages alone: a build adds the rows of
runs it does not hold yet, dbt-style, with ``{% if is_incremental() %}`` and ``{{ this }}``).
"""

from __future__ import annotations

import graphlib
import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from extract.errors import ModelError

from .warehouse import sql_literal

LAYERS = ("staging", "intermediate", "marts")
SOURCES = {("raw", "api_pages"), ("raw", "runs")}
MATERIALIZATIONS = ("table", "view")

_HEADER_KEY = re.compile(r"^--\s*(grain|materialized|inputs|incremental)\s*:\s*(.+?)\s*$", re.IGNORECASE)
INPUTS = ("latest_run", "all_runs")
INCREMENTAL = ("by_page", "by_run")
# What source() reads while a run's pages are staged batch by batch (``incremental: by_page``):
# that run's pages of the batch, and that run as it will read once its extraction completes.
BATCH_SOURCES = {
    ("raw", "api_pages"): "(select * from raw.api_pages where run_id = $run_id and list_contains($pages, page))",
    ("raw", "runs"): "(select * replace (coalesce(extracted_at, now()) as extracted_at) from raw.runs where run_id = $run_id)",
}
_HEADER_COLUMN = re.compile(r"^--\s*column\s+([A-Za-z_][A-Za-z0-9_ /]*?)\s*:\s*(.+?)\s*$", re.IGNORECASE)


@dataclass
class Model:
    name: str
    schema: str
    path: Path
    template: str
    description: str = ""
    grain: str = ""
    materialized: str = "table"
    columns: dict[str, str] = field(default_factory=dict)
    inputs: str = "all_runs"  # which raw data a source-reading model depends on
    incremental: str = ""  # "by_page": each row comes from one raw page alone (see Project.batch_sql);
    # "by_run": each run's rows from that run's pages alone (see Runner._build_by_run)
    sql: str = ""
    incremental_sql: str = ""  # by_run: the SQL with is_incremental() true (the rows of runs not held yet)
    refs: set[str] = field(default_factory=set)
    sources: set[tuple[str, str]] = field(default_factory=set)
    version: str = ""

    def column_comments(self, relation: str, columns) -> list[str]:
        """COMMENT ON COLUMN statements for the documented columns among ``columns``, on ``relation``."""
        present = set(columns)
        return [f'comment on column {relation}."{column}" is {sql_literal(comment)}'
                for column, comment in self.columns.items() if column in present]

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Query:
    """A data test or an export query: rendered like a model, never materialized."""

    name: str
    path: Path
    template: str
    description: str = ""
    sql: str = ""
    refs: set[str] = field(default_factory=set)


def parse_header(text: str) -> tuple[str, str, str, dict[str, str], str, str]:
    """(description, grain, materialized, columns, inputs, incremental) from the leading ``--`` comment block."""
    description_lines: list[str] = []
    grain, materialized, columns, inputs, incremental = "", "table", {}, "all_runs", ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        if match := _HEADER_KEY.match(stripped):
            key, value = match[1].lower(), match[2]
            if key == "grain":
                grain = value
            elif key == "inputs":
                inputs = value.lower()
            elif key == "incremental":
                incremental = value.lower()
            else:
                materialized = value.lower()
        elif match := _HEADER_COLUMN.match(stripped):
            for name in match[1].split("/"):
                columns[name.strip()] = match[2]
        elif not grain and not columns:
            description_lines.append(stripped[2:].strip())
    return " ".join(description_lines), grain, materialized, columns, inputs, incremental


def _hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


ENV_OPTIONS = {"undefined": jinja2.StrictUndefined, "keep_trailing_newline": True}
_ENV_OPTIONS = repr(sorted((k, getattr(v, "__name__", v)) for k, v in ENV_OPTIONS.items())) + jinja2.__version__


class _Texts(jinja2.BaseLoader):
    """Template texts by name: what ``Environment.get_template`` (and so the bytecode cache) needs."""

    def __init__(self):
        self.texts: dict[str, str] = {}

    def get_source(self, environment, name):
        if name not in self.texts:
            raise jinja2.TemplateNotFound(name)
        return self.texts[name], None, lambda: True


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """Jinja's own cache of compiled templates (a private directory under the system's temp
    directory, ``_jinja2-cache-<uid>``); none where it cannot be made safely."""
    try:
        return jinja2.FileSystemBytecodeCache()
    except Exception:
        return None


class Project:
    """Loads, renders, orders and versions the models under ``sql_dir``."""

    def __init__(self, sql_dir: Path):
        self.sql_dir = Path(sql_dir)
        if not self.sql_dir.is_dir():
            raise ModelError(f"no SQL project at {self.sql_dir}: the sql/ folder is missing")
        self.models: dict[str, Model] = {}
        self.tests: dict[str, Query] = {}
        self.queries: dict[str, Query] = {}
        self._rendered: dict[tuple[str, Path], tuple[str, set[str], set[tuple[str, str]]]] = {}
        self._batch_sources: dict | None = None  # source() overrides while rendering a model's batch SQL
        self._lock = threading.RLock()  # rendering is not re-entrant across threads (the ref/source frames)
        self._load()
        self._render_all()
        self.order = self._order()
        self._version_all()

    # -- loading --------------------------------------------------------------------------

    def _load(self) -> None:
        for layer in LAYERS:
            for path in sorted((self.sql_dir / layer).glob("*.sql")):
                name = path.stem
                if name in self.models:
                    other = self.models[name].path
                    raise ModelError(f"two models are named {name}: {self._rel(other)} and {self._rel(path)}")
                template = self._read(path)
                description, grain, materialized, columns, inputs, incremental = parse_header(template)
                if materialized not in MATERIALIZATIONS:
                    raise ModelError(
                        f"{self._rel(path)}: materialized must be table or view, not {materialized!r}"
                    )
                if inputs not in INPUTS:
                    raise ModelError(f"{self._rel(path)}: inputs must be one of {', '.join(INPUTS)}, not {inputs!r}")
                if incremental and incremental not in INCREMENTAL:
                    raise ModelError(f"{self._rel(path)}: incremental must be one of {', '.join(INCREMENTAL)}, "
                                     f"not {incremental!r}")
                needs = {"by_page": "latest_run", "by_run": "all_runs"}.get(incremental)
                if needs and (materialized != "table" or inputs != needs):
                    raise ModelError(f"{self._rel(path)}: incremental: {incremental} is for a table with inputs: {needs}")
                self.models[name] = Model(name, layer, path, template, description, grain, materialized,
                                          columns, inputs, incremental)
        if not self.models:
            raise ModelError(f"no models found under {self.sql_dir}/{{{','.join(LAYERS)}}}/")
        self.macros = [(p, self._read(p)) for p in sorted((self.sql_dir / "macros").glob("*.sql"))]
        for folder, target in (("tests", self.tests), ("export", self.queries)):
            for path in sorted((self.sql_dir / folder).glob("*.sql")):
                template = self._read(path)
                target[path.stem] = Query(path.stem, path, template, parse_header(template)[0])

    def _read(self, path: Path) -> str:
        """A SQL file's text; one that cannot be read (not UTF-8, a folder named *.sql) names itself."""
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ModelError(f"{self._rel(path)}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})") from None
        except OSError as exc:
            raise ModelError(f"{self._rel(path)}: cannot be read ({exc.strerror or exc})") from None

    def _rel(self, path: Path) -> str:
        try:
            return str(Path("sql") / path.relative_to(self.sql_dir))
        except ValueError:
            return str(path)

    # -- rendering --------------------------------------------------------------------------

    def _environment(self) -> jinja2.Environment:
        """One Jinja environment per project: macros compiled once, ref/source bound per render."""
        if getattr(self, "_env", None) is not None:
            return self._env
        self._loader = _Texts()
        env = jinja2.Environment(loader=self._loader, bytecode_cache=_bytecode_cache(), **ENV_OPTIONS)
        self._rendering: list[tuple[Path, set, set, bool]] = []  # (path, refs, sources, is_incremental)

        def ref(name: str) -> str:
            path, refs = self._rendering[-1][:2]
            if name not in self.models:
                known = ", ".join(sorted(self.models))
                raise ModelError(f"{self._rel(path)}: ref('{name}') names no model (models: {known})")
            refs.add(name)
            return self.models[name].relation

        def source(schema: str, table: str) -> str:
            path, _, sources = self._rendering[-1][:3]
            if (schema, table) not in SOURCES:
                known = ", ".join(f"{s}.{t}" for s, t in sorted(SOURCES))
                raise ModelError(f"{self._rel(path)}: source('{schema}', '{table}') is not a source ({known})")
            sources.add((schema, table))
            if self._batch_sources is not None:
                return self._batch_sources[(schema, table)]
            return f"{schema}.{table}"

        def is_incremental() -> bool:
            return self._rendering[-1][3]

        env.globals.update(ref=ref, source=source, is_incremental=is_incremental)
        for macro_path, macro_text in self.macros:
            try:
                module = self._template(env, macro_text, macro_path).make_module()
            except jinja2.TemplateError as exc:
                line = getattr(exc, "lineno", None)
                where = f"{self._rel(macro_path)}:{line}" if line else self._rel(macro_path)
                raise ModelError(f"{where}: template error in a macro: {exc}") from None
            env.globals.update({k: getattr(module, k) for k in dir(module) if not k.startswith("_")})
        self._env = env
        return env

    def _template(self, env: jinja2.Environment, text: str, path: Path) -> jinja2.Template:
        """``text`` compiled. Through a loader, so that Jinja's bytecode cache keeps the compiled
        code between runs (keyed by the text): compiling the project's ~20 templates takes
        ~45 ms, a good part of a small run's set-up, and is paid again only when one changes."""
        # the name is the bytecode cache's key: the text and the environment's options, so a
        # template compiled under other options is never reused
        name = f"{path}@{hashlib.sha256((text + _ENV_OPTIONS).encode()).hexdigest()[:16]}"
        self._loader.texts[name] = text
        try:
            return env.get_template(name)
        except jinja2.TemplateSyntaxError:
            return env.from_string(text)  # raises the same error, without the cache key as its file name

    def render(self, template: str, path: Path, this: str | None = None,
               incremental: bool = False) -> tuple[str, set[str], set[tuple[str, str]]]:
        """Render one template; returns (sql, refs it used, sources it used). ``this``: the
        model's own relation; ``incremental``: what ``is_incremental()`` answers.

        A project's templates render the same every time (ref, source and the macros are
        fixed once loaded), so each is compiled and rendered once: Jinja compiles a template
        in ~4 ms, which the docs and the runner's change detection would otherwise pay again.
        """
        with self._lock:
            key = (template, path, this, incremental)
            cached = self._rendered.get(key)
            if cached is None:
                cached = self._rendered[key] = self._render(template, path, this, incremental)
        sql, refs, sources = cached
        return sql, set(refs), set(sources)

    def batch_sql(self, model: Model) -> str:
        """An ``incremental: by_page`` model's SQL over some pages of one run: ``source()``
        reads only the pages in ``$pages`` of run ``$run_id``, and ``raw.runs`` shows that run
        as it will be once its extraction completes (so ``latest_extracted_run()`` is it).

        The header promises that each row comes from one raw page alone: run over every page
        of a run, batch by batch, the model gives the rows one build over the run would.
        """
        if model.incremental != "by_page":
            raise ModelError(f"{self._rel(model.path)}: not an incremental: by_page model")
        with self._lock:
            self._batch_sources = BATCH_SOURCES
            try:
                sql, _, sources = self._render(model.template, model.path, model.relation)
            finally:
                self._batch_sources = None
        if not sources <= set(BATCH_SOURCES):
            raise ModelError(f"{self._rel(model.path)}: an incremental: by_page model reads only raw.api_pages and raw.runs")
        return sql

    def _render(self, template: str, path: Path, this: str | None = None,
                incremental: bool = False) -> tuple[str, set[str], set[tuple[str, str]]]:
        env = self._environment()
        refs: set[str] = set()
        sources: set[tuple[str, str]] = set()
        self._rendering.append((path, refs, sources, incremental))
        try:
            sql = self._template(env, template, path).render(**({"this": this} if this else {}))
        except ModelError:
            raise
        except jinja2.TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f"{self._rel(path)}:{line}" if line else self._rel(path)
            raise ModelError(f"{where}: template error: {exc}") from None
        finally:
            self._rendering.pop()
        return sql.strip().rstrip(";"), refs, sources

    def _render_all(self) -> None:
        for model in self.models.values():
            model.sql, model.refs, model.sources = self.render(model.template, model.path, model.relation)
            if model.name in model.refs:
                raise ModelError(f"{self._rel(model.path)}: model {model.name} refs itself")
            if model.incremental == "by_page" and (model.refs or ("raw", "api_pages") not in model.sources):
                raise ModelError(f"{self._rel(model.path)}: an incremental: by_page model reads raw.api_pages, "
                                 "and no other model")
            if model.incremental == "by_run":
                model.incremental_sql, refs, sources = self.render(model.template, model.path, model.relation, True)
                model.refs |= refs
                model.sources |= sources
                if model.incremental_sql == model.sql:
                    raise ModelError(f"{self._rel(model.path)}: an incremental: by_run model narrows itself to the "
                                     "runs {{ this }} does not hold yet, under {% if is_incremental() %}")
        for query in [*self.tests.values(), *self.queries.values()]:
            query.sql, query.refs, _ = self.render(query.template, query.path)

    def _order(self) -> list[Model]:
        sorter = graphlib.TopologicalSorter({m.name: sorted(m.refs) for m in self.models.values()})
        try:
            names = list(sorter.static_order())
        except graphlib.CycleError as exc:
            cycle = exc.args[1]
            raise ModelError("models form a cycle: " + " -> ".join(cycle)) from None
        return [self.models[name] for name in names]

    def _version_all(self) -> None:
        for model in self.order:
            parents = [self.models[p].version for p in sorted(model.refs)]
            both = (model.sql, model.incremental_sql) if model.incremental == "by_run" else (model.sql,)
            model.version = _hash(*both, model.materialized, *parents)

    # -- graph helpers ------------------------------------------------------------------------

    def downstream(self, name: str) -> set[str]:
        """Every model that depends, directly or not, on ``name``."""
        children: dict[str, set[str]] = {n: set() for n in self.models}
        for model in self.models.values():
            for parent in model.refs:
                children[parent].add(model.name)
        seen: set[str] = set()
        stack = [name]
        while stack:
            for child in children[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen

    def rel(self, path: Path) -> str:
        return self._rel(path)
