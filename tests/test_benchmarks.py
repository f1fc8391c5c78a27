"""Smoke tests of the benchmarks: they run, print their tables, and the outputs agree.

Never asserts a timing: benchmarks measure, CI machines vary.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_scale_bench_smoke(tmp_path):
    out = tmp_path / "results.md"
    proc = _run(str(BENCH / "scale_bench.py"), "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    for expected in (
        "machine:",
        "N = 2,000 customers",
        "stage", "pipeline s", "floor s", "ratio", "peak RSS MB",
        "extract + land", "build: models", "build: data tests", "export", "build + test + export", "end to end",
        "python baseline:",
        "check floor vs pipeline: OK",
        "check baseline vs pipeline: OK",
        "dim_customers",
        "Goals",
        "outputs: OK",
    ):
        assert expected in text, f"{expected!r} missing from:\n{text}"
    assert "MISMATCH" not in text
    markdown = out.read_text(encoding="utf-8")
    assert "| stage | pipeline s | floor s | ratio | peak RSS MB |" in markdown
    assert "check floor vs pipeline: OK" in markdown


def test_extract_bench_small():
    proc = _run(str(BENCH / "extract_bench.py"), "--pages", "20", "--latency", "0.01", "--repeat", "1",
                "--quiet-wait", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    for expected in (
        "machine:",
        "mode", "concurrency", "run s", "extract s", "pages/s (run)",
        "sequential", "concurrent", "speedup:", "besides extracting, a run spends",
        "requests", "429s", "requests/page",
        "requests per page:",
    ):
        assert expected in text, f"{expected!r} missing from:\n{text}"


def _extract_bench():
    import importlib

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("extract_bench")


def test_a_disturbed_speed_run_is_repeated_and_reported():
    loads = iter([0.5, 0.1, 0.3, 0.05, 0.02, 0.01])
    kept, repeated = _extract_bench().undisturbed_runs(3, 0.2, lambda: {"others": next(loads)})
    assert [r["others"] for r in kept] == [0.1, 0.05, 0.02]
    assert [r["others"] for r in repeated] == [0.5, 0.3]
    assert next(loads) == 0.01  # no run after the third undisturbed one


def test_a_machine_that_stays_busy_keeps_the_least_disturbed_runs():
    loads = iter([0.9, 0.4, 0.7, 0.3, 0.8, 0.6, 0.05])
    kept, repeated = _extract_bench().undisturbed_runs(2, 0.2, lambda: {"others": next(loads)})
    assert sorted(r["others"] for r in kept) == [0.3, 0.4]  # 3 x 2 runs in all, then the best two
    assert sorted(r["others"] for r in repeated) == [0.6, 0.7, 0.8, 0.9]
    assert next(loads) == 0.05


def test_the_fixed_cost_budget_is_what_leaves_the_goal_speedup():
    budget = _extract_bench().fixed_cost_budget(11.3, 1.43, 6.0)
    assert 11.3 / (1.43 + budget) == pytest.approx(6.0)  # spending exactly the budget is the goal


def test_history_bench_small():
    proc = _run(str(BENCH / "history_bench.py"), "--syncs", "3", "--pages", "2", "--per-page", "10",
                "--merge-row-groups")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.strip().startswith("syncs"))
    assert header.split() == ["syncs", "way", "build", "s", "run", "s", "slowest", "run", "s", "file", "MB"]
    table = [line.split() for line in proc.stdout.splitlines() if line.startswith("  ") and line.split()[0][0].isdigit()]
    ways = ["as it runs", "--full-refresh", "row groups merged"]
    assert [(row[0], " ".join(row[1:-4])) for row in table] == [(sync, way) for sync in ("2", "3") for way in ways]
    assert all(float(row[-1]) > 0 for row in table)  # the file's size


def test_history_bench_groups_cover_every_sync_after_the_first():
    import importlib

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench = importlib.import_module("history_bench")
    assert bench.groups(20) == [(2, 5), (6, 9), (10, 13), (14, 20)]
    assert bench.groups(3) == [(2, 2), (3, 3)]
