"""One gate in front of every request of a run, shared by all workers.

It holds three rules at once, so the pool behaves as one polite client:

- **in flight**: at most ``limit`` requests at a time. ``limit`` starts at
  ``--concurrency``, halves on a 429 (at most once per pause, so one burst of 429s is one
  congestion event) and grows back by one after ``recover_after`` successes in a row
  (AIMD, as TCP does);
- **pause**: a 429's ``Retry-After`` (or the backoff when it has none) pauses *every*
  worker until it has passed, instead of each worker retrying on its own schedule;
  The limit at which a 429 came is remembered: growing back to it takes
  ``probe_factor`` times longer, so a server with a hard cap is probed rarely, not every
  ``recover_after`` requests;
- **rate**: with ``max_requests`` per ``window`` seconds, a sliding log of send times
  guarantees no window of that length ever holds more than ``max_requests`` sends
  (retries included). The log counts a little more than the window (1 s a minute, at least
  0.1 s), since the server counts arrivals, which jitter can bring closer together than sends.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from .errors import Cancelled


class Throttle:
    def __init__(
        self,
        concurrency: int,
        max_requests: int | None = None,
        window: float = 60.0,
        recover_after: int = 20,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.max_limit = concurrency
        self.limit = concurrency
        self.max_requests = max_requests
        self.window = window
        self.recover_after = recover_after
        self.default_pause = default_pause
        self.max_pause = max_pause
        self.clock = clock
        self.in_flight = 0
        self.pause_until = 0.0
        self.calm_until = 0.0
        self.min_event_gap = 0.25
        self.successes = 0
        # a request can reach the server later than the throttle let it go (thread scheduling,
        # a busy machine): never less than 0.1 s of margin, however short the window
        self.margin = max(window / 60.0, 0.1)
        self.ceiling: int | None = None  # the limit a 429 last came at
        self.probe_factor = 5
        self.sent: collections.deque[float] = collections.deque()
        self.send_log: list[float] = []  # every send time, for the rate test and stats
        self.cancelled = False
        self._cond = threading.Condition()

    def _wait_needed(self, now: float) -> float | None:
        """Seconds to wait before a send may go, or None if it may go now (lock held)."""
        if self.in_flight >= self.limit:
            return 0.05  # woken by release(); the timeout only guards against lost wakeups
        if now < self.pause_until:
            return self.pause_until - now
        if self.max_requests:
            span = self.window + self.margin
            while self.sent and now - self.sent[0] >= span:
                self.sent.popleft()
            if len(self.sent) >= self.max_requests:
                return self.sent[0] + span - now
        return None

    def acquire(self) -> None:
        with self._cond:
            while True:
                if self.cancelled:
                    raise Cancelled("the run is stopping: request not sent")
                now = self.clock()
                wait = self._wait_needed(now)
                if wait is None:
                    break
                self._cond.wait(timeout=max(0.001, min(wait, 1.0)))
            self.in_flight += 1
            now = self.clock()
            if self.max_requests:
                self.sent.append(now)
            self.send_log.append(now)

    def cancel(self) -> None:
        """Stop: workers waiting for their turn raise ``Cancelled`` at once, none send again."""
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()

    def release(self, ok: bool) -> None:
        with self._cond:
            self.in_flight -= 1
            if ok:
                self.successes += 1
                needed = self.recover_after
                if self.ceiling is not None and self.limit + 1 >= self.ceiling:
                    needed *= self.probe_factor  # back where the server said no: probe rarely
                if self.limit < self.max_limit and self.successes >= needed:
                    self.limit += 1
                    self.successes = 0
            self._cond.notify_all()

    def on_throttled(self, retry_after: float | None) -> None:
        """A 429: halve the pool (once per pause) and pause everyone until Retry-After."""
        with self._cond:
            now = self.clock()
            pause = self.default_pause if retry_after is None else retry_after
            pause = min(max(pause, 0.0), self.max_pause)
            if now >= self.calm_until:  # one burst of 429s is one congestion event
                self.ceiling = self.limit
                self.limit = max(1, self.limit // 2)
                self.calm_until = now + max(pause, self.min_event_gap)
            self.successes = 0
            self.pause_until = max(self.pause_until, now + pause)
            self._cond.notify_all()
