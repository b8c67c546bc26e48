"""The dashboard's pure logic: page cursors, task filters, live messages, escaping."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resultlog import names
from resultlog.dashboard.commands import check_address
from resultlog.dashboard.live import parse_message
from resultlog.dashboard.tasklist import Cursor, TaskFilter, page_query
from resultlog.dashboard.templating import ms_time, pretty_json
from resultlog.schemas.states import LATEST_DATETIME_MS
from resultlog.dashboard.templating import environment
from resultlog.errors import ValidationError
from resultlog.schemas.states import State

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@given(micros=st.integers(0, 10**16), task_id=st.text(min_size=1, max_size=255))
def test_cursor_round_trips(micros: int, task_id: str) -> None:
    cursor = Cursor(EPOCH + timedelta(microseconds=micros), task_id)
    assert Cursor.decode(cursor.encode()) == cursor


# [], [1,2], {"a":1}, [true,"x"] and [false,"x"] (JSON's booleans are no microseconds)
@pytest.mark.parametrize("text", ["", "not-base64!", "W10", "WzEsMl0", "eyJhIjoxfQ",
                                  "W3RydWUsIngiXQ", "W2ZhbHNlLCJ4Il0"])
def test_a_cursor_the_dashboard_did_not_make_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="start again from the first page"):
        Cursor.decode(text)


def test_filters_are_checked() -> None:
    with pytest.raises(ValidationError, match="name"):
        TaskFilter(name="")
    with pytest.raises(ValidationError, match="timezone-aware"):
        TaskFilter(since=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="not after"):
        TaskFilter(since=datetime(2026, 1, 2, tzinfo=UTC), until=datetime(2026, 1, 1, tzinfo=UTC))


def test_values_reach_the_query_only_as_parameters() -> None:
    hostile = "x'; DROP TABLE t; --"
    f = TaskFilter(state=State.FAILURE, name=hostile, worker=hostile, id_prefix=hostile)
    sql, args = page_query("s", f, Cursor(EPOCH, hostile), newer=False, limit=50)
    assert hostile not in sql
    assert args.count(hostile) == 4 and State.FAILURE.value in args  # name, worker, id, cursor
    assert sql.endswith("ORDER BY first_seen DESC, task_id DESC LIMIT $8") and args[-1] == 51
    newer_sql, _ = page_query("s", TaskFilter(), Cursor(EPOCH, "a"), newer=True, limit=5)
    assert "(first_seen, task_id) > ($1, $2)" in newer_sql and "ASC" in newer_sql


def test_live_messages_are_parsed_and_bad_entries_skipped() -> None:
    key = names.task_key("p:", "task-1")
    message = json.dumps([[key, "SUCCESS", 1700000000000, 2, "w1", "add"],
                          [key, "STARTED", "nan?", 0, False, False],
                          ["other:task-2", "STARTED", 1, 0, False, False],
                          "junk"])
    [t] = parse_message("p:", message)
    assert (t.task_id, t.state, t.timestamp, t.attempt, t.worker, t.task_name) == (
        "task-1", "SUCCESS", 1700000000000, 2, "w1", "add")
    assert parse_message("p:", "not json") == []


def test_templates_escape_task_data() -> None:
    env = environment()
    html = env.from_string("<pre>{{ v }}</pre><script>{{ d|tojson }}</script>").render(
        v="<script>alert(1)</script>", d={"x": "</script><b>"})
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html
    assert "</script><b>" not in html


@pytest.mark.parametrize(("task_id", "href"), [
    ("plain-1", "/tasks/plain-1"),
    ("dots/../x", "/tasks/dots%2F..%2Fx"),  # not /tasks/x once the browser resolves ".."
    ("a b?c#d&e+f%g\\h", "/tasks/a%20b%3Fc%23d%26e%2Bf%25g%5Ch"),
    (".", "/task?id=."), ("..", "/task?id=.."),  # dot segments: not a path at all
    ("...", "/tasks/..."), ("%2E%2E", "/tasks/%252E%252E"),
    ("nul\x00id", "/tasks/nul%00id"),
])
def test_task_links_keep_the_id_whole(task_id: str, href: str) -> None:
    from resultlog.dashboard.templating import task_href

    assert task_href(task_id) == href
    html = environment().from_string('<a href="{{ i|task_href }}">{{ i }}</a>').render(i=task_id)
    assert html.startswith(f'<a href="{href.replace("&", "&amp;")}">')


def test_templates_never_write_a_nul() -> None:
    env = environment()
    html = env.from_string(
        "{% macro m(v) %}<i>{{ v }}</i>{% endmacro %}<b>{{ v }}</b>{{ m(v) }}<p x='{{ v|tojson }}'>"
    ).render(v="a\x00b<")
    assert "\x00" not in html
    assert "<b>a\N{SYMBOL FOR NULL}b&lt;</b><i>a\N{SYMBOL FOR NULL}b&lt;</i>" in html
    assert "a\\u0000b" in html  # tojson: the script reads the id as it is


def test_port_0_is_announced_as_the_port_it_got() -> None:
    from resultlog.dashboard.commands import address_url, listen

    with listen("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        assert port != 0 and address_url(sock) == f"http://127.0.0.1:{port}/"
        with pytest.raises(ValidationError, match=f"--port {port}: cannot listen there"):
            listen("127.0.0.1", port)
    with listen("::1", 0) as sock:
        assert address_url(sock) == f"http://[::1]:{sock.getsockname()[1]}/"


@pytest.mark.parametrize("host, port", [("example.com", 80), ("127.0.0.1", 70000)])
def test_address_is_checked(host: str, port: int) -> None:
    with pytest.raises(ValidationError):
        check_address(host, port)


def test_task_data_another_producer_wrote_is_shown_not_a_500() -> None:
    # Nested deeper than Python's json reads: shown as it is (was a RecursionError).
    deep = "[" * 100_000 + "]" * 100_000  # past what 3.11 to 3.13 read (3.13: ~10,000)
    assert pretty_json(deep) == deep
    # A lone surrogate escape: kept escaped (the page, UTF-8, cannot carry it raw).
    assert pretty_json('"\\ud800"') == '"\\ud800"'
    assert pretty_json('{"a": "\u00e9"}') == '{\n  "a": "\u00e9"\n}'
    # An eta past what a datetime holds (events cannot carry such a timestamp any more).
    assert ms_time(10**15 - 1) == "999999999999999 ms since the epoch"
    assert ms_time(LATEST_DATETIME_MS) == "9999-12-31T23:59:59.999Z"
