"""Keep the API key out of every line the pipeline prints, logs or stores."""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit, urlunsplit

MASK = "***"

# query parameters that carry a credential by their name (?api_key=..., ?access_token=...)
SECRET_PARAM = re.compile(r"(api[-_]?key|apikey|key|token|access[-_]?token|auth|secret|client[-_]?secret|"
                          r"password|passwd|pwd|signature|sig)", re.IGNORECASE)


def redact(text: str, *secrets: str | None) -> str:
    """Replace each secret (of 4+ characters; shorter ones would mask ordinary text) with ***."""
    if not text:
        return text
    for secret in secrets:
        if secret and len(secret) >= 4:
            # the key as typed, as it looks URL-encoded in a query string, and escaped as
            # Python shows a string with control characters in it ('\r', '\n')
            escaped = secret.encode("unicode_escape").decode("ascii")
            for form in {secret, quote(secret, safe=""), quote_plus(secret), escaped}:
                text = text.replace(form, MASK)
    return text


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The credentials a URL carries: the password of ``user:password@`` and the values of
    query parameters named like one (``api_key``, ``token``, ...), to be redacted like the key."""
    if not url:
        return ()
    try:
        parts = urlsplit(url)
        password, query = parts.password, parts.query
    except ValueError:  # not a usable URL (an unclosed [, a bad port): its parts read by hand
        userinfo = re.search(r"//([^/?#]*)@", url)
        password = userinfo.group(1).partition(":")[2] if userinfo else None
        query = url.partition("?")[2].partition("#")[0]
    found = [password] if password else []
    for pair in query.split("&"):  # each value as written (ab+cd) and decoded (ab cd): shown either way
        name, _, raw = pair.partition("=")
        if raw and SECRET_PARAM.fullmatch(unquote_plus(name)):
            found += dict.fromkeys((raw, unquote_plus(raw)))
    return tuple(found)


def strip_userinfo(url: str) -> str:
    """Drop ``user:password@`` from a URL before it is shown or stored."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        port = parts.port
    except ValueError:  # not a URL one can use (an unclosed [, a bad port): shown to say so
        return re.sub(r"//[^/?#]*@", "//", url, count=1)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class RedactingFilter(logging.Filter):
    """A logging filter that masks the secrets in every record's final message."""

    def __init__(self, *secrets: str | None):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = redact(record.getMessage(), *self.secrets)
            record.msg, record.args = message, None
        return True
