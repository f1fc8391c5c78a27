"""A plain-Python reading of DESIGN.md's "Business rules", to check the SQL models against.

Written from the contract, not from the SQL: where the two differ, the property test in
``test_rules_property.py`` fails and the difference is a question for the SQL's owner.

Choices the contract leaves open, made explicit here:

- Whitespace is what the contract's regex ``\\s`` matches in Python (``str.isspace()``):
  ASCII whitespace, every Unicode space separator (NBSP, U+3000, ...), U+2028/U+2029, NEL
  and the C0 information separators U+001C-U+001F; not zero-width characters. (The brief
  asked for ``re.ASCII``, i.e. POSIX ``[[:space:]]``; the SQL's owner has since settled on
  this Unicode definition, one for names, emails and ids, and the oracle follows it.)
- An id is usable when it is a JSON integer, or a string holding an optional ``-`` and
  1-18 digits with optional whitespace around (`"7"`, `" 8 "`). Everything else in an
  object record is ``invalid_id``; a missing, null or blank id is ``missing_id``; a
  record that is not a JSON object is ``not_an_object``.
- ``engagement_score`` is parseable when it is a JSON number (not a boolean) or a string
  holding a decimal number (ASCII whitespace around allowed); outside 0..100 counts as
  unparseable.
- ``last_activity_at`` is parseable when it is a string in ISO-8601 extended format:
  ``YYYY-MM-DD``, optionally followed by ``T`` or a space and ``HH:MM[:SS[.fff]]`` (``.``
  or ``,`` before the fraction), optionally followed by ``Z`` or ``+HH[:MM]``/``-HH[:MM]``;
  no offset is read as UTC. Active when it is no older than 90 x 24 hours before the
  run's start (later dates count too).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

# ---------------------------------------------------------------------------------- standardize

_WHITESPACE_RUN = re.compile(r"\s+")
_EDGE_WHITESPACE = re.compile(r"^\s+|\s+$")
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_ID_TEXT = re.compile(r"\s*(-?[0-9]{1,18})\s*")
_NUMBER_TEXT = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*", re.ASCII)
_ISO_8601 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]{1,6})[0-9]*)?)?"
    r"(Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"  # a zone designator belongs to a time of day
)

ENGAGEMENT_LEVELS = ("high", "medium", "low")
ACTIVITY_STATUSES = ("active", "inactive")
ACQUISITION_CHANNELS = ("website", "mobile_app", "email_campaign")
MARKET_SEGMENTS = ("US-West", "US-East", "EU-Central", "APAC")
ACTIVE_WINDOW = timedelta(days=90)


def standardize_name(value) -> str | None:
    """Trim and collapse whitespace, case kept; blank or missing -> None."""
    if value is None:
        return None
    collapsed = _WHITESPACE_RUN.sub(" ", value).strip(" ")
    return collapsed or None


def standardize_email(value) -> str | None:
    """Trim and lower-case; blank or missing -> None."""
    if value is None:
        return None
    trimmed = _EDGE_WHITESPACE.sub("", value).lower()
    return trimmed or None


def standardize_avatar(value) -> str | None:
    if value is None:
        return None
    return _EDGE_WHITESPACE.sub("", value) or None


def email_is_valid(email: str | None) -> bool:
    return email is not None and EMAIL_PATTERN.fullmatch(email) is not None


def email_domain(email: str | None) -> str:
    return email.split("@", 1)[1] if email_is_valid(email) else "unknown"


def full_name(first: str | None, last: str | None) -> str | None:
    return " ".join(part for part in (first, last) if part is not None) or None


# ---------------------------------------------------------------------------------- ids


def id_of(record) -> tuple[int | None, str | None]:
    """(customer_id, quarantine reason): exactly one of the two is None."""
    if not isinstance(record, dict):
        return None, "not_an_object"
    value = record.get("id")
    if value is None or (isinstance(value, str) and _EDGE_WHITESPACE.sub("", value) == ""):
        return None, "missing_id"  # blank is missing, as for every other field
    if isinstance(value, bool):
        return None, "invalid_id"
    if isinstance(value, int):
        return (value, None) if len(str(abs(value))) <= 18 else (None, "invalid_id")
    if isinstance(value, str) and (match := _ID_TEXT.fullmatch(value)):
        return int(match[1]), None
    return None, "invalid_id"


# ---------------------------------------------------------------------------------- optional facts


def parse_engagement_score(value) -> float | None:
    """The score when it is a number in 0..100; None when null, unparseable or out of range."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        number = float(value)
    else:
        return None
    return number if 0 <= number <= 100 else None


