"""The warehouse file: opening it safely, its fixed tables, and the one-run-at-a-time lock.

DuckDB allows one read-write process per file. Analysts' tools (DBeaver opens read-write
by default, the DuckDB CLI too) therefore block a sync; ``connect`` waits up to
``lock_timeout`` seconds for them to let go, then fails with one line naming the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from extract.errors import RunLockedError, UsageError, WarehouseError, first_line

SCHEMAS = ("raw", "staging", "intermediate", "marts", "meta")

# The tables the pipeline itself writes. Models own everything in staging/intermediate/marts.
# No primary keys (nor unique constraints): DuckDB 1.0 cannot open a file whose index DuckDB
# 2.0 wrote, even at storage version v1.0.0 ("Failed to deserialize ... field id: 103"). run_id is
# unique because runs are numbered under the run lock (RunLock), one writer at a time.
FIXED_DDL = """
create table if not exists raw.runs (
    run_id              integer not null,
    started_at          timestamptz not null,
    finished_at         timestamptz,
    status              varchar not null,
    failed_stage        varchar,
    error               varchar,
    source_url          varchar,
    per_page            integer,
    concurrency         integer,
    resumes             integer default 0,
    reported_total      bigint,
    pages_expected      integer,
    pages_landed        integer,
    records_landed      bigint,
    requests            integer,
    retries             integer,
    throttled           integer,
    extracted_at        timestamptz,
    customers_exported  bigint,
    export_path         varchar
);
create table if not exists raw.api_pages (
    run_id        integer not null,
    page          integer not null,
    url           varchar not null,
    http_status   smallint not null,
    fetched_at    timestamptz not null,
    attempts      smallint not null,
    record_count  integer not null,
    body_md5      varchar not null,
    body          json not null
);
create table if not exists meta.model_builds (
    run_id        integer,
    model         varchar not null,
    relation      varchar not null,
    materialized  varchar not null,
    version       varchar not null,
    input_state   varchar,
    status        varchar not null,
    rows          bigint,
    seconds       double,
    built_at      timestamptz not null,
    error         varchar
);
create table if not exists meta.test_results (
    run_id        integer,
    test          varchar not null,
    failing_rows  bigint,
    status        varchar not null,
    seconds       double,
    tested_at     timestamptz not null,
    error         varchar
);
create table if not exists meta.run_quality (
    run_id        integer,
    published_at  timestamptz not null,
    customers     bigint,
    high          bigint,
    medium        bigint,
    low           bigint,
    avg_score     double
);
create table if not exists meta.published_models (
    model         varchar not null,
    relation      varchar not null,
    materialized  varchar not null,
    version       varchar not null,
    input_state   varchar,
    rows          bigint,
    sql_hash      varchar,
    published_at  timestamptz not null,
    run_id        integer
);
"""

FIXED_COMMENTS = {
    "raw.runs": "One row per pipeline run (sync): its status, what it fetched, and where it failed. Append-only history.",
    "raw.api_pages": "Every API page exactly as received, one row per (run_id, page). Append-only history (--keep-runs deletes older runs' pages); bodies are the API's JSON unchanged.",
    "meta.model_builds": "One row per model per build: version (hash of rendered SQL + parents' versions), rows, seconds, status (built, skipped, failed, rolled_back).",
    "meta.test_results": "One row per data test per build: failing_rows = rows the test query returned (0 = pass).",
    "meta.run_quality": "One row per publish: customers per quality bucket of marts.dim_customers as published, for trends.",
    "meta.published_models": "The models currently published in staging/intermediate/marts, with the version and inputs they were built from.",
}

# each fixed table's columns, read off FIXED_DDL: a table of that name without them is not ours
FIXED_COLUMNS = {
    name: re.findall(r"^\s+(\w+)\s", body, flags=re.MULTILINE)
    for name, body in re.findall(r"create table if not exists (\S+) \((.*?)\n\);", FIXED_DDL, flags=re.DOTALL)
}

_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<prog>.+?) \(PID (?P<pid>\d+)\)")


@dataclass(frozen=True)
class WarehouseConfig:
    path: Path
    storage_version: str = "v1.0.0"
    threads: int | None = None
    memory_limit: str | None = None
    lock_timeout: float = 10.0


def _duckdb_config(config: WarehouseConfig) -> dict:
    # max_vacuum_tasks 0: a checkpoint never merges a table's small row groups into bigger
    # ones. Each sync appends its pages to raw.api_pages as a row group of its own; with
    # merging on, every checkpoint rewrote the bodies of the syncs before it until the merged
    # group was full (benchmarks/history_bench.py --merge-row-groups). Row groups a delete
    # empties (--keep-runs) are still dropped and their blocks freed.
    settings: dict = {"storage_compatibility_version": config.storage_version, "max_vacuum_tasks": 0}
    if config.threads:
        settings["threads"] = config.threads
    if config.memory_limit:
        settings["memory_limit"] = config.memory_limit
    return settings


def max_threads() -> int:
    """The most ``--threads`` allowed: 4 per core, and at least 64."""
    return max(64, 4 * (os.cpu_count() or 1))


def check_settings(config: WarehouseConfig) -> None:
    """Fail with the flag's name when DuckDB refuses ``--threads``, ``--memory-limit`` or
    ``--storage-version``, before any file is made: refused while opening the warehouse, the
    error would read like a damaged file. Asked of an in-memory database, only for settings given
    (the defaults need no check, and DuckDB's start-up costs ~20 ms)."""
    given = {"--threads": ("threads", config.threads),
             "--memory-limit": ("memory_limit", config.memory_limit),
             "--storage-version": ("storage_compatibility_version", config.storage_version)}
    for flag, (option, value) in given.items():
        if value is None or (flag == "--storage-version" and value == WarehouseConfig.storage_version):
            continue
        if flag == "--threads" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"--threads must be a whole number of at least 1, not {value!r}")
        if flag == "--threads" and value > max_threads():
            # DuckDB starts every thread it is given: 10**8 of them would stall the machine
            raise UsageError(f"--threads {value}: more than this machine's {os.cpu_count() or 1} cores can use; "
                             f"give at most {max_threads()}")
        try:
            duckdb.connect(":memory:", config={option: value}).close()
        except duckdb.Error as exc:
            first = first_line(exc)
            if "not a known DuckDB version" in first:
                first = "not a DuckDB storage version; give one like v1.0.0 or v1.2.0, or latest"
            raise UsageError(f"{flag} {value}: DuckDB does not accept it ({first[:200]})") from None


