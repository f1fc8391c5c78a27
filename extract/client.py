"""One HTTP call wrapped by one tenacity policy (the shape of dlt's rest_client).

``ApiClient.get_page(page)`` returns the page exactly as received, or raises:

- ``ApiError`` at once for 401/403/404 and any other 4xx but 408/429 (retrying cannot
  help, and hammering an API with a bad key gets keys revoked);
- ``ApiError`` naming the page after ``attempts`` tries of a transient failure: 429, 5xx,
  408, connection errors, timeouts, a truncated body, or a 200 whose body is not a JSON
  page (``{"data": [...]}``).

Waits are exponential with jitter, capped; a ``Retry-After`` header (seconds or an HTTP
date) is honoured as a lower bound, clamped to ``retry_after_max``, so ``Retry-After: 0``
still waits the backoff and never becomes a hot loop. Every request has a timeout: to
connect, for each wait for bytes, and for the whole attempt (``total_timeout``, kept by
``deadline.WATCHDOG``: a server trickling its answer is cut there and retried).
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import tenacity

from .deadline import WATCHDOG, Deadline, DeadlineAdapter, close_connection
from .errors import ApiError, Cancelled
from .redact import redact, strip_userinfo, url_secrets

API_KEY_HEADER = "x-api-key"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD]")  # \uD800-\uDFFF, and \uD000-\uD7FF (cheaper to let through)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one page before giving up on the run."""

    attempts: int = 6
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0  # for each wait for bytes
    total_timeout: float = 120.0  # for one attempt: connect, headers and the whole body


@dataclass
class Page:
    """A page as received: the bytes are landed unchanged, ``payload`` is their parse."""

    page: int
    url: str
    status: int
    body: str
    payload: dict
    fetched_at: datetime
    attempts: int
    elapsed: float

    @property
    def records(self) -> list:
        data = self.payload.get("data")
        return data if isinstance(data, list) else []


class TransientError(Exception):
    """A failure worth retrying; ``retry_after`` is the server's requested wait, if any.

    ``unreachable``: the host's name did not resolve or nothing listens on its port.
    """

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None,
                 unreachable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.unreachable = unreachable


