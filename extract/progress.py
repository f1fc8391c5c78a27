"""The progress line: live on a terminal, one line every few seconds in logs, silent with --quiet."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, stream=None, quiet: bool = False, interval: float | None = None, stats=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.stats = stats  # ClientStats: requests, retries
        self.started = time.monotonic()
        self.last = 0.0
        self.dirty = False

    def update(self, result, total_pages, pending: int = 0, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        done = result.pages_landed + pending
        requests_ = self.stats.requests if self.stats else 0
        retries = self.stats.retries if self.stats else 0
        rate = requests_ / elapsed
        if total_pages:
            pages = f"{done}/{total_pages} pages"
            remaining = max(total_pages - done, 0)
            eta = f", ETA {remaining / (done / elapsed):.0f}s" if done else ""
        else:
            pages, eta = f"{done} pages", ""
        line = (f"extract: {pages}, {result.records_landed:,} records landed, "
                f"{rate:.1f} req/s, {retries} retries{eta}")
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.dirty = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self.dirty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
            self.dirty = False

    def line(self, text: str) -> None:
        """A step line (build, test, export): always on its own line."""
        if self.quiet:
            return
        self.done()
        self.stream.write(text + "\n")
        self.stream.flush()