def default_docs_path(warehouse: Path) -> Path:
    """Where a warehouse's data docs page goes: ``<its folder>/docs/index.html`` for the default
    ``customers.duckdb``, ``<its folder>/docs/<file name>.html`` for any other (``prod.duckdb.html``),
    so that warehouses kept side by side do not overwrite each other's page."""
    warehouse = Path(warehouse)
    name = "index" if warehouse.name == "customers.duckdb" else warehouse.name  # prod.duckdb -> prod.duckdb.html
    return warehouse.parent / "docs" / f"{name}.html"


def require_warehouse(path: Path) -> None:
    """For the steps that read what a run made: a missing file is one line, not an empty new one."""
    if not Path(path).exists():
        raise WarehouseError(f"no warehouse at {path} yet: run `python pipeline.py run` first")


def check_warehouse_name(path: Path) -> None:
    """DuckDB names a database after its file: one named like a schema of the warehouse
    (``staging.duckdb``) makes ``staging.x`` ambiguous to DuckDB, in the models and in every
    analyst's query. Refused with the reason, before the file is made."""
    name = Path(path).name.split(".")[0].lower()  # DuckDB's: raw.backup.duckdb is database "raw"
    if name in SCHEMAS:
        raise UsageError(
            f"--warehouse {path}: DuckDB names the database after its file, and '{name}' is also one of the "
            f"warehouse's schemas ({', '.join(SCHEMAS)}), so queries could not tell them apart; "
            f"name the file otherwise, e.g. customers_{name}.duckdb")


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is neither a regular file nor a folder."""
    return next((name for test, name in _SPECIAL_KINDS if test(mode)), None)


def special_kind(path: Path) -> str | None:
    """What ``path`` is if it exists and is a FIFO, a device or a socket (through symlinks:
    a link to a regular file is a regular file); None otherwise. stat() only: never opened,
    since opening a FIFO waits for a writer."""
    try:
        return file_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def check_replaceable(output: Path, what: str = "--output") -> None:
    """Refuse an output (the export, the docs page) that exists and is a FIFO, a device or a
    socket. Each is written beside its path and renamed over it, which replaced the special file
    itself with a regular one (``--output /dev/null`` turned /dev/null into a file)."""
    kind = special_kind(output)
    if kind:
        raise UsageError(f"{what} {output} is {kind}, not a regular file: the file written there is renamed "
                         "into place and would replace it; give a file path")


def check_warehouse_file(path: Path) -> None:
    """Refuse a warehouse (or its WAL or run lock) that exists and is a FIFO, a device or a
    socket: DuckDB opening a FIFO waits for a writer, and the run hung there for good."""
    for file, what in ((Path(path), "is"), (Path(f"{path}.wal"), "has a write-ahead log that is"),
                       (Path(f"{path}.lock"), "has a run lock that is")):
        kind = special_kind(file)
        if kind:
            shown = "" if file == Path(path) else f" ({file})"
            raise UsageError(f"--warehouse {path} {what} {kind}{shown}, not a regular file: DuckDB cannot keep a "
                             "database there; give the path of a DuckDB file (or of one to create)")


# What a warehouse is on disk, beside the database file itself: suffix -> what it is. DuckDB
# names its write-ahead log and its spill folder after the path it is given; RunLock the lock.
WAREHOUSE_COMPANIONS = {".wal": ("the warehouse's write-ahead log", "DuckDB deletes it at its next checkpoint"),
                        ".lock": ("the warehouse's run lock", "every run rewrites it"),
                        ".tmp": ("DuckDB's spill folder for the warehouse", "DuckDB writes there when memory is short")}


def warehouse_files(path: Path) -> list[tuple[Path, tuple[str, str] | None]]:
    """The warehouse file (None) and its companions (what each is, and why nothing else may be
    written there): as given, and as resolved (a warehouse reached through a symlink has its WAL
    and lock beside the link, its data in the target)."""
    given = Path(path)
    files: list[tuple[Path, tuple[str, str] | None]] = []
    for base in dict.fromkeys((str(given), os.path.realpath(given))):
        files.append((Path(base), None))
        files.extend((Path(base + suffix), what) for suffix, what in WAREHOUSE_COMPANIONS.items())
    return files


def same_file(path: Path, other: Path) -> bool:
    """Whether two paths name one file: the same real path (symlinks, ``..``, relative or
    absolute), or, where both exist, the same inode (a hard link has a name of its own)."""
    if os.path.realpath(path) == os.path.realpath(other):
        return True
    try:
        one, two = os.stat(path), os.stat(other)
    except OSError:
        return False
    return (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)


def check_not_warehouse(output: Path, warehouse: Path, what: str = "--output") -> None:
    """Refuse an output (``what``: the flag, or what the file is) that is the warehouse or one of
    its companion files, before anything is written. The export and the docs page are renamed
    over their path: over the database they replaced it with a JSON document, and over the WAL
    the export vanished at DuckDB's next checkpoint. Compared as real paths (symlinks, ``..``,
    relative or absolute), and by inode where both exist (hard links)."""
    output = Path(output)
    for path, companion in warehouse_files(warehouse):
        if not same_file(output, path):
            continue
        if companion is None:
            raise UsageError(f"{what} {output} and --warehouse {warehouse} are the same file: writing it would "
                             "replace the warehouse; give each its own path")
        role, why = companion
        shown = "" if str(path) == str(output) else f" ({path})"
        raise UsageError(f"{what} {output} is {role}{shown}: {why}; give another path")


def connect(config: WarehouseConfig, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting up to ``lock_timeout`` s for another process to let go."""
    path = Path(config.path)
    check_warehouse_name(path)
    check_warehouse_file(path)
    if path.exists() and path.is_dir():
        raise WarehouseError(f"warehouse path {path} is a directory, not a DuckDB file")
    if read_only:
        require_warehouse(path)
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WarehouseError(f"cannot create the warehouse folder {path.parent}: {exc.strerror}")
    deadline = time.monotonic() + max(0.0, config.lock_timeout)
    settings = _duckdb_config(config) if not read_only else {}
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=settings)
            # business rules count days in UTC, whatever the host's zone (90 days across a DST change)
            con.execute("set TimeZone = 'UTC'")
            return con
        except duckdb.Error as exc:
            message = str(exc)
            # DuckDB's own words for a file another process holds ("block" in a corruption
            # message is not one: a damaged file is not worth waiting for)
            if isinstance(exc, duckdb.OutOfMemoryException):
                raise WarehouseError(f"DuckDB ran out of memory opening {path} (--memory-limit "
                                     f"{config.memory_limit or 'default'}): allow it more") from None
            if "could not set lock" not in message.lower() and "conflicting lock" not in message.lower():
                raise WarehouseError(_damaged_message(path, message)) from None
            if time.monotonic() >= deadline:
                raise WarehouseError(_locked_message(path, message, config.lock_timeout, read_only)) from None
            time.sleep(0.25)


