"""Shared fixtures: a fresh warehouse in a temp dir, raw pages from small records, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from extract.client import RetryPolicy
from transform.orchestrate import Settings
from transform.project import Project
from transform.runner import Runner
from transform.warehouse import WarehouseConfig, connect, ensure_schema

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = ROOT / "sql"

# fast retries for tests: real HTTP, tiny waits
FAST_RETRY = RetryPolicy(attempts=4, backoff_initial=0.01, backoff_max=0.05, retry_after_max=0.2,
                         connect_timeout=2.0, read_timeout=2.0)


@pytest.fixture
def warehouse_path(tmp_path) -> Path:
    return tmp_path / "warehouse" / "customers.duckdb"


@pytest.fixture
def con(warehouse_path):
    connection = connect(WarehouseConfig(warehouse_path))
    ensure_schema(connection)
    yield connection
    connection.close()


def land_records(con, pages: list[list], run_id: int = 1, started_at: datetime | None = None,
                 per_page: int | None = None) -> int:
    """Land ``pages`` (each a list of records, or a raw JSON body string) as one extracted run."""
    started_at = started_at or datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)
    con.execute(
        "insert into raw.runs (run_id, started_at, status, extracted_at, resumes) values (?, ?, 'extracted', ?, 0)",
        [run_id, started_at, started_at + timedelta(seconds=1)],
    )
    for number, records in enumerate(pages, start=1):
        if isinstance(records, str):
            body = records
            count = len(json.loads(body).get("data") or [])
        else:
            body = json.dumps({"page": number, "per_page": per_page or len(records), "total_pages": len(pages),
                               "data": records})
            count = len(records)
        con.execute(
            "insert into raw.api_pages values (?, ?, ?, 200, ?, 1, ?, ?, ?)",
            [run_id, number, f"http://127.0.0.1/api/users?page={number}", started_at, count,
             hashlib.md5(body.encode()).hexdigest(), body],
        )
    return run_id


def build(con, sql_dir: Path = SQL_DIR, run_id: int | None = None):
    """Build and publish every model; returns the BuildResult."""
    return Runner(con, Project(sql_dir), run_id, log=lambda *_: None).build_and_publish()


def rows(con, sql: str, params=None) -> list[tuple]:
    return con.execute(sql, params or []).fetchall()


def dicts(con, sql: str, params=None) -> list[dict]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def error_lines(stderr: str) -> list[str]:
    """The lines a user reads as the failure (progress lines are also on stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (free when asked; the OS hands it out again
    only after cycling through the others)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120):
    """Run ``python pipeline.py ARGS`` as a user would; returns CompletedProcess (text)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "pipeline.py"), *args],
        capture_output=True, text=True, env=full_env, cwd=cwd or ROOT, timeout=timeout,
    )


def settings(tmp_path: Path, base_url: str, **overrides) -> Settings:
    values = dict(
        base_url=base_url,
        warehouse=tmp_path / "warehouse" / "customers.duckdb",
        output=tmp_path / "out.json",
        quiet=True,
        retry=FAST_RETRY,
        lock_timeout=2.0,
    )
    values.update(overrides)
    return Settings(**values)
