"""The command line's parsing (what runs behind it is tested against real services)."""

from __future__ import annotations

import math

import pytest

from resultlog.analytics_commands import fmt_seconds
from resultlog.cli import build_parser


def test_replay_takes_consumers_and_the_old_pipelines_spelling_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    assert parser.parse_args(["replay"]).consumers == 2
    assert parser.parse_args(["replay", "--consumers", "3"]).consumers == 3
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["replay", "--pipelines", "4"]).consumers == 4
    assert "--pipelines is deprecated, use --consumers" in capsys.readouterr().err


def test_replay_start_times_are_exact_and_within_what_kafka_can_look_up() -> None:
    from resultlog.errors import ValidationError
    from resultlog.processors.commands import parse_timestamp
    from resultlog.schemas.states import LATEST_DATETIME_MS

    assert parse_timestamp("1970-01-01") == 0 == parse_timestamp("0")
    # A float timestamp lands 1 ms short here; timedelta arithmetic does not.
    assert parse_timestamp("1970-01-01T00:01:05.526Z") == 65_526
    assert parse_timestamp("2026-11-22T11:00:00+01:00") == parse_timestamp("2026-11-22T10:00:00Z")
    assert parse_timestamp("9999-12-31T23:59:59.999Z") == LATEST_DATETIME_MS
    assert parse_timestamp(str(LATEST_DATETIME_MS)) == LATEST_DATETIME_MS
    for text, message in (("1969-12-31T23:59:59.999Z", "before the epoch"),
                          ("9999-12-31T23:59:59-00:01", "after 9999-12-31T23:59:59.999Z"),
                          (str(LATEST_DATETIME_MS + 1), "after 9999-12-31T23:59:59.999Z"),
                          ("-5", "expected ISO 8601"), ("", "expected ISO 8601")):
        with pytest.raises(ValidationError, match=message):
            parse_timestamp(text)


def test_replay_offsets_name_each_partition_once() -> None:
    from resultlog.errors import ValidationError
    from resultlog.processors.commands import parse_offsets

    assert parse_offsets("0:100, 3:0") == {0: 100, 3: 0}
    with pytest.raises(ValidationError, match="partition 3 is given twice"):
        parse_offsets("3:1,0:5,3:2")
    for text in ("", "0", "0:", ":1", "0:-1", "0:1,", "\u0663:1"):
        with pytest.raises(ValidationError, match="expected PARTITION:OFFSET"):
            parse_offsets(text)


def test_verify_checks_one_store_or_both() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["verify", "--redis-only", "--history-only"])


def test_a_duration_is_shown_in_seconds_and_one_that_is_no_number_as_itself() -> None:
    assert [fmt_seconds(v) for v in (None, 1234.5, math.nan, math.inf, -math.inf)] == \
        ["-", "1,234.500s", "nan", "inf", "-inf"]


def test_an_option_value_that_begins_with_a_dash_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse takes ``-3d`` for an option and says only "expected one argument"."""
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--older-than", "-3d"])
    assert ("argument --older-than: expected one argument (a value that begins with '-' is "
            "given with '=': --older-than=VALUE)") in capsys.readouterr().err
    # So given, it reaches resultlog's own check, which says what a duration is.
    assert parser.parse_args(["prune", "--older-than=-3d"]).older_than == "-3d"
