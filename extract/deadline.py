"""A deadline for a whole request: connect, headers and body, however slowly they arrive.

requests' timeouts bound each wait for bytes, not the request: a server that trickles a byte
every few seconds never trips the read timeout and keeps a request open for hours. Checking
the clock between chunks of the body does not help either: ``iter_content(65536)`` blocks
until 64 KiB (or the whole body) has arrived, and the headers are read before the caller
sees anything.

So the deadline is kept at the socket: one daemon thread holds the deadline of every request
in flight and, when one passes, shuts that request's socket down (both ways). The read
blocked on it returns at once (an error, or an early end of the body), and the attempt,
seeing its deadline expired, reports a timeout, whatever the read made of the cut. The body
is read exactly as before, so what lands is byte for byte what requests decoded; a request
pays a lock and a set insertion, not a thread or a per-chunk check.

The socket is found through the connection classes ``DeadlineAdapter`` gives the session's
pools: each connection, when it connects or sends a request, tells the deadline of the
attempt running on its thread. Not covered: name resolution (no timeout in Python bounds it)
and a TLS handshake in progress (its socket is not the connection's yet); the connect and
read timeouts bound those as before.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import pool_classes_by_scheme as _DEFAULT_POOL_CLASSES

_RETRY_ABORT = 0.05  # an expired request whose socket is not open yet (connecting) is looked at again this soon

_current = threading.local()  # the Deadline of the attempt running on this thread, if any


class Deadline:
    """One attempt's deadline (``time.monotonic()``), the connection it uses, and whether it passed."""

    __slots__ = ("at", "conn", "expired")

    def __init__(self, at: float):
        self.at = at
        self.conn: HTTPConnection | None = None
        self.expired = False


class Watchdog:
    """The thread that ends requests which outlive their deadline (started at the first one)."""

    def __init__(self):
        self._start_over()
        # a child process has none of the parent's threads, and maybe the lock held by one
        os.register_at_fork(after_in_child=self._start_over)

    def _start_over(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._deadlines: set[Deadline] = set()
        self._wakes_at = math.inf
        self._thread: threading.Thread | None = None

    def watch(self, seconds: float) -> Deadline:
        """Start the deadline of an attempt about to run on this thread; pair with ``unwatch``."""
        deadline = Deadline(time.monotonic() + seconds)
        with self._cond:
            self._deadlines.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="request-deadlines", daemon=True)
                self._thread.start()
            elif deadline.at < self._wakes_at:  # sooner than the thread means to look
                self._cond.notify()
        _current.deadline = deadline
        return deadline

    def unwatch(self, deadline: Deadline) -> bool:
        """The attempt is over; True when its deadline passed first (and its socket was shut).

        Once this returns, the watchdog no longer touches the attempt's connection."""
        if getattr(_current, "deadline", None) is deadline:
            _current.deadline = None
        with self._cond:
            self._deadlines.discard(deadline)
        return deadline.expired

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                wakes_at = math.inf
                for deadline in self._deadlines:
                    if deadline.at <= now:
                        deadline.expired = True
                        _shut(deadline.conn)
                        # again shortly, until the attempt ends: it may still be connecting, or
                        # be on the next connection of a redirect
                        wakes_at = min(wakes_at, now + _RETRY_ABORT)
                    else:
                        wakes_at = min(wakes_at, deadline.at)
                # no notify when an attempt ends: the thread then wakes at a deadline that no
                # longer exists, at most once per attempt, and looks again
                self._wakes_at = wakes_at
                self._cond.wait(None if wakes_at == math.inf else wakes_at - now)


def _shut(conn: HTTPConnection | None) -> None:
    """Shut the connection's socket down, both ways: a read blocked on it returns now.

    shutdown, not close: the file descriptor stays valid for the thread reading it (it cannot
    be reused under that thread by another socket), which closes it when it sees the error.
    Called on the base class for a TLS socket too: SSLSocket.shutdown would drop the TLS state
    that thread is still reading through.
    """
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:  # shut already, or never connected
            pass


def close_connection(deadline: Deadline) -> None:
    """Close the connection an expired attempt used: shut, it may be back in the pool."""
    if deadline.conn is not None:
        try:
            deadline.conn.close()
        except OSError:
            pass


WATCHDOG = Watchdog()


def _track(conn: HTTPConnection) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.conn = conn


class _TrackedHTTPConnection(HTTPConnection):
    def connect(self):
        _track(self)
        return super().connect()

    def request(self, *args, **kwargs):  # a kept-alive connection is not connected again
        _track(self)
        return super().request(*args, **kwargs)


class _TrackedHTTPSConnection(HTTPSConnection):
    def connect(self):
        _track(self)
        return super().connect()

    def request(self, *args, **kwargs):
        _track(self)
        return super().request(*args, **kwargs)


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


def _track_pools(manager) -> None:
    # a SOCKS proxy's manager brings pool classes of its own: left as they are, so through one
    # a request is not cut at its deadline (only reported as timed out if it ends after it)
    if manager.pool_classes_by_scheme is _DEFAULT_POOL_CLASSES:
        manager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, whose connections (direct or through a proxy) tell their attempt's deadline."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        _track_pools(self.poolmanager)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _track_pools(manager)
        return manager