# A DuckDB file is at least its three 4 KiB headers (an empty database is exactly that).
_DUCKDB_MIN_SIZE = 3 * 4096


def opens_without_waiting(path: Path) -> bool:
    """Whether ``connect`` should open the warehouse at once, judged without opening the file.

    True when there is no file yet, or a regular file big enough to be a DuckDB database that
    no process holds a lock on (``/proc/locks``; where that cannot be read, False). The file is
    not opened here on purpose: closing any descriptor of a file drops every POSIX lock this
    process holds on it, and DuckDB's own lock is one. A False only means "do not count on it";
    a True can miss a holder this process cannot see (another PID namespace, another NFS
    client), which costs the run its page-1 request before it waits for the lock as before.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size < _DUCKDB_MIN_SIZE:
        return False
    # by inode number alone: on btrfs (and overlay filesystems) stat() reports another device
    # than /proc/locks does; a lock on another file with the same number only loses the overlap
    inode = f":{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            return not any(field.count(":") == 2 and field.endswith(inode)  # MAJ:MIN:INODE
                           for line in locks for field in line.split())
    except OSError:
        return False


def _locked_message(path: Path, message: str, timeout: float, read_only: bool = False) -> str:
    holder = _LOCK_HOLDER.search(message)
    who = f"{holder['prog']} (PID {holder['pid']})" if holder else "another process"
    run = _run_lock_holder(path)
    if holder and run and run.startswith(f"pid {holder['pid']} "):  # the pipeline itself, at work
        doing = run.split(" ", 2)[2]  # "(run) since 2026-11-27T12:00:00Z"
        return (f"warehouse {path} is being written by the pipeline (PID {holder['pid']}, {doing}) and was not "
                f"released within {timeout:g}s: run again when it has finished, or raise --lock-timeout")
    if read_only:
        return (f"warehouse {path} is open for writing in {who} and was not released within {timeout:g}s: "
                "close that connection (in DBeaver: Disconnect; in the DuckDB CLI: .quit) and run again, "
                "or raise --lock-timeout")
    return (
        f"warehouse {path} is open in {who} and was not released within {timeout:g}s: "
        "a sync needs the file to itself, and read-only connections hold it too; close that "
        "connection (in DBeaver: Disconnect; in the DuckDB CLI: .quit) and run again, or raise --lock-timeout"
    )


def _run_lock_holder(path: Path) -> str | None:
    """What the run lock says of the pipeline run holding it ("pid 123 (run) since ..."), if any."""
    try:
        with open(f"{path}.lock", encoding="utf-8", errors="replace") as lock:
            return lock.read(512).strip() or None
    except OSError:
        return None


def _damaged_message(path: Path, message: str) -> str:
    first = message.splitlines()[0] if message else "unknown error"
    return (
        f"warehouse {path} cannot be opened as a DuckDB database ({first[:200]}); "
        "it is left untouched: move it aside to start a new warehouse, or restore a backup"
    )


# The pipeline's small tables: each run appends a row or a few to them, and with row groups
# never merged (max_vacuum_tasks 0) every run's rows took blocks of their own, ~1 MiB a run
# whatever the data. ``compact_bookkeeping`` writes them again, each as one row group, every
# COMPACT_EVERY runs; raw.api_pages is not among them (its row groups are each run's pages).
BOOKKEEPING = ("raw.runs", "meta.model_builds", "meta.test_results", "meta.run_quality", "meta.published_models")
COMPACT_EVERY = 8


def compact_bookkeeping(con: duckdb.DuckDBPyConnection) -> None:
    """Write the small bookkeeping tables again, each as one row group (see BOOKKEEPING)."""
    ensure_schema(con, remake=BOOKKEEPING)


def ensure_schema(con: duckdb.DuckDBPyConnection, remake: tuple[str, ...] = ()) -> None:
    """Create the schemas and the pipeline's own tables if they do not exist.

    One catalog query first: on a warehouse that already has them all (with their comments),
    nothing is written, so the catalog does not change on every run. ``remake``: tables to
    write again as FIXED_DDL says, their rows copied over.
    """
    schemas = {row[0] for row in con.execute(
        "select schema_name from duckdb_schemas() where database_name = current_database()").fetchall()}
    tables = {name: (comment, keyed) for name, comment, keyed in con.execute(
        """
        select schema_name || '.' || table_name, comment, has_primary_key from duckdb_tables()
        where database_name = current_database() and schema_name in ('raw', 'meta')
        """
    ).fetchall()}
    remade = [name for name in FIXED_COMMENTS  # a table with a key, or one asked for
              if name in tables and (tables[name][1] or name in remake)]
    if set(SCHEMAS) <= schemas and not remade \
            and all(tables.get(t, (None,))[0] == c for t, c in FIXED_COMMENTS.items()):
        return
    _refuse_foreign_tables(con, [name for name in FIXED_COLUMNS if name in tables])
    # one transaction, one script: the tables appear together (and one commit is ~10 ms less
    # than one per statement on a new warehouse). A table an earlier version made with a key
    # (raw.runs had a primary key), or one to compact, is made again as FIXED_DDL says, its
    # rows copied over in their order.
    aside = [f"alter table {name} rename to {name.split('.')[1]}__old" for name in remade]
    copy = [statement for name in remade for statement in (
        f"insert into {name} by name select * from {name}__old", f"drop table {name}__old")]
    con.execute("begin transaction")
    try:
        con.execute(";\n".join([*(f"create schema if not exists {schema}" for schema in SCHEMAS), *aside, FIXED_DDL,
                                 *copy, *(f"comment on table {table} is {sql_literal(comment)}"
                                          for table, comment in FIXED_COMMENTS.items())]))
        con.execute("commit")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed commit has ended the transaction already
            con.execute("rollback")
        raise


def _refuse_foreign_tables(con: duckdb.DuckDBPyConnection, names: list[str]) -> None:
    """Another program's raw.runs (say) in the file: refused before anything is changed. Asked
    only when the tables are not already the pipeline's, with its comments (every run but the
    first skips it)."""
    if not names:
        return
    columns: dict[str, list[str]] = dict(con.execute(
        """
        select schema_name || '.' || table_name, list(column_name) from duckdb_columns()
        where database_name = current_database() and schema_name in ('raw', 'meta')
        group by all
        """
    ).fetchall())
    for name in names:
        missing = [column for column in FIXED_COLUMNS[name] if column not in columns.get(name, [])]
        if missing:
            path = con.execute("select path from duckdb_databases() where database_name = current_database()").fetchone()[0]
            raise WarehouseError(f"{path} has a table {name} that is not the pipeline's (it has no "
                                 f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): "
                                 "give --warehouse a file of its own")


def fetch_dicts(con, sql: str, params=None) -> list[dict]:
    """A query's rows as dicts keyed by column name."""
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def sql_literal(text: str) -> str:
    """A SQL string literal for text the pipeline itself owns (comments); never API data."""
    return "'" + text.replace("'", "''") + "'"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RunLock:
    """One run at a time per warehouse: an flock on ``<warehouse>.lock``.

    The kernel releases an flock when its process dies, so a lock left by a killed run is
    never stale for long: the next run takes it and says whose it was.
    """

    def __init__(self, warehouse_path: Path):
        self.path = Path(str(warehouse_path) + ".lock")
        self._fd: int | None = None
        self.stale_holder: str | None = None

    def acquire(self, command: str = "run") -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only mount, /proc, a folder that is a file
            raise WarehouseError(
                f"cannot write the run lock {self.path} ({exc.strerror or exc}): the warehouse's "
                "folder must be writable (a read-only copy can be queried with `duckdb -readonly`)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise RunLockedError(
                f"another pipeline run is using {self.path.name[:-5]}"
                f" ({holder or 'holder unknown'}); wait for it to finish, or stop it"
            ) from None
        previous = self._read(fd)
        if previous:
            self.stale_holder = previous  # its process died without releasing: cleared now
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} ({command}) since {utcnow():%Y-%m-%dT%H:%M:%SZ}".encode())
            os.fsync(fd)
        except OSError as exc:  # a full disk: nothing else could be written either
            os.close(fd)
            raise WarehouseError(f"cannot write the run lock {self.path} ({exc.strerror or exc}): "
                                 "free some space on its disk") from None
        self._fd = fd
        return self

    @staticmethod
    def _read(fd: int) -> str:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 512).decode(errors="replace").strip()

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
