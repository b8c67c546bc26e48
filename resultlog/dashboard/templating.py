"""Jinja2 set up for the dashboard: templates from the package, HTML always escaped.

Task data is user data: ``autoescape=True`` escapes every ``{{ value }}`` and nothing
here marks a value safe; data handed to scripts goes through ``tojson`` (docs/dashboard.md).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import jinja2

from resultlog.analytics_commands import fmt_duration, fmt_seconds, fmt_time


def ms_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return fmt_time(datetime.fromtimestamp(ms / 1000, timezone.utc))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def pretty_json(text: str | None) -> str:
    """A JSON document indented for reading; anything else as it is."""
    if text is None:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def seconds_between(a_ms: int, b_ms: int) -> str:
    return fmt_seconds((b_ms - a_ms) / 1000)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("resultlog.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        time=fmt_time, ms_time=ms_time, seconds=fmt_seconds, percent=percent,
        pretty_json=pretty_json, duration=lambda d: fmt_duration(d) if isinstance(
            d, timedelta) else "-",
    )
    env.globals["seconds_between"] = seconds_between
    return env
