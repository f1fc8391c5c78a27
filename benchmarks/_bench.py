"""Shared helpers of the benchmarks: measured child processes, the machine, tables."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable


def _cpu_jiffies() -> tuple[float, float]:
    """(busy, steal) seconds of all CPUs since boot, from /proc/stat; (0, 0) where unavailable."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _own_cpu() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    return self_.ru_utime + self_.ru_stime


class CpuMeter:
    """How busy the machine was with OTHER work while a measurement ran.

    ``others`` = average cores used by processes outside this benchmark (all CPU time on the
    machine minus this process's and the measured child's), ``steal`` = average cores the
    hypervisor took. Either above ~0.2 on a 2-core machine means the timing is disturbed.
    """

    def __enter__(self) -> "CpuMeter":
        self.busy0, self.steal0 = _cpu_jiffies()
        self.own0 = _own_cpu()
        self.t0 = time.perf_counter()
        self.child_cpu = 0.0
        return self

    def __exit__(self, *exc) -> None:
        busy, steal = _cpu_jiffies()
        wall = max(time.perf_counter() - self.t0, 1e-6)
        ours = (_own_cpu() - self.own0) + self.child_cpu
        self.others = max(0.0, (busy - self.busy0) - ours) / wall
        self.steal = max(0.0, steal - self.steal0) / wall


def wait_quiet(max_wait: float, threshold: float = 0.25, sample: float = 1.0) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` cores; seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < max_wait:
        with CpuMeter() as meter:
            time.sleep(sample)
        if meter.others < threshold:
            break
    return time.perf_counter() - started


@dataclass
class ChildResult:
    cmd: list[str]
    returncode: int
    wall: float  # seconds from spawn to exit, interpreter start-up included
    max_rss_mb: float  # the child's peak resident set (os.wait4's ru_maxrss), MB
    stdout: str
    stderr: str
    cpu: float = 0.0  # the child's user + system CPU seconds
    others: float = 0.0  # average cores used by other processes meanwhile (see CpuMeter)
    steal: float = 0.0

    def json(self) -> dict:
        """The child's last stdout line, parsed (our children print one JSON line)."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        if self.returncode != 0 or not lines:
            raise RuntimeError(
                f"{' '.join(self.cmd[1:4])} failed (exit {self.returncode}): "
                + _error_lines(self.stderr)
            )
        return json.loads(lines[-1])


def _error_lines(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line or "Exception" in line]
    return " | ".join(errors[-2:] or lines[-1:]) or "no output"


def run_child(cmd: list[str], timeout: float | None = None, cwd: Path = ROOT) -> ChildResult:
    """Run ``cmd`` to completion; its own wall time and peak RSS (not the parent's)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, CpuMeter() as meter:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd)
        timer = None
        if timeout:
            timer = threading.Timer(timeout, lambda: _kill(proc.pid))
            timer.daemon = True
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - started
        meter.child_cpu = usage.ru_utime + usage.ru_stime
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = ChildResult(cmd, proc.returncode, wall, usage.ru_maxrss / 1024.0,
                             out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                             cpu=meter.child_cpu)
    result.others, result.steal = meter.others, meter.steal
    return result


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        ram_gb = int(match[1]) / 1024 / 1024 if match else None
    except OSError:
        pass
    import duckdb

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram": f"{ram_gb:.1f} GB" if ram_gb else "unknown",
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "os": platform.platform(terse=True),
    }


def machine_line(info: dict) -> str:
    return (f"machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM; "
            f"Python {info['python']}, DuckDB {info['duckdb']}, {info['os']}")


class Table:
    """Rows of cells, printed aligned (numbers right-aligned) or as markdown."""

    def __init__(self, headers: list[str]):
        self.headers = headers
        self.rows: list[list[str]] = []

    def add(self, *cells) -> None:
        self.rows.append([fmt(c) for c in cells])

    def text(self, indent: str = "  ") -> str:
        widths = [max(len(r[i]) for r in [self.headers, *self.rows]) for i in range(len(self.headers))]
        numeric = [all(_numeric(r[i]) for r in self.rows) and i > 0 for i in range(len(self.headers))]

        def line(cells):
            return indent + "  ".join(
                c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)
            ).rstrip()

        rule = indent + "  ".join("-" * w for w in widths)
        return "\n".join([line(self.headers), rule, *(line(r) for r in self.rows)])

    def markdown(self) -> str:
        numeric = [all(_numeric(r[i]) for r in self.rows) and i > 0 for i in range(len(self.headers))]
        head = "| " + " | ".join(self.headers) + " |"
        rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
        body = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return "\n".join([head, rule, *body])


def _numeric(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,.]+(x|%| s| MB)?|—|-", cell.strip()))


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(a, b) -> str:
    if a is None or b is None or b <= 0:
        return "—"
    return f"{a / b:.2f}x"


class Report:
    """Collects what is printed, to write the same thing as markdown."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        print(f"\n{text}\n{'=' * len(text) if level == 1 else '-' * len(text)}", file=self.stream, flush=True)
        self.parts.append(f"\n{'#' * level} {text}\n")

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)
        self.parts.append(text + "  " if text else "")

    def table(self, table: Table) -> None:
        print(table.text(), file=self.stream, flush=True)
        self.parts.append("\n" + table.markdown() + "\n")

    def markdown(self) -> str:
        return "\n".join(self.parts).strip() + "\n"
