"""The failures the pipeline expects, each one clear line for the user.

Anything raised as a ``PipelineError`` is printed by the CLI as ``error: <message>``
with a non-zero exit and no traceback; anything else is a bug and keeps its traceback
behind ``--debug``.
"""

import contextlib


class PipelineError(Exception):
    """An expected failure: bad input, a failing API, a locked warehouse, a failed test."""

    exit_code = 1


class UsageError(PipelineError):
    """A flag or environment variable with a value the pipeline cannot use."""

    exit_code = 2


class ApiError(PipelineError):
    """The API refused or kept failing; the message names the page and the status."""


class Cancelled(PipelineError):
    """A request stopped because the run is stopping (another page failed, Ctrl-C, a locked warehouse)."""


class WarehouseError(PipelineError):
    """The warehouse file is locked, damaged, not a DuckDB database, or refused a batch of pages."""


class ModelError(PipelineError):
    """A model could not be rendered or built (names the model file)."""


class DataTestError(PipelineError):
    """One or more data tests returned rows; nothing was published."""


class RunLockedError(PipelineError):
    """Another run holds the warehouse's run lock."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (cron's and orchestrators' stop): unwinds like Ctrl-C, so the run is marked failed."""


_signals: list[type[KeyboardInterrupt]] = []  # what the CLI's signal handlers raised, newest last


_deferring = 0  # inside signals_deferred(): the handlers note a stop instead of raising it
_deferred: list[type[KeyboardInterrupt]] = []


def forget_signals() -> None:
    """A new command starts: interrupts noted by an earlier one (library use) do not carry over."""
    _signals.clear()
    _deferred.clear()


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C and SIGTERM wait until the block is done: a commit cut short by an interrupt may
    have happened or not, and a rollback cut short leaves DuckDB mid-cleanup. The CLI's handlers
    note a stop that comes meanwhile (``defer``); ``raise_deferred()`` raises it afterwards."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def defer(kind: type[KeyboardInterrupt]) -> bool:
    """For a signal handler: True (and the stop noted) when it must not raise now."""
    if _deferring:
        _deferred.append(kind)
        return True
    return False


def forget_deferred() -> None:
    """A command ends: a stop held back and not raised (its run failed otherwise) goes with it."""
    _deferred.clear()


def raise_deferred() -> None:
    """Raise the stop that came during a ``signals_deferred()`` block, if one did."""
    if _deferred:
        kind = _deferred[-1]
        _deferred.clear()
        raise kind()


def note_signal(kind: type[KeyboardInterrupt]) -> None:
    """A signal handler says which interrupt it is raising (KeyboardInterrupt or Terminated)."""
    _signals.append(kind)


def first_line(exc: BaseException) -> str:
    """An exception's message up to its first line break (DuckDB's run on for lines), or its
    class name when it has none."""
    text = str(exc)
    return text.splitlines()[0] if text else exc.__class__.__name__


def as_interrupt(exc: BaseException) -> BaseException:
    """``exc``, or the interrupt it stands for.

    A KeyboardInterrupt (Ctrl-C, or Terminated from SIGTERM) raised while DuckDB runs a query
    reaches Python as ``RuntimeError('Query interrupted')``; the pipeline's own interrupts of
    other cursors never reach the main thread. Handed back as the interrupt it was, a stop
    during the build or the checkpoint is recorded and reported like one anywhere else.
    """
    if isinstance(exc, RuntimeError) and str(exc).startswith("Query interrupted"):
        interrupt = (_signals[-1] if _signals else KeyboardInterrupt)()
        for name in ("published_run", "exported", "completed"):
            if hasattr(exc, name):
                setattr(interrupt, name, getattr(exc, name))
        return interrupt
    return exc
