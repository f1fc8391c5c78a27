"""A reqres.in-compatible demo API, served from 127.0.0.1.

``GET /api/users?page=N&per_page=M`` answers exactly like https://reqres.in/api/users
(``page``, ``per_page``, ``total``, ``total_pages``, ``data``, ``support``), over a
choice of datasets:

* ``"reqres"`` -- the 12 public reqres.in users (``extract/data/reqres_users_page*.json``);
* ``"demo"``   -- those 12 users followed by a deterministic, messy population (300 records:
  duplicates, blanks, missing keys, invalid emails, engagement scores, activity dates);
* ``"scale"``  -- N synthetic customers plus duplicates and damaged records, where record
  ``i`` is a pure function of ``i`` so any page of a million-customer dataset is cheap.

It can inject faults (429/5xx, truncated or HTML 200 bodies, 401/404, slow answers,
dropped connections), limit concurrency, require an ``x-api-key`` header, and logs every
request (without the key) so tests can assert on what a client did.

    python -m extract.demo_api --port 8000          # or: python pipeline.py demo-api

Standard library only.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import hmac
import json
import math
import signal
import socket
import struct
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .cli import OneLineParser
from urllib.parse import parse_qs, urlsplit

__all__ = ["DemoAPI", "Fault", "RequestRecord", "generate_records", "main", "DEMO_FAULTS"]

DATA_DIR = Path(__file__).parent / "data"
FIXTURE_FILES = ("reqres_users_page1.json", "reqres_users_page2.json")

# Activity dates are offsets in days from the UTC date this process started, so the demo
# always has "recently active" and "long inactive" customers whatever day it runs.
PROCESS_START_DATE: date = datetime.now(timezone.utc).date()

SUPPORT = {
    "url": "https://reqres.in/#support-heading",
    "text": "To keep ReqRes free, contributions towards server costs are appreciated!",
}

DATASETS = ("demo", "reqres", "scale")
FAULT_KINDS = frozenset({"429", "500", "503", "truncated", "html", "401", "404", "timeout", "reset"})


# --------------------------------------------------------------------------------------
# Faults and the request log
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    page:    page number it applies to (0 = any page)
    attempt: the Nth request for that page (1-based) gets it; 0 = every request
    kind:    "429" | "500" | "503" | "truncated" (200, JSON body cut in half) |
             "html" (200, text/html body) | "401" | "404" |
             "timeout" (sleep ``delay`` seconds, then answer normally) |
             "reset" (close the connection without answering)
    retry_after: Retry-After header value for 429/503 (None = no header)
    """

    page: int
    attempt: int
    kind: str
    retry_after: str | None = "1"
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if self.page < 0 or self.attempt < 0 or self.delay < 0:
            raise ValueError("Fault page, attempt and delay must be >= 0")

    def matches(self, page: int, attempt: int) -> bool:
        return (self.page == 0 or self.page == page) and (self.attempt == 0 or self.attempt == attempt)


# The default faults of ``faults="demo"``: each is transient (first attempt only).
DEMO_FAULTS: tuple[Fault, ...] = (
    Fault(page=1, attempt=1, kind="503", retry_after="0"),
    Fault(page=2, attempt=1, kind="429", retry_after="1"),
    Fault(page=3, attempt=1, kind="truncated"),
)


@dataclass(frozen=True)
class RequestRecord:
    """One served request. Never holds the API key, only whether a key header was sent."""

    time: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival
    path: str  # request target as sent (path + query)
    page: int | None  # parsed page (None when absent-and-invalid or not /api/users)
    per_page: int | None  # per_page actually used (after max_per_page), None if invalid
    status: int  # HTTP status answered; 0 = connection closed without an answer ("reset")
    in_flight: int  # concurrent requests being served when it arrived, itself included
    headers_had_api_key: bool  # an x-api-key header was present (any value)


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------

_ABSENT = object()  # override value meaning "drop this key"

