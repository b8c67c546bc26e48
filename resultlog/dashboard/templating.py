"""Jinja2 set up for the dashboard: templates from the package, HTML always escaped.

Task data is user data: ``autoescape=True`` escapes every ``{{ value }}`` and nothing
here marks a value safe; data handed to scripts goes through ``tojson`` (docs/dashboard.md).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import jinja2
import markupsafe

from resultlog.analytics_commands import EARLIEST_TIME, fmt_duration, fmt_seconds, fmt_time
from resultlog.schemas.states import LATEST_DATETIME_MS


def ms_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    if not 0 <= ms <= LATEST_DATETIME_MS:  # an eta another producer wrote: no datetime holds it
        return f"{ms} ms since the epoch"
    return fmt_time(EARLIEST_TIME + timedelta(milliseconds=ms))  # exact, where ms / 1000 rounds


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def pretty_json(text: str | None) -> str:
    """A JSON document indented for reading; anything else as it is."""
    if text is None:
        return ""
    try:
        value = json.loads(text)
        pretty = json.dumps(value, indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python reads
        return text
    try:
        pretty.encode()
    except UnicodeEncodeError:  # a "\ud800" escape reads as a lone surrogate: kept escaped
        return json.dumps(value, indent=2)
    return pretty


def seconds_between(a_ms: int, b_ms: int) -> str:
    return fmt_seconds((b_ms - a_ms) / 1000)


#: The page of a task whose id a path cannot carry (see task_href).
TASK_BY_QUERY = "/task"
#: Shown for U+0000, which HTML cannot carry: a parser drops it from text and makes it
#: U+FFFD in an attribute, so "a\0b" would read as task "ab".
NUL_SHOWN = "\N{SYMBOL FOR NULL}"


def task_href(task_id: str) -> str:
    """The link to a task's page, for the templates and the live stream alike.

    Every character but letters, digits and ``-._~`` is %-escaped, "/" too: unescaped,
    a browser resolves ``a/../b`` to task ``b``. The ids ``.`` and ``..`` are dot
    segments however spelled (browsers resolve ``%2E%2E`` too), so those two go in the
    query string of TASK_BY_QUERY instead."""
    if task_id in (".", ".."):
        return f"{TASK_BY_QUERY}?id={quote(task_id, safe='')}"
    return f"/tasks/{quote(task_id, safe='')}"


def _shown(value: Any) -> Any:
    """Every ``{{ value }}`` before it is escaped: text without U+0000. Markup (a macro's
    output, ``tojson``) is left alone: its parts went through here, or are escaped."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return value.replace("\0", NUL_SHOWN)
    return value


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("resultlog.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_shown,
    )
    env.filters.update(
        task_href=task_href,
        time=fmt_time, ms_time=ms_time, seconds=fmt_seconds, percent=percent,
        pretty_json=pretty_json, duration=lambda d: fmt_duration(d) if isinstance(
            d, timedelta) else "-",
    )
    env.globals["seconds_between"] = seconds_between
    return env
