"""The command line's parsing (what runs behind it is tested against real services)."""

from __future__ import annotations

import pytest

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
