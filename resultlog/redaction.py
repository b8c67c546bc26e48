"""Secrets out of what resultlog prints: passwords in URLs and DSNs, and secret settings.

Errors, logs and ``repr(settings)`` go through here; what reaches a child process
(``Settings.to_env``) and the clients themselves keeps the real values.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: What a secret is printed as.
MASK = "***"
#: Query parameters that carry a secret (libpq's ``password``/``sslpassword``,
#: redis-py's ``password``).
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redact_url(url: str) -> str:
    """``url`` with the password of its user info and of its query replaced by ``***``.

    The user name stays (it says *who* was refused); a URL without secrets comes back
    unchanged, byte for byte.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # unparseable: it could be anything, a secret included
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':' + MASK if colon else ''}@{hostport}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() in SECRET_PARAMETERS for k, _ in pairs):
        query = urlencode([(k, MASK if k.lower() in SECRET_PARAMETERS else v) for k, v in pairs], safe="/*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: list[str]) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by ``***``.

    For messages that come from a client library and may quote what it was given.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