def parse_timestamp(value) -> datetime | None:
    """An ISO-8601 (extended format) timestamp as an aware UTC datetime; None otherwise."""
    if not isinstance(value, str):
        return None
    match = _ISO_8601.fullmatch(value)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
            int((fraction or "0").ljust(6, "0")), tzinfo=timezone.utc,
        )
    except ValueError:
        return None
    if offset and offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        digits = offset[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 23 or minutes > 59:
            return None
        moment -= sign * timedelta(hours=hours, minutes=minutes)
    return moment


def engagement_level_from(score: float | None) -> str:
    if score is None:
        return "unknown"
    if score >= 70:
        return "high"
    if score >= 40:
        return "medium"
    return "low"


def activity_status_from(last_activity_at: datetime | None, run_started_at: datetime) -> str:
    if last_activity_at is None:
        return "unknown"
    return "active" if last_activity_at >= run_started_at - ACTIVE_WINDOW else "inactive"


# ---------------------------------------------------------------------------------- hashing


DRAW_OFFSETS = {"engagement_level": 0, "activity_status": 6, "acquisition_channel": 12,
                "market_segment": 18, "customer_tier": 24}


def draw(field_name: str, customer_id: int) -> int:
    """A 24-bit slice of md5('<customer_id>') (hex digits per field), as the SQL computes it."""
    offset = DRAW_OFFSETS[field_name]
    return int(hashlib.md5(str(customer_id).encode()).hexdigest()[offset:offset + 6], 16)


def hashed_engagement_level(customer_id: int) -> str:
    return ENGAGEMENT_LEVELS[draw("engagement_level", customer_id) % 3]


def hashed_activity_status(customer_id: int) -> str:
    return ACTIVITY_STATUSES[draw("activity_status", customer_id) % 2]


def acquisition_channel(customer_id: int) -> str:
    return ACQUISITION_CHANNELS[draw("acquisition_channel", customer_id) % 3]


def market_segment(customer_id: int) -> str:
    return MARKET_SEGMENTS[draw("market_segment", customer_id) % 4]


def customer_tier(customer_id: int) -> str:
    bucket = draw("customer_tier", customer_id) % 10
    return "basic" if bucket < 6 else "premium" if bucket < 9 else "enterprise"


# ---------------------------------------------------------------------------------- score


def quality_bucket(score: int) -> str:
    return "high" if score >= 90 else "medium" if score >= 70 else "low"


@dataclass
class Customer:
    """One keyed record, standardized and scored; after dedup, one customer."""

    customer_id: int
    page: int
    position_in_page: int
    first_name: str | None
    last_name: str | None
    email: str | None
    avatar_url: str | None
    has_engagement_score: bool
    engagement_score: float | None
    has_last_activity_at: bool
    last_activity_at: datetime | None
    quality_issues: list[str] = field(default_factory=list)
    records_received: int = 1

    @property
    def full_name(self) -> str | None:
        return full_name(self.first_name, self.last_name)

    @property
    def email_domain(self) -> str:
        return email_domain(self.email)

    @property
    def data_quality_score(self) -> int:
        return max(0, 100 - 10 * len(self.quality_issues))

    @property
    def quality_bucket(self) -> str:
        return quality_bucket(self.data_quality_score)

    def engagement_level(self) -> str:
        if self.has_engagement_score:
            return engagement_level_from(self.engagement_score)
        return hashed_engagement_level(self.customer_id)

    def activity_status(self, run_started_at: datetime) -> str:
        if self.has_last_activity_at:
            return activity_status_from(self.last_activity_at, run_started_at)
        return hashed_activity_status(self.customer_id)

    def row(self, run_started_at: datetime) -> dict:
        """The customer as marts.dim_customers should show it (the columns the rules decide)."""
        return {
            "customer_id": self.customer_id,
            "full_name": self.full_name,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "email": self.email,
            "email_domain": self.email_domain,
            "avatar_url": self.avatar_url,
            "engagement_level": self.engagement_level(),
            "activity_status": self.activity_status(run_started_at),
            "acquisition_channel": acquisition_channel(self.customer_id),
            "market_segment": market_segment(self.customer_id),
            "customer_tier": customer_tier(self.customer_id),
            "engagement_score": self.engagement_score,
            "last_activity_at": self.last_activity_at,
            "data_quality_score": self.data_quality_score,
            "quality_bucket": self.quality_bucket,
            "quality_issues": list(self.quality_issues),
            "records_received": self.records_received,
            "source_page": self.page,
        }


def score_record(record: dict, customer_id: int, page: int, position: int) -> Customer:
    first = standardize_name(record.get("first_name"))
    last = standardize_name(record.get("last_name"))
    email = standardize_email(record.get("email"))
    avatar = standardize_avatar(record.get("avatar"))
    has_score = "engagement_score" in record
    score = parse_engagement_score(record.get("engagement_score"))
    has_activity = "last_activity_at" in record
    activity = parse_timestamp(record.get("last_activity_at"))
    issues = []
    if first is None:
        issues.append("missing_first_name")
    if last is None:
        issues.append("missing_last_name")
    if email is None:
        issues.append("missing_email")
    elif not email_is_valid(email):
        issues.append("invalid_email")
    if avatar is None:
        issues.append("missing_avatar")
    if has_score and score is None:
        issues.append("invalid_engagement_score")
    if has_activity and activity is None:
        issues.append("invalid_last_activity_at")
    return Customer(customer_id, page, position, first, last, email, avatar,
                    has_score, score, has_activity, activity, issues)


# ---------------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    customers: dict[int, Customer]
    quarantined: list[tuple[int, int, str]]  # (page, position_in_page, reason)

    def export_order(self) -> list[int]:
        return [c.customer_id for c in sorted(self.customers.values(), key=lambda c: export_sort_key(c.full_name, c.customer_id))]


def run(pages: list[list]) -> RunResult:
    """Standardize, score and deduplicate one run's pages (page and position are 1-based)."""
    keyed: list[Customer] = []
    quarantined = []
    for page_number, records in enumerate(pages, start=1):
        for position, record in enumerate(records, start=1):
            customer_id, reason = id_of(record)
            if reason:
                quarantined.append((page_number, position, reason))
            else:
                keyed.append(score_record(record, customer_id, page_number, position))
    winners: dict[int, Customer] = {}
    counts: dict[int, int] = {}
    for candidate in keyed:
        counts[candidate.customer_id] = counts.get(candidate.customer_id, 0) + 1
        best = winners.get(candidate.customer_id)
        # highest score; ties to the first seen (keyed is in page, position order)
        if best is None or candidate.data_quality_score > best.data_quality_score:
            winners[candidate.customer_id] = candidate
    for customer_id, customer in winners.items():
        customer.records_received = counts[customer_id]
    return RunResult(winners, quarantined)


# ---------------------------------------------------------------------------------- export order


def strip_accents(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def export_sort_key(name: str | None, customer_id: int) -> tuple:
    """full_name case- and accent-insensitively, NULL names last, ties by customer_id."""
    return (name is None, strip_accents(name).lower() if name is not None else "", customer_id)
