"""A tiny HTTP server whose every answer a test scripts: for paging edge cases and redirects.

``ScriptedAPI(respond)`` calls ``respond(request)`` for each GET, where request has
``page``, ``per_page``, ``attempt`` (per page, 1-based), ``path``, ``headers``; it returns
``(status, headers_dict, body)`` with body as str/bytes/dict (dicts are sent as JSON).
"""

from __future__ import annotations

import json
import threading
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
                if isinstance(body, (dict, list)):
                    body = json.dumps(body)
                if isinstance(body, str):
                    body = body.encode()
                self.send_response(status)
                headers = dict(headers or {})
                headers.setdefault("Content-Type", "application/json")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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