FIRST_NAMES = (
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Oliver", "Sophia", "Elijah", "Isabella", "Lucas",
    "Mia", "Mateo", "Amelia", "Ethan", "Harper", "James", "Evelyn", "Benjamin", "Charlotte",
    "Henry", "Aria", "Leo", "Chloé", "Hugo", "Léa", "Björn", "Ingrid", "Søren", "Freya", "Kenji",
    "Yuki", "Priya", "Arjun", "Fatima", "Omar", "Ana", "João", "Lucía", "Nia", "Kwame", "Wei",
    "Mei", "Dmitri", "Anastasia", "Siobhan", "Seán", "François", "Zoë", "Renée", "Ågot",
)
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "García", "Miller", "Davis", "Rodríguez",
    "Martínez", "Hernández", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Pérez", "Thompson", "White", "Harris", "Sánchez",
    "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott",
    "Müller", "Schmidt", "Dubois", "Lefèvre", "Rossi", "Bianchi", "Kowalski", "Nowak", "Novák",
    "Jensen", "Hansen", "Johansson", "Nakamura", "Tanaka", "Kim", "Park", "Nguyen", "Singh",
    "Patel", "O'Brien", "Murphy", "Kelly", "Okafor", "Mensah", "Silva", "Santos", "Costa",
    "Ivanova", "Byrne",
)
EMAIL_DOMAINS = (
    "example.com", "mail.test", "shop.example.org", "inbox.example.net", "corp.example.com",
    "webmail.test",
)

_ASCII_EXTRA = str.maketrans({"ø": "o", "Ø": "o", "æ": "ae", "Æ": "ae", "ß": "ss", "ł": "l", "đ": "d"})


@lru_cache(maxsize=4096)
def _ascii(name: str) -> str:
    """'Søren O'Brien' -> 'sorenobrien' (for building e-mail local parts)."""
    folded = unicodedata.normalize("NFKD", name.translate(_ASCII_EXTRA))
    return "".join(c for c in folded.lower() if c.isascii() and c.isalnum())


def _md5(*parts: object) -> bytes:
    return hashlib.md5(":".join(str(p) for p in parts).encode("utf-8")).digest()


@lru_cache(maxsize=1024)
def _day(anchor: date, days_ago: int) -> str:
    return (anchor - timedelta(days=days_ago)).isoformat()


def _iso_days_ago(anchor: date, days: int, hour: int, minute: int) -> str:
    return f"{_day(anchor, days)}T{hour:02d}:{minute:02d}:00Z"


def _activity_from_hash(anchor: date, h: bytes) -> str:
    """Half the time 1..80 days ago (active), otherwise 100..400 days ago (inactive)."""
    if h[8] % 2 == 0:
        days = 1 + h[9] % 80
    else:
        days = 100 + ((h[9] << 8) | h[10]) % 301
    return _iso_days_ago(anchor, days, h[11] % 24, h[12] % 60)


def _customer(ns: str, n: int, first: str | None = None, last: str | None = None,
              h: bytes | None = None) -> dict:
    """A clean synthetic customer with id n (names hashed from ``ns``/n unless given)."""
    h = h or _md5(ns, n)
    first = first if first is not None else FIRST_NAMES[h[0] % len(FIRST_NAMES)]
    last = last if last is not None else LAST_NAMES[h[1] % len(LAST_NAMES)]
    fa, la = _ascii(first) or "user", _ascii(last) or str(n)
    local = (f"{fa}.{la}", f"{fa}_{la}{n % 100}", f"{fa[0]}.{la}", f"{fa}{la}{n}")[h[3] % 4]
    return {
        "id": n,
        "email": f"{local}@{EMAIL_DOMAINS[h[2] % len(EMAIL_DOMAINS)]}",
        "first_name": first,
        "last_name": last,
        "avatar": f"https://avatars.example.com/faces/{n}.jpg",
    }


