#!/usr/bin/env python3
"""Customer pipeline: REST API -> DuckDB warehouse -> sorted JSON export.

    python pipeline.py run --demo            # offline: the bundled demo API on 127.0.0.1
    python pipeline.py run                   # https://reqres.in/api (PIPELINE_API_KEY for a key)
    python pipeline.py status                # runs, model versions, data tests

This file is thin on purpose: it parses arguments, calls ``transform.orchestrate`` and
turns expected failures into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path


def _stop_said(terminated: bool) -> tuple[str, int]:
    """How a stop is named on its line, and the exit code it gives: SIGTERM's or Ctrl-C's."""
    return ("terminated (SIGTERM)", 143) if terminated else ("interrupted", 130)


def _exit_on_stop(when: str):
    """A handler for a stop outside the command's own (the modules loading, Python exiting):
    one line saying ``when`` it came and what that means, the stop's exit code, at once."""
    def handler(signum, frame):
        how, code = _stop_said(signum == signal.SIGTERM)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            print(f"error: {how} {when}", file=sys.stderr, flush=True)
        os._exit(code)
    return handler


if __name__ == "__main__":  # before the imports below (DuckDB's takes ~0.1 s): main() puts its own in place
    _early_stop = _exit_on_stop("while starting; nothing was done")
    signal.signal(signal.SIGINT, _early_stop)
    signal.signal(signal.SIGTERM, _early_stop)

from extract.cli import OneLineParser  # noqa: E402
from extract.client import RetryPolicy
from extract.errors import (PipelineError, Terminated, UsageError, as_interrupt, defer, forget_signals,
                            note_signal)
from extract.progress import Progress
from extract.redact import RedactingFilter, redact, url_secrets
from transform import orchestrate
from transform.orchestrate import DEFAULT_BASE_URL, RunSummary, Settings

__all__ = ["run_pipeline", "main"]

ENV_PREFIX = "PIPELINE_"


# -- the Python API ----------------------------------------------------------------------------


def run_pipeline(
    base_url: str = DEFAULT_BASE_URL,
    output_file: str | os.PathLike = "sample_output.json",
    *,
    api_key: str | None = None,
    per_page: int = 100,
    concurrency: int = 4,
    warehouse: str | os.PathLike = "warehouse/customers.duckdb",
    max_requests_per_minute: int | None = None,
    resume: bool = False,
    demo: bool = False,
    quiet: bool = True,
    lock_timeout: float = 10.0,
    retry: RetryPolicy | None = None,
    **options,
) -> RunSummary:
    """Extract, build, test and export; the same thing as ``python pipeline.py run``.

    Raises ``PipelineError`` (with one clear message) when the run fails; the previous
    marts and export are then untouched.
    """
    settings = Settings(
        base_url=base_url,
        api_key=api_key,
        per_page=per_page,
        concurrency=concurrency,
        max_requests_per_minute=max_requests_per_minute,
        warehouse=Path(warehouse),
        output=Path(output_file),
        resume=resume,
        quiet=quiet,
        lock_timeout=lock_timeout,
        retry=retry or RetryPolicy(),
        **options,
    )
    with _demo_server(demo) as demo_url:
        if demo_url:
            settings.base_url = demo_url
        return orchestrate.run(settings)


DEMO_PORT = 8642


@contextlib.contextmanager
def _demo_server(enabled: bool, **kwargs):
    """The demo API on 127.0.0.1:DEMO_PORT, or any free port if that one is taken: the same base
    URL from one --demo run to the next, so a demo run that failed can be --resume'd."""
    if not enabled:
        yield None
        return
    from extract.demo_api import DemoAPI

    port = _env_int("DEMO_PORT", DEMO_PORT)
    if not 0 <= port <= 65535:
        raise UsageError(f"{ENV_PREFIX}DEMO_PORT must be a port number from 0 to 65535, not {port}")
    server = DemoAPI(port=port, **kwargs)
    try:
        server.start()
    except OSError:
        server = DemoAPI(port=0, **kwargs)
        server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


# -- the CLI ------------------------------------------------------------------------------------


def _env(name: str, default=None):
    return os.environ.get(ENV_PREFIX + name, default)


MAX_COUNT = 1_000_000_000  # runs to show or keep: any more is a typo (and DuckDB's integers end at 2**31)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_COUNT:,}, not {value}")
    return value


