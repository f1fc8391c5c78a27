"""The JSON export: DuckDB streams the sorted customers, Python only stitches and renames.

``COPY (sql/export/customers.sql) TO ... (FORMAT json, ARRAY true)`` writes the customers
array straight from DuckDB; the metadata (one row, ``sql/export/metadata.sql``) goes in
front of it, and the whole document is written to a temp file beside the target, fsynced
and renamed over it: a reader sees the old document or the new one, never half of one.
No Python list of customers is ever built. A run whose output disk is short of space writes
the temp file inside the build's transaction (``prepare``) and renames it after the commit
(``PreparedExport.publish``); with room, the whole export comes after the commit.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import duckdb

from extract.crashpoints import crash_point
from extract.errors import PipelineError

from .project import Project
from .warehouse import check_replaceable, sql_literal


class ExportError(PipelineError):
    pass


def check_output_path(output: Path) -> None:
    """Fail before any work if the export could not be written."""
    output = Path(output)
    if output.is_dir():
        raise ExportError(f"output path {output} is a directory; give a file path like {output / 'customers.json'}")
    check_replaceable(output)  # a FIFO or a device: the rename would replace it with a file
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.exists():
        raise ExportError(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise ExportError(f"output folder {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"output folder {parent} is not writable")
    if output.exists() and not os.access(output, os.W_OK):
        raise ExportError(f"output file {output} is not writable")
    # os.access answers yes to root everywhere, and /proc or a read-only mount say no only
    # when written to: make (and remove) the kind of file the export writes, before any work
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{output.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise ExportError(f"output folder {parent} is not writable ({exc.strerror or exc})") from None


def metadata(con: duckdb.DuckDBPyConnection, project: Project) -> dict:
    cursor = con.execute(project.queries["metadata"].sql)
    names = [d[0] for d in cursor.description]
    row = cursor.fetchone()
    return dict(zip(names, row))


# A customer's object in the export is ~300 bytes; 1 KiB leaves room for long names and domains.
BYTES_PER_CUSTOMER = 1024
# What the output's file system keeps free, beyond the export, for a run to write the export after
# its commit: the warehouse's checkpoint may be writing to the same disk at that moment.
SPARE_BYTES = 512 << 20


def short_of_space(con: duckdb.DuckDBPyConnection, project: Project, output: Path,
                   warehouse: Path | None = None) -> bool:
    """Whether the output's file system may not hold the export with room to spare.

    A run asks just before its build commits. Short of space, it writes the export there,
    inside the transaction (``prepare``), so a disk that fills fails the run before anything is
    published; with room, it writes it after the commit, beside the checkpoint, where it costs
    the run no time. Room means ``SPARE_BYTES`` beyond the export's estimate and, when the
    ``warehouse`` is on the same file system, beyond its write-ahead log too (what the checkpoint
    beside the export writes into the file). Then only something else writing that much within
    a fraction of a second, or a disk quota, could make the export fail after the publish.
    """
    _require_queries(project)
    customers = sum(con.execute(f"select count(*) from {project.models[name].relation}").fetchone()[0]
                    for name in sorted(project.queries["customers"].refs))
    directory = output.parent if str(output.parent) else Path(".")
    try:
        free = shutil.disk_usage(directory).free
        wal = 0
        if warehouse is not None and os.stat(warehouse).st_dev == os.stat(directory).st_dev:
            wal_path = Path(f"{warehouse}.wal")
            wal = wal_path.stat().st_size if wal_path.exists() else 0
    except OSError as exc:
        raise ExportError(f"cannot write {output}: {exc.strerror or exc}") from None
    return free < SPARE_BYTES + wal + customers * BYTES_PER_CUSTOMER


def _require_queries(project: Project) -> None:
    if "customers" not in project.queries or "metadata" not in project.queries:
        raise ExportError("sql/export/customers.sql and sql/export/metadata.sql are both required")


class PreparedExport:
    """A whole export document in a temp file beside its target, not yet in place.

    ``publish()`` renames it over the target (a reader sees the old document or the new one);
    ``discard()`` removes it. A run short of space (``short_of_space``) writes it inside the
    build's transaction, before the commit that publishes the marts: a disk that fills then
    fails the run while the last marts and the last export are both still in place.
    """

    def __init__(self, output: Path, tmp_name: str, metadata: dict):
        self.output, self.tmp_name, self.metadata = output, tmp_name, metadata
        self.published = False

    def publish(self, stopping=None) -> dict:
        try:
            crash_point("mid-export")
            if stopping is not None and stopping.is_set():
                raise ExportError("the export was stopped before it replaced the last document")
            os.replace(self.tmp_name, self.output)
            self.published = True
            _fsync_dir(self.output.parent if str(self.output.parent) else Path("."))
        except OSError as exc:
            raise ExportError(f"cannot write {self.output}: {exc.strerror or exc}") from None
        finally:
            self.discard()
        return self.metadata

    def discard(self) -> None:
        if not self.published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp_name)


def prepare(con: duckdb.DuckDBPyConnection, project: Project, output: Path) -> PreparedExport:
    """Write the export document to a temp file beside ``output`` (not yet in place)."""
    output = Path(output)
    check_output_path(output)
    _require_queries(project)
    meta = metadata(con, project)
    clear_leftovers(output)  # from a run killed mid-export
    tmp_name = temp_beside(output)
    array_path = tmp_name + ".customers"
    done = False
    try:
        con.execute(
            f"copy ({project.queries['customers'].sql}) to {sql_literal(array_path)} (format json, array true)"
        )
        head = json.dumps({"metadata": meta}, indent=2, ensure_ascii=False, default=str)
        prefix = (head[:-2] + ",\n").encode()  # reopen the object after "metadata"
        key = b'  "customers": '
        # in place only for big arrays: it pads the metadata with spaces to a whole filesystem
        # block (a blank run of up to ~4 KiB before "customers" in head or a diff), and below
        # IN_PLACE_FROM the copy costs a few milliseconds
        if os.path.getsize(array_path) >= IN_PLACE_FROM and _prepend_in_place(array_path, prefix, key, b"\n}\n"):
            os.replace(array_path, tmp_name)  # the array file became the whole document
        else:
            _assemble(tmp_name, prefix + key, array_path, b"\n}\n")
        os.chmod(tmp_name, _file_mode(output))  # mkstemp makes 0600; readers downstream need the usual mode
        done = True
    except duckdb.Error as exc:
        raise ExportError(f"export query failed: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ExportError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        for leftover in (array_path,) if done else (tmp_name, array_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return PreparedExport(output, tmp_name, meta)


def temp_beside(output: Path) -> str:
    """A new empty temp file for ``output``, in its folder (so ``os.replace`` is atomic), named
    ``.<name>.<pid>-<random>.tmp``: unique to this process and this call, and saying whose it is,
    so that ``clear_leftovers`` in another process leaves it alone."""
    directory = output.parent if str(output.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.{os.getpid()}-", suffix=".tmp", dir=directory)
    os.close(fd)
    return name


def clear_leftovers(output: Path) -> None:
    """Remove the temp files (``temp_beside``'s, and their ``.customers`` arrays) of ``output``
    that a process killed mid-write left behind: those whose process is gone, and those named
    without one (an earlier version's). A live process's are another export to the same path,
    writing now from another warehouse: removing them failed it with "No such file"."""
    directory = output.parent if str(output.parent) else Path(".")
    ours = re.compile(rf"\.{re.escape(output.name)}\.(?:(?P<pid>\d+)-)?[a-z0-9_]+\.tmp(?:\.customers)?")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        found = ours.fullmatch(name)
        if found and not (found["pid"] and _running(int(found["pid"]))):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(directory / name)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (this one does). A pid reused since its owner died keeps a
    leftover until that process ends too; a pid of another PID namespace looks gone."""
    if pid == os.getpid():
        return True  # another export of this process (threads, library use), not a leftover
    try:
        os.kill(pid, 0)  # signal 0: only asks
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OverflowError, ValueError):
        return False  # no process can have it
    except OSError:
        return True  # cannot tell: keep the file
    return True


def export(con: duckdb.DuckDBPyConnection, project: Project, output: Path, stopping=None) -> dict:
    """Write the export atomically; returns its metadata.

    ``stopping`` (a ``threading.Event``, optional): set by a caller that gives up on the
    export (Ctrl-C); the document is then not put in place, and the last one stays.
    """
    return prepare(con, project, output).publish(stopping)


_FALLOC_FL_INSERT_RANGE = 0x20
IN_PLACE_FROM = 32 << 20  # bytes of customers array from which the export shifts blocks instead of copying


def _fallocate():
    """libc's fallocate(2) with 64-bit offsets, or None where there is none (not Linux, no libc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fallocate = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    fallocate.restype = ctypes.c_int
    return fallocate


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        data, offset = data[written:], offset + written


def _prepend_in_place(path: str, prefix: bytes, key: bytes, suffix: bytes) -> bool:
    """Turn the customers array DuckDB wrote into the whole document without copying it.

    ``fallocate(FALLOC_FL_INSERT_RANGE)`` shifts the file's blocks to open a hole at the
    start (ext4 and XFS; whole filesystem blocks only), where the metadata goes, padded with
    JSON whitespace to the block size. At 1M customers (300 MB) this takes 0.04 s where
    copying the array into a new file took 0.45 s. False (nothing changed) where the
    filesystem or OS cannot, and the caller copies instead; any other error raises.
    """
    fallocate = _fallocate()
    if fallocate is None:
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        block = os.fstatvfs(fd).f_frsize or os.fstat(fd).st_blksize or 4096
        size = os.fstat(fd).st_size
        length = -(-(len(prefix) + len(key)) // block) * block
        if size <= 0:
            return False
        if fallocate(fd, _FALLOC_FL_INSERT_RANGE, 0, length) != 0:
            error = ctypes.get_errno()
            if error in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return False  # this filesystem cannot: the file is unchanged
            raise OSError(error, os.strerror(error))
        _pwrite_all(fd, prefix + b" " * (length - len(prefix) - len(key)) + key, 0)
        _pwrite_all(fd, suffix, size + length)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def _assemble(path: str, head: bytes, array_path: str, tail: bytes) -> None:
    """head + the array file + tail into ``path``; sendfile lets the kernel copy the array."""
    with open(path, "wb") as out, open(array_path, "rb") as array:
        out.write(head)
        out.flush()
        remaining = os.fstat(array.fileno()).st_size
        try:
            while remaining > 0:
                sent = os.sendfile(out.fileno(), array.fileno(), None, remaining)
                if sent == 0:
                    break
                remaining -= sent
        except (AttributeError, OSError):  # no sendfile for these files (or this OS): copy in chunks
            pass
        if remaining > 0:
            array.seek(os.fstat(array.fileno()).st_size - remaining)
            shutil.copyfileobj(array, out, length=1 << 20)
        out.write(tail)
        out.flush()
        os.fsync(out.fileno())


def _file_mode(output: Path) -> int:
    """The existing export's mode, or 0666 minus the umask, like a plain open() would give."""
    try:
        return output.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
