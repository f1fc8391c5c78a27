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
"""

from __future__ import annotations

import graphlib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from extract.errors import ModelError

LAYERS = ("staging", "intermediate", "marts")
SOURCES = {("raw", "api_pages"), ("raw", "runs")}
MATERIALIZATIONS = ("table", "view")

_HEADER_KEY = re.compile(r"^--\s*(grain|materialized|inputs)\s*:\s*(.+?)\s*$", re.IGNORECASE)
INPUTS = ("latest_run", "all_runs")
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
    sql: str = ""
    refs: set[str] = field(default_factory=set)
    sources: set[tuple[str, str]] = field(default_factory=set)
    version: str = ""

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


def parse_header(text: str) -> tuple[str, str, str, dict[str, str], str]:
    """(description, grain, materialized, columns, inputs) from the leading ``--`` comment block."""
    description_lines: list[str] = []
    grain, materialized, columns, inputs = "", "table", {}, "all_runs"
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
            else:
                materialized = value.lower()
        elif match := _HEADER_COLUMN.match(stripped):
            for name in match[1].split("/"):
                columns[name.strip()] = match[2]
        elif not grain and not columns:
            description_lines.append(stripped[2:].strip())
    return " ".join(description_lines), grain, materialized, columns, inputs


def _hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


class Project:
    """Loads, renders, orders and versions the models under ``sql_dir``."""

    def __init__(self, sql_dir: Path):
        self.sql_dir = Path(sql_dir)
        if not self.sql_dir.is_dir():
            raise ModelError(f"no SQL project at {self.sql_dir}: the sql/ folder is missing")
        self.models: dict[str, Model] = {}
        self.tests: dict[str, Query] = {}
        self.queries: dict[str, Query] = {}
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
                template = path.read_text(encoding="utf-8")
                description, grain, materialized, columns, inputs = parse_header(template)
                if materialized not in MATERIALIZATIONS:
                    raise ModelError(
                        f"{self._rel(path)}: materialized must be table or view, not {materialized!r}"
                    )
                if inputs not in INPUTS:
                    raise ModelError(f"{self._rel(path)}: inputs must be one of {', '.join(INPUTS)}, not {inputs!r}")
                self.models[name] = Model(name, layer, path, template, description, grain, materialized,
                                          columns, inputs)
        if not self.models:
            raise ModelError(f"no models found under {self.sql_dir}/{{{','.join(LAYERS)}}}/")
        self.macros = [(p, p.read_text(encoding="utf-8")) for p in sorted((self.sql_dir / "macros").glob("*.sql"))]
        for folder, target in (("tests", self.tests), ("export", self.queries)):
            for path in sorted((self.sql_dir / folder).glob("*.sql")):
                template = path.read_text(encoding="utf-8")
                target[path.stem] = Query(path.stem, path, template, parse_header(template)[0])

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
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        self._rendering: list[tuple[Path, set, set]] = []

        def ref(name: str) -> str:
            path, refs, _ = self._rendering[-1]
            if name not in self.models:
                known = ", ".join(sorted(self.models))
                raise ModelError(f"{self._rel(path)}: ref('{name}') names no model (models: {known})")
            refs.add(name)
            return self.models[name].relation

        def source(schema: str, table: str) -> str:
            path, _, sources = self._rendering[-1]
            if (schema, table) not in SOURCES:
                known = ", ".join(f"{s}.{t}" for s, t in sorted(SOURCES))
                raise ModelError(f"{self._rel(path)}: source('{schema}', '{table}') is not a source ({known})")
            sources.add((schema, table))
            return f"{schema}.{table}"

        env.globals.update(ref=ref, source=source)
        for macro_path, macro_text in self.macros:
            try:
                module = env.from_string(macro_text).make_module()
            except jinja2.TemplateError as exc:
                line = getattr(exc, "lineno", None)
                where = f"{self._rel(macro_path)}:{line}" if line else self._rel(macro_path)
                raise ModelError(f"{where}: template error in a macro: {exc}") from None
            env.globals.update({k: getattr(module, k) for k in dir(module) if not k.startswith("_")})
        self._env = env
        return env

    def render(self, template: str, path: Path) -> tuple[str, set[str], set[tuple[str, str]]]:
        """Render one template; returns (sql, refs it used, sources it used)."""
        env = self._environment()
        refs: set[str] = set()
        sources: set[tuple[str, str]] = set()
        self._rendering.append((path, refs, sources))
        try:
            sql = env.from_string(template).render()
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
            model.sql, model.refs, model.sources = self.render(model.template, model.path)
            if model.name in model.refs:
                raise ModelError(f"{self._rel(model.path)}: model {model.name} refs itself")
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
            model.version = _hash(model.sql, model.materialized, *parents)

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
