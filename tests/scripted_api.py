"""A tiny HTTP server whose every answer a test scripts: for paging edge cases and redirects.

``ScriptedAPI(respond)`` calls ``respond(request)`` for each GET, where request has
``page``, ``per_page``, ``attempt`` (per page, 1-based), ``path``, ``headers``; it returns
``(status, headers_dict, body)`` with body as str/bytes/dict (dicts are sent as JSON), or
a ``Trickle`` of one, sent slowly.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    path: str
    page: int | None
    per_page: int | None
    attempt: int
    headers: dict


@dataclass
class Trickle:
    """An answer sent ``size`` bytes every ``every`` seconds (its headers too, with ``headers``):
    slow enough to outlast a deadline, never silent long enough for a read timeout."""

    body: object  # str, bytes or dict, as a plain answer's
    every: float
    size: int = 1
    headers: bool = False


def page_body(page: int, per_page: int, records: list, total_pages=None, **extra) -> dict:
    """A reqres-shaped page of ``records`` (all of them; the caller slices)."""
    body = {"page": page, "per_page": per_page, "total": extra.pop("total", None), "data": records}
    if total_pages is not None:
        body["total_pages"] = total_pages
    body.update(extra)
    return body


class ScriptedAPI:
    def __init__(self, respond, host: str = "127.0.0.1"):
        self.respond = respond
        self.host = host
        self.requests: list[Request] = []
        self._counts: dict = {}
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                query = parse_qs(url.query)

                def number(name):
                    try:
                        return int(query[name][0])
                    except (KeyError, ValueError):
                        return None

                page = number("page")
                with api._lock:
                    api._counts[page] = api._counts.get(page, 0) + 1
                    request = Request(self.path, page, number("per_page"), api._counts[page],
                                      {k.lower(): v for k, v in self.headers.items()})
                    api.requests.append(request)
                status, headers, body = api.respond(request)
                trickle = body if isinstance(body, Trickle) else None
                if trickle is not None:
                    body = trickle.body
                if isinstance(body, (dict, list)):
                    body = json.dumps(body)
                if isinstance(body, str):
                    body = body.encode()
                headers = dict(headers or {})
                headers.setdefault("Content-Type", "application/json")
                if trickle is not None:
                    self._trickle(status, headers, body, trickle)
                    return
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _trickle(self, status, headers, body, trickle):
                self.close_connection = True
                head = "".join([f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n",
                                *(f"{key}: {value}\r\n" for key, value in headers.items()),
                                f"Content-Length: {len(body)}\r\n\r\n"]).encode()
                data, sent = head + body, 0 if trickle.headers else len(head)
                try:
                    self.wfile.write(data[:sent])
                    while sent < len(data):
                        self.wfile.flush()
                        time.sleep(trickle.every)
                        self.wfile.write(data[sent:sent + trickle.size])
                        sent += trickle.size
                    self.wfile.flush()
                except OSError:  # the client gave up and closed: the point of the test
                    pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://{host}:{self.port}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def pages_requested(self) -> list[int]:
        return [r.page for r in self.requests]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