def _causes(exc: BaseException):
    """``exc`` and what it wraps: requests' ConnectionError holds urllib3's MaxRetryError, whose
    ``reason`` is the NameResolutionError or NewConnectionError raised over the socket's error."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        # ssl.SSLError's reason is a string ("CERTIFICATE_VERIFY_FAILED"), not an exception
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend([current.__cause__, current.__context__, getattr(current, "reason", None)])
        todo.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))


def connection_failure(exc: requests.exceptions.ConnectionError, url: str) -> TransientError:
    """A readable reason for a connection that did not happen (not urllib3's repr), and whether
    the host is unreachable: an unknown name or a refused connection. The host named is the
    one the connection was for: a proxy's, when the request went through one."""
    parts = urlsplit(url)
    host, port = parts.hostname or url, parts.port
    causes = list(_causes(exc))
    for cause in causes:
        conn = getattr(cause, "conn", None)
        if getattr(conn, "host", None):
            host, port = conn.host, getattr(conn, "port", port)
            break
    if isinstance(exc, requests.exceptions.ProxyError):
        host = f"proxy {host}"
    if any(isinstance(c, socket.gaierror) or c.__class__.__name__ == "NameResolutionError" for c in causes):
        return TransientError(f"cannot resolve host {host}", unreachable=True)
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        shown = f"[{host}]" if ":" in host and not host.startswith("proxy ") else host  # an IPv6 address
        return TransientError(f"connection refused by {shown}{f':{port}' if port else ''}", unreachable=True)
    return TransientError(f"could not connect ({_short(exc)})")


def _short(exc: Exception) -> str:
    """An exception's text, cut to 160 characters for one line."""
    text = str(exc) or exc.__class__.__name__
    return text if len(text) <= 160 else text[:157] + "..."


class ApiSession(requests.Session):
    """A Session that never forwards the API key to another host on a redirect.

    requests strips ``Authorization`` on a cross-host redirect but knows nothing of
    ``x-api-key``; this extends the same rule to it. Its adapters let a request's total
    deadline (``RetryPolicy.total_timeout``) cut the connection it is using.
    """

    def __init__(self):
        super().__init__()
        self.mount("https://", DeadlineAdapter())
        self.mount("http://", DeadlineAdapter())

    def rebuild_proxies(self, prepared_request, proxies):
        """A redirect's proxy comes from the environment for the URL it goes to, as in plain
        requests: the session reads the environment once, for the base URL (``trust_env`` is
        off for speed), and another host may be in NO_PROXY or need another proxy."""
        saved = self.trust_env
        self.trust_env = True
        try:
            return super().rebuild_proxies(prepared_request, {})
        finally:
            self.trust_env = saved

    def rebuild_auth(self, prepared_request, response):
        super().rebuild_auth(prepared_request, response)
        if API_KEY_HEADER in prepared_request.headers and self.should_strip_auth(
            response.request.url, prepared_request.url
        ):
            del prepared_request.headers[API_KEY_HEADER]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_seconds(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter in its upper half, capped."""
    base = min(policy.backoff_max, policy.backoff_initial * (2 ** max(0, attempt - 1)))
    jitter = (rng or random).uniform(0.5, 1.0)
    return base * jitter


def validate_page_body(text: str) -> dict:
    """Parse a 200's body; anything but a JSON object with a ``data`` list (or null) is transient.

    The body must be JSON that DuckDB accepts too, since it lands as it came: Python's parser
    takes a lone UTF-16 surrogate escape (``"\\ud800"``), DuckDB's does not, and one such page
    would fail its whole landing batch (the good pages with it).
    """
    try:
        payload = json.loads(text)
        # Only a body with a \uDxxx escape can hold a surrogate (response.text decodes raw bytes
        # with replacement), so almost every page skips the check: a memchr for a backslash
        # (0.1 us for 100 records), then a regex (3 us; `"\\ud" in text` takes 10).
        surrogate = (_lone_surrogate(payload) if "\\" in text and _SURROGATE_ESCAPE.search(text)
                     else None)
    except ValueError as exc:
        raise TransientError(f"the body is not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})")
    except RecursionError:  # '[[[[...' nested deeper than the parser's recursion limit
        raise TransientError("the body is nested too deeply to be a page") from None
    if surrogate is not None:
        raise TransientError(f"the body holds a lone UTF-16 surrogate escape (\\u{ord(surrogate):04x}), "
                             "which is not valid JSON text")
    if not isinstance(payload, dict):
        raise TransientError("the body is JSON but not an object")
    if "data" not in payload:
        raise TransientError("the body has no 'data' key")
    if payload["data"] is not None and not isinstance(payload["data"], list):
        raise TransientError("the body's 'data' is not a list")
    if _maybe_twice(text) and _top_level_keys(text).count("data") > 1:
        # Python keeps the last 'data', DuckDB (which stages the records) the first: the run
        # would count one list and publish the other
        raise TransientError("the body has its 'data' key twice")
    return payload


# "data" with any of its letters written as a \u escape ("d\u0061ta" is the same key)
_DATA_SPELLED = re.compile(r'"(?:d|\\u0064)(?:a|\\u0061)(?:t|\\u0074)(?:a|\\u0061)"')


def _maybe_twice(text: str) -> bool:
    """Whether ``"data"`` may be a key twice: a scan of the text, so that a page is parsed key by
    key only when it might be: the string twice, or an escaped d, a or t (rare: an API escapes
    letters only to be odd; a \\u00e9 does not count) and then "data" spelled twice."""
    return text.count('"data"') > 1 or (("\\u006" in text or "\\u0074" in text)
                                        and len(_DATA_SPELLED.findall(text)) > 1)


def _top_level_keys(text: str) -> list[str]:
    """The keys of a JSON object's top level, repeats included (json.loads keeps the last)."""
    objects: list[list] = []
    json.loads(text, object_pairs_hook=lambda pairs: objects.append(pairs) or dict(pairs))
    return [key for key, _ in objects[-1]] if objects else []  # the outermost object ends last


def _lone_surrogate(payload) -> str | None:
    """The first unpaired surrogate in ``payload``'s strings (keys too), or None.

    json.loads joins an escaped pair (an emoji as \\ud83d\\ude00) into one character, so any
    surrogate left in a parsed string stands alone. Serialising the parse again and encoding
    it as UTF-8 finds one at C speed; the error's position names the character, not the text
    around it (records stay out of messages).
    """
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.object[exc.start]
    return None


@dataclass
class ClientStats:
    """Counters shared by every worker; read by the progress line and the runs table."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, requests_: int = 0, retries: int = 0, throttled: int = 0) -> None:
        with self.lock:
            self.requests += requests_
            self.retries += retries
            self.throttled += throttled


class ApiClient:
    """Fetch pages of ``{base_url}/users``; one pooled session per thread."""

    def __init__(
        self,
        base_url: str,
        per_page: int,
        api_key: str | None = None,
        policy: RetryPolicy | None = None,
        throttle=None,
        sleep: Callable[[float], None] = time.sleep,
        stats: ClientStats | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.per_page = per_page
        self._api_key = api_key
        self._secrets = (api_key, *url_secrets(base_url))
        self.policy = policy or RetryPolicy()
        self.throttle = throttle
        self.sleep = sleep
        self.stats = stats or ClientStats()
        self._local = threading.local()
        parts = urlsplit(self.base_url)
        self._base_parts = (parts, parse_qsl(parts.query, keep_blank_values=True))
        self._sessions: list[ApiSession] = []
        self._sessions_lock = threading.Lock()
        self._stopping = threading.Event()
        self._answered = threading.Event()  # the API has answered once (any HTTP status)

    # -- plumbing ---------------------------------------------------------------------

    def _session(self) -> ApiSession:
        session = getattr(self._local, "session", None)
        if session is None:
            session = ApiSession()
            session.headers["Accept"] = "application/json"
            session.headers["User-Agent"] = "customer-pipeline/0.1"
            if self._api_key:
                session.headers[API_KEY_HEADER] = self._api_key
            # Read the environment (proxies, NO_PROXY, REQUESTS_CA_BUNDLE) once per session
            # rather than on every request: requests re-scans os.environ for each call, which
            # cost ~1.7 ms a page, a third of the client's CPU per page.
            env = session.merge_environment_settings(self.base_url, {}, None, None, None)
            session.trust_env = False
            session.proxies.update(env["proxies"])
            session.verify, session.cert = env["verify"], env["cert"]
            # The request every page starts from: the session's headers, hooks and auth merged
            # once. Session.get merges them again on each call (~0.3 ms of the client's ~1.5 ms
            # a page, under the GIL the fetchers share).
            self._local.template = session.prepare_request(requests.Request("GET", self.page_url(1)))
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _get(self, url: str) -> requests.Response:
        """GET ``url`` on this thread's session: Session.get, without re-merging the session's settings."""
        session = self._session()
        timeout = (self.policy.connect_timeout, self.policy.read_timeout)
        if session.cookies:  # an API that sets cookies: requests' own path sends them back
            return session.get(url, timeout=timeout)
        prepared = self._local.template.copy()
        prepared.prepare_url(url, None)
        # what Session.request passes on; redirects (and the key-stripping rule) run in send()
        return session.send(prepared, timeout=timeout, allow_redirects=True, proxies=session.proxies,
                            verify=session.verify, cert=session.cert, stream=False)

    def cancel(self) -> None:
        """Stop every fetch of this client: no new attempt starts, backoff sleeps end now.

        A request already on the wire finishes (``total_timeout`` bounds it); its page is kept.
        """
        self._stopping.set()
        if self.throttle is not None:
            self.throttle.cancel()

    def _sleep(self, seconds: float) -> None:
        """tenacity's sleep between attempts, cut short by ``cancel()``; counts the retry that follows."""
        if self.sleep is time.sleep:
            self._stopping.wait(seconds)
        else:
            self.sleep(seconds)  # tests pass their own clock
        if self._stopping.is_set():
            raise Cancelled("the run is stopping: retry not attempted")
        self.stats.add(retries=1)

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def page_url(self, page: int) -> str:
        """``{base}/users?page=N&per_page=M``, keeping any query the base URL carries."""
        parts, base_query = self._base_parts
        query = urlencode([*base_query, ("page", page), ("per_page", self.per_page)])
        return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/users", query, ""))

    def _redact(self, text: str) -> str:
        return redact(text, *self._secrets)

    def _shown_url(self, page: int) -> str:
        """The page URL as logged and stored: no user:password@, no key."""
        return self._redact(strip_userinfo(self.page_url(page)))

    # -- one attempt --------------------------------------------------------------------

    def _attempt(self, page: int) -> Page:
        if self._stopping.is_set():
            raise Cancelled("the run is stopping: request not sent")
        url = self.page_url(page)
        if self.throttle is not None:
            self.throttle.acquire()
        started = time.monotonic()
        ok = False
        try:
            self.stats.add(requests_=1)
            # the read timeout bounds each wait for bytes; this, the whole attempt (a server
            # trickling its answer byte by byte): past it, the watchdog shuts the socket
            deadline = WATCHDOG.watch(self.policy.total_timeout)
            try:
                response, body = self._receive(page, url)
            except Exception:
                if WATCHDOG.unwatch(deadline):  # the cut socket is why it failed
                    raise self._overdue(deadline) from None
                raise
            finally:
                WATCHDOG.unwatch(deadline)
            if deadline.expired:  # complete, or cut short: a body ended by closing looks complete
                response.close()
                raise self._overdue(deadline)
            self._answered.set()
            status = response.status_code
            if status == 429 or status == 408 or status >= 500:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if status == 429:
                    self.stats.add(throttled=1)
                    if self.throttle is not None:
                        self.throttle.on_throttled(retry_after)
                raise TransientError(f"HTTP {status}", status=status, retry_after=retry_after)
            if status >= 400:
                raise ApiError(self._fatal_message(page, status, response))
            if status != 200:
                raise TransientError(f"unexpected HTTP {status}", status=status)
            payload = validate_page_body(body)
            ok = True
            return Page(
                page=page,
                url=self._shown_url(page),
                status=status,
                body=body,
                payload=payload,
                fetched_at=datetime.now(timezone.utc),
                attempts=1,
                elapsed=time.monotonic() - started,
            )
        finally:
            if self.throttle is not None:
                self.throttle.release(ok)

    def _receive(self, page: int, url: str) -> tuple[requests.Response, str]:
        """The response and its whole body as text; a failure as TransientError or ApiError."""
        try:
            response = self._get(url)
            return response, response.text  # reads the whole body: a truncated one raises here
        except requests.exceptions.Timeout as exc:
            raise TransientError(f"timed out ({exc.__class__.__name__})")
        except requests.exceptions.ChunkedEncodingError as exc:
            raise TransientError(f"the body was cut off ({_short(exc)})")
        except requests.exceptions.ContentDecodingError as exc:
            raise TransientError(f"the body could not be decoded ({_short(exc)})")
        except requests.exceptions.ConnectionError as exc:  # ConnectTimeout is a Timeout, above
            raise connection_failure(exc, url) from None
        except requests.exceptions.TooManyRedirects:
            raise ApiError(f"page {page}: the API redirected more than {requests.models.DEFAULT_REDIRECT_LIMIT} "
                           f"times from {self._shown_url(page)} (a redirect loop?): check --base-url") from None
        except requests.exceptions.RequestException as exc:  # a redirect to a bad URL, say
            raise ApiError(f"page {page}: the request to {self._shown_url(page)} failed: {_short(exc)}") from None

    def _overdue(self, deadline: Deadline) -> TransientError:
        """An attempt past its total deadline: retried like a timeout. Its connection is closed:
        shut by the watchdog, it may be back in the pool."""
        close_connection(deadline)
        return TransientError(f"timed out: no complete answer within {self.policy.total_timeout:g} s")

    def _fatal_message(self, page: int, status: int, response) -> str:
        hints = {
            401: "the API key is missing or wrong (set PIPELINE_API_KEY or --api-key)",
            403: "the API key is not allowed to read this resource",
            404: "no such endpoint: check --base-url (it should end in /api for reqres.in)",
        }
        hint = hints.get(status, (response.reason or "client error").lower())
        return f"page {page}: the API answered HTTP {status} for {self._shown_url(page)}: {hint}"

    # -- the retried call ------------------------------------------------------------------

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        backoff = backoff_seconds(retry_state.attempt_number, self.policy)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return max(backoff, min(retry_after, self.policy.retry_after_max))
        return backoff

    def get_page(self, page: int) -> Page:
        """Fetch one page, retrying transient failures; raise ApiError naming the page."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            stop=tenacity.stop_any(tenacity.stop_after_attempt(self.policy.attempts), self._never_reached),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            result = retrying(self._attempt, page)
        except TransientError as exc:
            raise ApiError(self._give_up_message(page, exc, retrying.statistics.get("attempt_number", 1))) from None
        result.attempts = retrying.statistics.get("attempt_number", 1)
        return result

    def mark_answered(self) -> None:
        """The API answered this run already (a resumed run's landed pages): unreachable is a blip."""
        self._answered.set()

    def _never_reached(self, retry_state: tenacity.RetryCallState) -> bool:
        """Stop after the second try when the host is unknown or refuses, and has not answered
        in this run: a typo in --base-url or a machine without network, not a blip, and worth
        one line now rather than ~12 s of backoff. Once the API has answered, the same failures
        are retried in full (a server restarting, a resolver hiccup)."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return (retry_state.attempt_number >= 2 and getattr(exc, "unreachable", False)
                and not self._answered.is_set())

    def _give_up_message(self, page: int, exc: TransientError, attempts: int) -> str:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        host = urlsplit(self.base_url).hostname or self.base_url
        local = host in ("127.0.0.1", "localhost", "::1")
        if exc.unreachable:
            message = f"page {page}: {exc.reason} ({tries}, {self._shown_url(page)}): " + (
                "check the proxy settings (HTTPS_PROXY, HTTP_PROXY, NO_PROXY)" if " proxy " in exc.reason
                else "the API stopped answering during the run" if self._answered.is_set()
                else "check --base-url and that the API is running" if local
                else "check --base-url and the network, or try --demo")
        else:
            message = f"page {page}: gave up after {tries}, last: {exc.reason} ({self._shown_url(page)})"
            if exc.status is None and "could not connect" in exc.reason and not local:
                message += f"; {host} cannot be reached from here: check the network, or try --demo"
        return self._redact(message)