def _apply(record: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if value is _ABSENT:
            record.pop(key, None)
        else:
            record[key] = value
    return record


@lru_cache(maxsize=1)
def _fixture_users() -> tuple[dict, ...]:
    users: list[dict] = []
    for name in FIXTURE_FILES:
        with open(DATA_DIR / name, encoding="utf-8") as fh:
            users.extend(json.load(fh)["data"])
    users.sort(key=lambda u: u["id"])
    return tuple(users)


# ---- the "demo" dataset ----------------------------------------------------------------
#
# 12 reqres users, then new customers 13..270 in id order with 30 duplicate records
# inserted after their originals: 300 records, 270 distinct ids.

DEMO_LAST_ID = 270

# Clean names used instead of the hashed pick (the e-mail is derived from these).
_DEMO_NAMES: dict[int, tuple[str, str]] = {
    14: ("Élodie", "Durand"), 15: ("Zoë", "Andersen"), 16: ("Ågot", "Solberg"),
    17: ("José", "Núñez"), 20: ("Mary Ann", "Smith"), 23: ("marcus", "lee"),
    58: ("Søren", "Østergaard"), 77: ("Li", "Wei"), 82: ("Olivia", "Brown"),
    99: ("élodie", "petit"), 121: ("François", "Lefèvre"), 140: ("Anna", "van der Berg"),
    160: ("JOHN", "O'REILLY"), 175: ("Ethan", "Clark"), 187: ("zoë", "de la cruz"),
    203: ("Chloé", "Brontë"), 222: ("Grace", "Hopper"),
}

# Raw field values as the API sends them (_ABSENT drops the key).
_DEMO_OVERRIDES: dict[int, dict] = {
    # extra inner / outer whitespace
    20: {"first_name": "  Mary   Ann "},
    77: {"last_name": "  Wei  "},
    140: {"first_name": "  Anna", "last_name": "van  der   Berg "},
    222: {"first_name": " Grace ", "last_name": "Hopper   "},
    # blank / null / absent, one kind per record
    30: {"first_name": ""}, 105: {"first_name": "   "}, 170: {"first_name": None}, 245: {"first_name": _ABSENT},
    41: {"last_name": ""}, 118: {"last_name": "   "}, 181: {"last_name": None}, 256: {"last_name": _ABSENT},
    52: {"email": ""}, 127: {"email": "   "}, 193: {"email": None}, 262: {"email": _ABSENT},
    63: {"avatar": ""}, 134: {"avatar": "   "}, 208: {"avatar": None}, 233: {"avatar": _ABSENT},
    88: {"first_name": _ABSENT, "last_name": _ABSENT},  # no name at all
    215: {"first_name": None, "last_name": "  "},  # no usable name either
    # several defects at once, so the demo has medium (70-89) and low (< 70) quality customers
    109: {"last_name": None, "avatar": _ABSENT},  # 80
    168: {"first_name": "  ", "email": "bob@@mail.test", "avatar": ""},  # 70
    190: {"avatar": None, "engagement_score": "n/a", "last_activity_at": "not a date"},  # 70
    229: {"first_name": _ABSENT, "last_name": "", "email": None, "avatar": _ABSENT},  # 60
    258: {"first_name": None, "last_name": None, "email": "not-an-email", "avatar": "   ",
          "engagement_score": None, "last_activity_at": None},  # 40
    267: {"first_name": "", "last_name": "", "email": "", "avatar": "",
          "engagement_score": "n/a", "last_activity_at": "not a date"},  # 40
    # invalid e-mails
    71: {"email": "no-at-sign.example.com"},
    149: {"email": "two@@example.com"},
    199: {"email": "spaces in@example.com"},
    241: {"email": "user@nodot"},
    # valid after trimming / lower-casing
    82: {"email": "  Olivia.Brown@Example.COM "},
    175: {"email": "ETHAN.CLARK@MAIL.TEST"},
    # engagement_score edge values (bucket boundaries, floats, null, unparseable)
    24: {"engagement_score": 70}, 26: {"engagement_score": 69}, 28: {"engagement_score": 40},
    31: {"engagement_score": 39}, 33: {"engagement_score": 0}, 37: {"engagement_score": 100},
    46: {"engagement_score": 72.5}, 113: {"engagement_score": 39.5},
    158: {"engagement_score": 88.25}, 226: {"engagement_score": 69.5},
    54: {"engagement_score": None}, 143: {"engagement_score": None}, 251: {"engagement_score": None},
    67: {"engagement_score": "n/a"}, 164: {"engagement_score": "n/a"}, 238: {"engagement_score": "n/a"},
    # last_activity_at null / unparseable
    74: {"last_activity_at": None}, 152: {"last_activity_at": None}, 219: {"last_activity_at": None},
    92: {"last_activity_at": "not a date"}, 177: {"last_activity_at": "not a date"},
    248: {"last_activity_at": "not a date"},
}

# (insert after the record of id, duplicate of id, variant, variant argument)
#   email_upper    e-mail upper-cased with surrounding spaces: ties with the original
#   no_avatar      avatar key missing: the original wins on score
#   blank_last     last_name blank: the original wins on score
#   exact          identical copy: ties
#   tie_name       another spelling of a name, same score: first seen (the original) wins
#   tie_domain     same person on another mail domain, same score: first seen wins
#   bad_email      invalid e-mail: the original wins
#   bad_engagement engagement_score "n/a": the original wins
#   better_later   the ORIGINAL is damaged (argument), this later copy is clean and wins
_DEMO_DUPLICATES: tuple[tuple[int, int, str, Any], ...] = (
    (13, 1, "email_upper", None),
    (18, 3, "no_avatar", None),
    (21, 7, "tie_name", {"first_name": "Mike"}),
    (25, 25, "exact", None),
    (29, 12, "blank_last", ""),
    (35, 19, "better_later", {"avatar": _ABSENT}),
    (40, 34, "email_upper", None),
    (45, 27, "tie_domain", None),
    (49, 32, "no_avatar", None),
    (56, 9, "tie_name", {"first_name": "Toby"}),
    (61, 43, "blank_last", "   "),
    (66, 21, "bad_email", None),
    (72, 38, "better_later", {"email": ""}),
    (80, 50, "email_upper", None),
    (86, 70, "no_avatar", None),
    (95, 65, "bad_engagement", None),
    (103, 60, "exact", None),
    (110, 93, "email_upper", None),
    (116, 85, "tie_domain", None),
    (125, 13, "no_avatar", None),
    (131, 96, "better_later", {"last_name": None}),
    (138, 4, "blank_last", ""),
    (147, 101, "tie_domain", None),
    (156, 108, "email_upper", None),
    (166, 122, "no_avatar", None),
    (185, 47, "exact", None),
    (197, 150, "better_later", {"first_name": ""}),
    (212, 6, "tie_name", {"last_name": "Ramos-Díaz"}),
    (230, 10, "no_avatar", None),
    (266, 57, "email_upper", None),
)


def _demo_customer(n: int, anchor: date) -> dict:
    first, last = _DEMO_NAMES.get(n, (None, None))
    record = _customer("demo", n, first, last)
    # About a third of the new customers carry engagement_score and/or last_activity_at.
    h = _md5("demo-facts", n)
    if h[0] % 3 == 0:
        kind = h[1] % 3
        if kind in (0, 1):
            record["engagement_score"] = h[2] % 101
        if kind in (0, 2):
            record["last_activity_at"] = _activity_from_hash(anchor, h)
    return _apply(record, _DEMO_OVERRIDES.get(n, {}))


def _demo_duplicate(original: dict, variant: str, arg: Any) -> dict:
    dup = copy.deepcopy(original)
    if variant == "email_upper":
        dup["email"] = f"  {original['email'].upper()} "
    elif variant == "no_avatar":
        dup.pop("avatar", None)
    elif variant == "blank_last":
        dup["last_name"] = arg
    elif variant == "exact":
        pass
    elif variant == "tie_name":
        _apply(dup, arg)
    elif variant == "tie_domain":
        local, domain = original["email"].split("@")
        other = EMAIL_DOMAINS[(EMAIL_DOMAINS.index(domain) + 1) % len(EMAIL_DOMAINS)]
        dup["email"] = f"{local}@{other}"
    elif variant == "bad_email":
        dup["email"] = original["email"].replace("@", "@@")
    elif variant == "bad_engagement":
        dup["engagement_score"] = "n/a"
    else:  # pragma: no cover - table typo
        raise AssertionError(variant)
    return dup


@lru_cache(maxsize=4)
def _demo_records(anchor: date) -> tuple[dict, ...]:
    specials = set(_DEMO_NAMES) | set(_DEMO_OVERRIDES)
    customers = {u["id"]: dict(u) for u in _fixture_users()}
    for n in range(13, DEMO_LAST_ID + 1):
        customers[n] = _demo_customer(n, anchor)
    dup_after: dict[int, list[dict]] = {}
    for after, target, variant, arg in _DEMO_DUPLICATES:
        assert target <= after and target not in specials, (after, target)
        if variant == "better_later":
            dup = copy.deepcopy(customers[target])  # the clean copy comes later ...
            _apply(customers[target], arg)  # ... and the one seen first is damaged
        else:
            dup = _demo_duplicate(customers[target], variant, arg)
        dup_after.setdefault(after, []).append(dup)
    out: list[dict] = []
    for n in range(1, DEMO_LAST_ID + 1):
        out.append(customers[n])
        out.extend(dup_after.get(n, ()))
    return tuple(out)


# ---- the "scale" dataset ---------------------------------------------------------------


class _ScaleData:
    """``customers`` distinct ids 1..C, plus D = round(C*duplicate_rate) duplicates spread
    evenly (duplicate k repeats id k*C//D + 1) and placed right after their original.
    Record i is computed from i alone; nothing is materialised."""

    def __init__(self, customers: int, duplicate_rate: float, damaged_rate: float, anchor: date):
        if not (0 <= customers and 0 <= duplicate_rate < math.inf and 0 <= damaged_rate <= 1):  # NaN too
            raise ValueError("scale: customers >= 0, duplicate_rate >= 0, 0 <= damaged_rate <= 1")
        self.customers = customers
        self.duplicates = round(customers * duplicate_rate) if customers else 0
        self.total = customers + self.duplicates
        self._damage_cut = min(int(damaged_rate * 2**32), 2**32)
        self._anchor = anchor

    def _dups_upto(self, j: int) -> int:
        """Number of duplicates whose original id is <= j."""
        if j <= 0 or not self.duplicates:
            return 0
        return min(self.duplicates, -(-j * self.duplicates // self.customers))

    def _pos(self, j: int) -> int:
        """Index of the original record of id j."""
        return (j - 1) + self._dups_upto(j - 1)

    def locate(self, i: int) -> tuple[int, int | None]:
        """Record index -> (customer id, duplicate number or None for the original)."""
        if not 0 <= i < self.total:
            raise IndexError(i)
        c = self.customers
        j = min(max(i * c // self.total + 1, 1), c)
        while j > 1 and self._pos(j) > i:
            j -= 1
        while j < c and self._pos(j + 1) <= i:
            j += 1
        offset = i - self._pos(j)
        return j, (None if offset == 0 else self._dups_upto(j - 1) + offset - 1)

    def record(self, i: int) -> dict:
        j, dup = self.locate(i)
        return self._record(i, j, dup)

    def _record(self, i: int, j: int, dup: int | None) -> dict:
        h = hashlib.md5(b"scale:%d" % j).digest()
        rec = _customer("scale", j, h=h)
        if j % 3 == 0:
            rec["engagement_score"] = h[4] % 101
        if j % 4 == 0:
            rec["last_activity_at"] = _activity_from_hash(self._anchor, h)
        if dup is not None:
            variant = dup % 4
            if variant == 0:
                rec["email"] = f"  {rec['email'].upper()} "
            elif variant == 1:
                del rec["avatar"]
            elif variant == 2:
                rec["last_name"] = ""
            # variant 3: exact copy
        h = hashlib.md5(b"scale-damage:%d" % i).digest()
        if int.from_bytes(h[:4], "big") < self._damage_cut:
            kind = h[4] % 9
            if kind == 0:
                rec["first_name"] = ("", "   ", None)[h[5] % 3]
            elif kind == 1:
                del rec["first_name"]
            elif kind == 2:
                rec["last_name"] = ("", "   ", None)[h[5] % 3]
            elif kind == 3:
                del rec["first_name"], rec["last_name"]
            elif kind == 4:
                local = rec["email"].strip().split("@")[0]
                rec["email"] = (f"{local}.example.com", f"{local}@@example.com", f"{local}@nodot")[h[5] % 3]
            elif kind == 5:
                rec["email"] = ("", "   ", None)[h[5] % 3]
            elif kind == 6:
                rec.pop("avatar", None)
            elif kind == 7:
                rec["engagement_score"] = "n/a"
            else:
                rec.pop("email")
        return rec

    def slice(self, start: int, stop: int) -> list[dict]:
        start, stop = max(start, 0), min(stop, self.total)
        if start >= stop:
            return []
        out = []
        j, dup = self.locate(start)
        dup_end = self._dups_upto(j)  # first duplicate number after id j's run
        for i in range(start, stop):
            out.append(self._record(i, j, dup))
            nxt = self._dups_upto(j - 1) if dup is None else dup + 1
            if nxt < dup_end:
                dup = nxt
            else:
                j, dup = j + 1, None
                dup_end = self._dups_upto(j)
        return out

    def all(self) -> list[dict]:
        return self.slice(0, self.total)


class _ListData:
    def __init__(self, records: Sequence[dict]):
        self._records = [copy.deepcopy(r) for r in records]
        self.total = len(self._records)

    def slice(self, start: int, stop: int) -> list[dict]:
        return self._records[start:stop]

    def all(self) -> list[dict]:
        return copy.deepcopy(self._records)


def _dataset(dataset: str, customers: int, duplicate_rate: float, damaged_rate: float,
             anchor_date: date | None):
    anchor = anchor_date or PROCESS_START_DATE
    if dataset == "reqres":
        return _ListData(_fixture_users())
    if dataset == "demo":
        return _ListData(_demo_records(anchor))
    if dataset == "scale":
        return _ScaleData(customers, duplicate_rate, damaged_rate, anchor)
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def generate_records(dataset: str = "demo", customers: int = 10_000, duplicate_rate: float = 0.2,
                     damaged_rate: float = 0.05, *, anchor_date: date | None = None) -> list[dict]:
    """The full record list a DemoAPI with these parameters serves, in page order.

    ``anchor_date`` (default: the UTC date this process started) is the day the
    ``last_activity_at`` offsets count back from."""
    return _dataset(dataset, customers, duplicate_rate, damaged_rate, anchor_date).all()


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, api: "DemoAPI"):
        self.api = api
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def drop_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # client went away: not our problem
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # header + body are two writes: no 40 ms delayed-ACK stall
    server_version = "DemoAPI/1.0"
    timeout = 60  # idle keep-alive connections are closed after this

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # silence per-request logging
        pass

    def do_GET(self) -> None:
        self.server.api._handle(self)


def _positive_int(query: dict[str, list[str]], name: str, default: int) -> int | None:
    values = query.get(name)
    if not values:
        return default
    raw = values[0].strip()
    if not raw.isascii() or not raw.isdigit():
        return None
    value = int(raw)
    return value if value >= 1 else None


class DemoAPI:
    """A reqres.in-compatible ``/api/users`` server on a background thread.

    >>> with DemoAPI(dataset="reqres", faults="none") as api:
    ...     requests.get(api.base_url + "/users?page=2").json()["data"][0]["id"]
    7
    """

    OMIT = object()  # return this from total_pages_override to drop the key

    def __init__(self, *, dataset: str = "demo", customers: int = 10_000,
                 duplicate_rate: float = 0.2, damaged_rate: float = 0.05,
                 records: list[dict] | None = None,
                 faults: Iterable[Fault] | str | None = "demo",
                 latency: float = 0.0, max_in_flight: int | None = None, retry_after: str = "1",
                 api_key: str | None = None, default_per_page: int = 6,
                 max_per_page: int | None = None,
                 total_pages_override: Callable[[int, int], Any] | None = None,
                 host: str = "127.0.0.1", port: int = 0,
                 anchor_date: date | None = None, cache_pages: bool = False):
        if records is not None:
            self._data = _ListData(records)
        else:
            self._data = _dataset(dataset, customers, duplicate_rate, damaged_rate, anchor_date)
        self.dataset = "records" if records is not None else dataset
        if faults is None or faults == "none":
            self.faults: tuple[Fault, ...] = ()
        elif faults == "demo":
            self.faults = DEMO_FAULTS
        elif isinstance(faults, str):
            raise ValueError(f"faults must be 'demo', 'none' or a list of Fault, not {faults!r}")
        else:
            self.faults = tuple(faults)
        if not 0 <= latency <= 3600:  # NaN too
            raise ValueError(f"latency must be from 0 to 3600 seconds, not {latency}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if default_per_page < 1 or (max_per_page is not None and max_per_page < 1):
            raise ValueError("default_per_page and max_per_page must be >= 1")
        self.latency = latency
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after
        self._api_key = api_key
        self.default_per_page = default_per_page
        self.max_per_page = max_per_page
        self.total_pages_override = total_pages_override
        # benchmarks: keep each rendered page, so serving costs the client only latency
        self._page_cache: dict[tuple[int, int], bytes] | None = {} if cache_pages else None
        self.host = host
        self.port = port
        self.base_url = ""
        self.total_records = self._data.total
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self._page_counts: dict[int, int] = {}
        self._state_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never shows the key
        return (f"DemoAPI(dataset={self.dataset!r}, records={self.total_records}, "
                f"base_url={self.base_url!r}, api_key={'set' if self._api_key else None})")

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> str:
        with self._state_lock:
            if self._server is not None:
                return self.base_url
            server = _Server((self.host, self.port), _Handler, self)
            port = server.server_address[1]
            url_host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
            self.base_url = f"http://{url_host}:{port}/api"
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"demo-api-{port}", daemon=True)
            self._thread.start()
            return self.base_url

    def stop(self) -> None:
        with self._state_lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        try:
            server.shutdown()
        finally:
            server.server_close()
            server.drop_connections()
            if thread is not None:
                thread.join(timeout=5)

    def __enter__(self) -> "DemoAPI":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- data --------------------------------------------------------------------------

    def records(self) -> list[dict]:
        """Every record served, in page order (a copy)."""
        return self._data.all()

    def page_requests(self, page: int) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.page == page]

    # ---- request handling --------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        arrived, wall = time.monotonic(), time.time()
        with self._lock:
            self._in_flight += 1
            in_flight = self._in_flight
        try:
            page, per_page, answer = self._respond(handler, in_flight)
            # Log before answering, so a client that has its answer finds it in the log.
            record = RequestRecord(
                time=arrived, wall=wall, path=handler.path, page=page, per_page=per_page,
                status=answer.status, in_flight=in_flight,
                headers_had_api_key=handler.headers.get("x-api-key") is not None)
            with self._lock:
                self.requests.append(record)
            answer.write(handler)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _respond(self, handler: _Handler, in_flight: int) -> tuple[int | None, int | None, "_Answer"]:
        """Decide the answer: (page, per_page, answer). Sleeps for latency / timeout faults."""
        if self.latency:
            time.sleep(self.latency)
        url = urlsplit(handler.path)
        is_users = url.path.rstrip("/") == "/api/users"
        query = parse_qs(url.query, keep_blank_values=True)
        page = _positive_int(query, "page", 1)
        per_page = _positive_int(query, "per_page", self.default_per_page)
        if per_page is not None and self.max_per_page is not None:
            per_page = min(per_page, self.max_per_page)
        if not is_users:
            page = per_page = None
        attempt = 0
        if page is not None:
            with self._lock:
                attempt = self._page_counts.get(page, 0) + 1
                self._page_counts[page] = attempt

        if self.max_in_flight is not None and in_flight > self.max_in_flight:
            return page, per_page, _Answer.error(429, "Too many requests", self.retry_after)
        if not is_users:
            return page, per_page, _Answer.error(404, "Not found")
        if page is None or per_page is None:
            bad = "page" if page is None else "per_page"
            return page, per_page, _Answer.error(400, f"Invalid {bad}: must be a positive integer")
        if self._api_key is not None:
            sent = handler.headers.get("x-api-key")
            if sent is None or not hmac.compare_digest(sent.encode(), self._api_key.encode()):
                return page, per_page, _Answer.error(401, "Missing API key")

        fault = next((f for f in self.faults if f.matches(page, attempt)), None)
        kind = fault.kind if fault is not None else None
        if kind == "reset":
            return page, per_page, _Answer(0)
        if kind == "timeout":
            time.sleep(fault.delay)
        elif kind in ("429", "503"):
            message = "Too many requests" if kind == "429" else "Service unavailable"
            return page, per_page, _Answer.error(int(kind), message, fault.retry_after)
        elif kind == "500":
            return page, per_page, _Answer.error(500, "Internal server error")
        elif kind == "401":
            return page, per_page, _Answer.error(401, "Missing API key")
        elif kind == "404":
            return page, per_page, _Answer.error(404, "Not found")
        elif kind == "html":
            return page, per_page, _Answer(200, _HTML_PAGE, "text/html; charset=utf-8")
        elif kind == "truncated":
            body = self._page_body(page, per_page)
            return page, per_page, _Answer(200, body[: len(body) // 2])
        return page, per_page, _Answer(200, self._page_body(page, per_page))

    def _page_body(self, page: int, per_page: int) -> bytes:
        if self._page_cache is not None:
            cached = self._page_cache.get((page, per_page))
            if cached is None:
                cached = self._page_cache[(page, per_page)] = self._render_page(page, per_page)
            return cached
        return self._render_page(page, per_page)

    def _render_page(self, page: int, per_page: int) -> bytes:
        total = self.total_records
        total_pages = math.ceil(total / per_page)
        start = (page - 1) * per_page
        data = self._data.slice(start, start + per_page) if start < total else []
        body: dict[str, Any] = {"page": page, "per_page": per_page, "total": total,
                                "total_pages": total_pages, "data": data, "support": SUPPORT}
        if self.total_pages_override is not None:
            value = self.total_pages_override(page, total_pages)
            if value is DemoAPI.OMIT:
                del body["total_pages"]
            else:
                body["total_pages"] = value
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
              b"<body><h1>We'll be right back</h1><p>Scheduled maintenance.</p></body></html>")


@dataclass
class _Answer:
    status: int  # 0 = drop the connection without answering
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    retry_after: str | None = None

    @classmethod
    def error(cls, status: int, message: str, retry_after: str | None = None) -> "_Answer":
        return cls(status, json.dumps({"error": message}).encode("utf-8"), retry_after=retry_after)

    def write(self, handler: _Handler) -> None:
        if self.status == 0:
            # Close without a byte of answer; linger 0 makes the close a RST where possible.
            handler.close_connection = True
            try:
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            return
        try:
            handler.send_response(self.status)
            handler.send_header("Content-Type", self.content_type)
            handler.send_header("Content-Length", str(len(self.body)))
            if self.retry_after is not None:
                handler.send_header("Retry-After", self.retry_after)
            handler.end_headers()
            handler.wfile.write(self.body)
        except OSError:  # the client hung up (e.g. it timed out first)
            handler.close_connection = True


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Serve the demo API until Ctrl-C."""
    parser = OneLineParser(
        prog=prog or "python -m extract.demo_api",
        description="Serve a reqres.in-compatible demo API (GET /api/users) on this machine.",
        epilog="example:\n  python pipeline.py demo-api --port 8000 --latency 0.05\n"
               "  python pipeline.py run --base-url http://127.0.0.1:8000/api   (in another terminal)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--dataset", choices=DATASETS, default="demo", help="records to serve (default demo)")
    parser.add_argument("--customers", type=int, default=10_000, help="scale dataset: distinct customers")
    parser.add_argument("--duplicate-rate", type=float, default=0.2, help="scale dataset: duplicates per customer")
    parser.add_argument("--damaged-rate", type=float, default=0.05, help="scale dataset: share of damaged records")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds slept per request")
    parser.add_argument("--faults", choices=("demo", "none"), default="demo",
                        help="demo = a few transient 503/429/truncated answers (default); none")
    parser.add_argument("--max-in-flight", type=int, default=None,
                        help="answer 429 when more than this many requests are in flight")
    parser.add_argument("--api-key", default=None, help="require this x-api-key header")
    parser.add_argument("--cache-pages", action="store_true",
                        help="keep each rendered page in memory (benchmarks: serving then costs only --latency)")
    args = parser.parse_args(argv)
    try:
        api = DemoAPI(dataset=args.dataset, customers=args.customers,
                      duplicate_rate=args.duplicate_rate, damaged_rate=args.damaged_rate,
                      faults=args.faults, latency=args.latency, max_in_flight=args.max_in_flight,
                      api_key=args.api_key, host=args.host, port=args.port, cache_pages=args.cache_pages)
    except ValueError as exc:
        parser.error(str(exc))
    restore = _install_stop_signals()
    try:
        try:
            base_url = api.start()
        except (OSError, OverflowError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            print(f"demo API: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
            return 1
        print(f"demo API serving {api.total_records} records at {base_url} (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        api.stop()
        restore()


def _install_stop_signals() -> Callable[[], None]:
    """Make Ctrl-C (SIGINT) and SIGTERM stop the server even when SIGINT was inherited as
    ignored (a background job of a non-interactive shell). Only possible on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, interrupt)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return restore


if __name__ == "__main__":
    sys.exit(main())