def _env_int(name: str, default):
    value = _env(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{ENV_PREFIX}{name} must be a whole number, not {value!r}") from None


def _env_float(name: str, default):
    value = _env(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{ENV_PREFIX}{name} must be a number, not {value!r}") from None


def _add_warehouse_flags(parser):
    group = parser.add_argument_group("warehouse")
    group.add_argument("--warehouse", type=Path, default=Path(_env("WAREHOUSE", "warehouse/customers.duckdb")),
                       help="DuckDB file (default %(default)s; env PIPELINE_WAREHOUSE)")
    group.add_argument("--lock-timeout", type=float, default=_env_float("LOCK_TIMEOUT", 10.0), metavar="SECONDS",
                       help="wait this long for another process (DBeaver, the DuckDB CLI) to release the "
                            "warehouse before failing (default %(default)s; env PIPELINE_LOCK_TIMEOUT)")
    group.add_argument("--threads", type=int, default=_env_int("THREADS", None),
                       help="DuckDB threads (default: all cores; env PIPELINE_THREADS)")
    group.add_argument("--memory-limit", default=_env("MEMORY_LIMIT"), metavar="SIZE",
                       help="DuckDB memory_limit, e.g. 2GB (default: DuckDB's, 80%% of RAM; env PIPELINE_MEMORY_LIMIT)")
    group.add_argument("--sql-dir", type=Path, default=Path(_env("SQL_DIR", str(orchestrate.SQL_DIR))),
                       help="the SQL project: staging/, intermediate/, marts/, tests/, export/, macros/ "
                            "(default: the bundled sql/; env PIPELINE_SQL_DIR)")
    group.add_argument("--storage-version", default=_env("STORAGE_VERSION", "v1.0.0"),
                       help="DuckDB storage version a new warehouse is written with, so older readers "
                            "(DBeaver's driver) open it (default %(default)s)")


def _add_source_flags(parser):
    group = parser.add_argument_group("source API")
    group.add_argument("--base-url", default=_env("BASE_URL", DEFAULT_BASE_URL),
                       help="API root; pages are GET {base-url}/users?page=N&per_page=M "
                            "(default %(default)s; env PIPELINE_BASE_URL)")
    group.add_argument("--api-key", default=None,
                       help="sent as the x-api-key header. Visible to other users in `ps`: prefer the "
                            "PIPELINE_API_KEY environment variable")
    group.add_argument("--per-page", type=int, default=_env_int("PER_PAGE", 100),
                       help="records per request (default %(default)s; env PIPELINE_PER_PAGE)")
    group.add_argument("--concurrency", type=int, default=_env_int("CONCURRENCY", 4),
                       help="pages fetched at once after page 1 (default %(default)s; env PIPELINE_CONCURRENCY)")
    group.add_argument("--max-requests-per-minute", type=int, default=_env_int("MAX_REQUESTS_PER_MINUTE", None),
                       metavar="N", help="client-side rate limit, retries included (reqres.in allows about 20; "
                                         "default: none; env PIPELINE_MAX_REQUESTS_PER_MINUTE)")
    group.add_argument("--max-attempts", type=int, default=_env_int("MAX_ATTEMPTS", RetryPolicy.attempts), metavar="N",
                       help="tries per page before the run fails, for 429/5xx/timeouts/bad bodies; waits grow "
                            "exponentially (with jitter) up to 30 s; a host that does not resolve or refuses before it has "
                            "answered once gets 2 (default %(default)s; env PIPELINE_MAX_ATTEMPTS)")
    group.add_argument("--resume", action="store_true",
                       help="continue the last run if it failed during extraction: fetch only the pages it "
                            "did not land, then build and export as usual")
    group.add_argument("--demo", action="store_true",
                       help="start the bundled demo API on 127.0.0.1 and sync from it (no network needed); "
                            f"port {DEMO_PORT} (env PIPELINE_DEMO_PORT), any free one if that is taken")
    group.add_argument("--keep-runs", type=int, default=_env_int("KEEP_RUNS", None), metavar="N",
                       help="after extracting, delete the raw pages of all but the last N runs whose extraction "
                            "completed (default: keep all; first_seen_at and runs_seen count the runs kept)")


def _add_build_flags(parser):
    parser.add_argument("--full-refresh", action="store_true",
                        help="rebuild every model from raw, even the unchanged ones and those kept up to date run "
                             "by run (incremental: by_run), instead of skipping or extending them")


def _add_output_flag(parser):
    parser.add_argument("--output", type=Path, default=Path(_env("OUTPUT", "sample_output.json")),
                        help="where the JSON export is written, atomically (default %(default)s; env PIPELINE_OUTPUT)")


def _add_common(parser):
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines (errors still go to stderr)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pipeline.py",
        description="Sync customers from a paginated REST API into a DuckDB warehouse, build the SQL models, "
                    "test them and export one sorted JSON document.",
        epilog="examples:\n  python pipeline.py run --demo\n  PIPELINE_API_KEY=... python pipeline.py run\n"
               "  python pipeline.py status",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    commands.required = True

    def command(name, help_text, example):
        return commands.add_parser(
            name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    run = command("run", "extract, build, test and export: the whole pipeline",
                  "python pipeline.py run --demo --output out.json")
    _add_source_flags(run), _add_build_flags(run), _add_output_flag(run), _add_warehouse_flags(run), _add_common(run)

    extract = command("extract", "fetch every page into raw.api_pages (no build, no export)",
                      "python pipeline.py extract --base-url http://127.0.0.1:8000/api")
    _add_source_flags(extract), _add_warehouse_flags(extract), _add_common(extract)

    build = command("build", "build the models from the latest landed run, test them, publish them",
                    "python pipeline.py build")
    _add_build_flags(build), _add_warehouse_flags(build), _add_common(build)

    test = command("test", "run the data tests against the published models",
                   "python pipeline.py test")
    _add_warehouse_flags(test), _add_common(test)

    export = command("export", "write the JSON export from the published marts",
                     "python pipeline.py export --output customers.json")
    _add_output_flag(export), _add_warehouse_flags(export), _add_common(export)

    status = command("status", "show the last runs, each model's version (and whether its SQL changed), "
                               "and the last data test results", "python pipeline.py status --runs 10")
    status.add_argument("--runs", type=_at_least_one, default=5, metavar="N",
                        help="how many runs to show, at least 1 (default %(default)s)")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_warehouse_flags(status), _add_common(status)

    docs = command("docs", "write the data docs page: lineage, versions, tests, quality and runs, one "
                           "self-contained HTML file (also written after every successful run)",
                   "python pipeline.py docs --output /tmp/warehouse-docs.html")
    docs.add_argument("--output", type=Path, default=None,
                      help="where to write the page (default: <warehouse folder>/docs/index.html for customers.duckdb, "
                           "<warehouse folder>/docs/<file name>.html for another warehouse)")
    _add_warehouse_flags(docs), _add_common(docs)

    demo = command("demo-api", "serve the bundled reqres-compatible demo API until Ctrl-C",
                   "python pipeline.py demo-api --port 8000")
    demo.add_argument("args", nargs=argparse.REMAINDER, help="flags for the demo server (see demo-api -- --help)")
    return parser


def _settings(args) -> Settings:
    api_key = getattr(args, "api_key", None) or _env("API_KEY") or None
    return Settings(
        base_url=getattr(args, "base_url", DEFAULT_BASE_URL),
        api_key=api_key,
        per_page=getattr(args, "per_page", 100),
        concurrency=getattr(args, "concurrency", 4),
        max_requests_per_minute=getattr(args, "max_requests_per_minute", None),
        warehouse=args.warehouse,
        output=getattr(args, "output", Path("sample_output.json")),
        resume=getattr(args, "resume", False),
        quiet=args.quiet,
        lock_timeout=args.lock_timeout,
        storage_version=args.storage_version,
        threads=args.threads,
        memory_limit=args.memory_limit,
        keep_runs=getattr(args, "keep_runs", None),
        full_refresh=getattr(args, "full_refresh", False),
        sql_dir=args.sql_dir,
        retry=RetryPolicy(attempts=getattr(args, "max_attempts", RetryPolicy.attempts)),
    )


def _done(summary: RunSummary) -> str:
    return f"run {summary.run_id} {summary.status}" if summary.run_id is not None else "the export is written"


def _to_stdout(show, *args, done: str | None = None) -> None:
    """Print a finished command's summary; stdout that cannot take it (a full disk, a closed
    terminal) is one line on stderr saying the work itself is done, not a traceback."""
    try:
        show(*args)
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader left (`| head`): handled in main
    except OSError as exc:
        reason = exc.strerror or exc
        raise PipelineError(f"{done}, but its summary could not be written to stdout ({reason})" if done
                            else f"could not write to stdout ({reason})") from None


def _print_tests(results) -> None:
    for r in results:
        print(f"{r.status:<4} {r.test}" + (f" ({r.failing_rows} failing rows)" if r.failing_rows else ""))


def _print_summary(summary: RunSummary, out=None) -> None:
    out = out or sys.stdout
    meta = summary.metadata
    who = f"run {summary.run_id}" if summary.run_id is not None else "export"  # export alone names no run
    parts = [f"{who} {summary.status} in {summary.seconds:.1f}s"]
    if summary.pages:
        parts.append(f"{summary.pages} pages, {summary.records} records, {summary.requests} requests, {summary.retries} retries")
    if summary.built or summary.skipped:
        parts.append(f"{len(summary.built)} models built, {len(summary.skipped)} unchanged")
    if meta:
        q = meta.get("data_quality_summary") or {}
        parts.append(
            f"{meta.get('total_customers')} customers ({meta.get('duplicates_removed')} duplicates removed, "
            f"{meta.get('records_quarantined')} quarantined; quality high {q.get('high_quality')} / "
            f"medium {q.get('medium_quality')} / low {q.get('low_quality')}) -> {summary.output}"
        )
    print("; ".join(parts), file=out)
    if summary.docs:
        print(f"data docs: {summary.docs}", file=out)
    for warning in summary.warnings:
        if warning not in summary.warnings_logged:  # not twice: the extraction's were logged live
            print(f"warning: {warning}", file=sys.stderr)


def _print_status(info: dict, as_json: bool) -> None:
    if as_json:  # objects with named fields, times in ISO 8601 (UTC)
        print(json.dumps(info, indent=2, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))
        return
    print("runs (newest first):")
    for run in info["runs"]:
        started, finished = run["started_at"], run["finished_at"]
        shown = "died" if run.get("stale") else run["status"]
        line = f"  #{run['run_id']} {shown:<9} started {started:%Y-%m-%d %H:%M:%S} UTC"
        if finished:
            line += f", {(finished - started).total_seconds():.1f}s"
        line += f", {run['pages_landed'] or 0} pages, {run['records_landed'] or 0} records"
        if run["requests"] is not None:  # unknown for a run that died before counting them
            line += f", {run['requests']} requests, {run['retries'] or 0} retries"
        if run["customers_exported"] is not None:
            line += f", {run['customers_exported']} customers exported"
        if run["error"]:
            where = "" if run["failed_stage"] in (None, "interrupted") else f" in {run['failed_stage']}"
            line += f"\n      failed{where}: {run['error']}"
        if run.get("stale"):
            line += "\n      its process stopped before it finished (killed or crashed); the next run marks it failed"
        print(line)
    print("models (in build order):")
    for model in info["models"]:
        if "error" in model:
            print(f"  error: {model['error']}")
            continue
        if model["built_version"] is None:
            state = "not built yet"
        elif model["changed"]:
            state = f"SQL changed since build (built {model['built_version']})"
        else:
            state = "up to date"
        rows = "" if model["rows"] is None else f", {model['rows']} rows"
        print(f"  {model['model']:<45} {model['current_version']}  {state}{rows}")
    print("last data tests:")
    for test in info["tests"]:
        print(f"  {test['status']:<4} {test['test']}" + (f" ({test['failing_rows']} failing rows)"
                                                          if test["failing_rows"] else ""))


def _terminate(signum, frame):
    note_signal(Terminated)
    if not defer(Terminated):
        raise Terminated()


def _interrupt(signum, frame):
    note_signal(KeyboardInterrupt)
    if not defer(KeyboardInterrupt):
        raise KeyboardInterrupt()


# once the command has finished: the default action would kill the process without a word
_late_stop = _exit_on_stop("as the command was exiting; its outcome above stands")


def main(argv=None, exiting: bool = False) -> int:
    """The CLI. ``exiting``: the process ends when this returns (``python pipeline.py``): a stop
    after the command is then reported, not left to the default action."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo-api"]:
        from extract.demo_api import main as demo_main

        rest = argv[1:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return demo_main(rest, prog="python pipeline.py demo-api")
    secret = os.environ.get(ENV_PREFIX + "API_KEY")
    secrets = (secret, *url_secrets(os.environ.get(ENV_PREFIX + "BASE_URL")))
    debug = "--debug" in argv
    forget_signals()
    previous_term = signal.signal(signal.SIGTERM, _terminate)
    previous_int = signal.signal(signal.SIGINT, _interrupt)
    try:
        args = build_parser().parse_args(argv)
        settings = _settings(args)
        secret = settings.api_key
        # Settings.validate strips the key
        secrets = (*((secret, secret.strip()) if secret else ()), *url_secrets(settings.base_url))
        logging.addLevelName(logging.WARNING, "warning")  # as the summary's own lines say it
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        for handler in logging.getLogger().handlers:
            handler.addFilter(RedactingFilter(*secrets))
        progress = Progress(quiet=args.quiet)
        if args.command in ("run", "extract"):
            steps = ("extract", "build", "export") if args.command == "run" else ("extract",)
            settings.validate(steps)  # bad flags before the demo API starts (and says so)
            with _demo_server(args.demo) as demo_url:
                if demo_url:
                    settings.base_url = demo_url
                    progress.line(f"demo API serving on {demo_url}")
                summary = orchestrate.run(settings, steps, progress)
            _to_stdout(_print_summary, summary, done=_done(summary))
        elif args.command in ("build", "export"):
            summary = orchestrate.run(settings, (args.command,), progress)
            _to_stdout(_print_summary, summary, done=_done(summary))
        elif args.command == "test":
            results = orchestrate.run_tests_only(settings)
            failing = [r for r in results if r.status != "pass"]
            _to_stdout(_print_tests, results)
            if failing:
                print(f"error: {len(failing)} of {len(results)} data tests failed", file=sys.stderr)
                return 1
        elif args.command == "docs":
            settings.docs_output = args.output
            written = orchestrate.write_docs_only(settings)
            _to_stdout(print, f"wrote {written}", done=f"wrote {written}")
        elif args.command == "status":
            _to_stdout(_print_status, orchestrate.status(settings, args.runs), args.json)
        return 0
    except PipelineError as exc:
        print(f"error: {redact(str(exc), *secrets)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except BrokenPipeError:  # `pipeline.py status | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # a bug: still one line, traceback on request
        if as_interrupt(exc) is not exc:  # Ctrl-C or SIGTERM while DuckDB ran a query
            return _interrupted(as_interrupt(exc))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if exc.__class__.__name__ == "OutOfMemoryException":  # DuckDB's: a --memory-limit too small
            print(f"error: DuckDB ran out of memory ({redact(first, *secrets)}); allow it more with "
                  "--memory-limit (or PIPELINE_MEMORY_LIMIT), or use fewer --threads", file=sys.stderr)
            return 1
        if debug:
            traceback.print_exc()
        print(f"error: unexpected {exc.__class__.__name__}: {redact(first, *secrets)} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, _late_stop if exiting else previous_term)
        signal.signal(signal.SIGINT, _late_stop if exiting else previous_int)


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM: one line saying what the stop left, exit 130 or 143."""
    how, code = _stop_said(isinstance(exc, Terminated))
    run_id = getattr(exc, "published_run", None)  # set when the build had committed
    if run_id is None:
        print(f"error: {how}; the last good warehouse and export are unchanged", file=sys.stderr)
    elif getattr(exc, "completed", False):
        print(f"error: {how} as run {run_id} finished: it succeeded, and its warehouse and export "
              "are in place", file=sys.stderr)
    elif getattr(exc, "exported", False):
        print(f"error: {how} after run {run_id} was published and exported; the data docs page "
              "was not written (`python pipeline.py docs` writes it)", file=sys.stderr)
    else:
        print(f"error: {how} after run {run_id} was published; the last export is unchanged "
              "(`python pipeline.py export` writes the new one)", file=sys.stderr)
    return code


if __name__ == "__main__":
    for stream in (sys.stdout, sys.stderr):  # a path or name the terminal's encoding cannot show: escaped
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    status = main(exiting=True)
    # Everything is closed (the warehouse, the export, the lock). Python's own shutdown (threads,
    # modules, DuckDB's teardown: ~40 ms) runs no signal handler, so a stop then killed the
    # process without a word; exiting now leaves no such window.
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)
