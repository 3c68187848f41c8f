"""Options every subcommand shares: ``-v`` before or after the subcommand."""

from __future__ import annotations

import logging

import pytest

from fedmq.cli import build_parser, main


@pytest.mark.parametrize("argv,level", [
    (["agent", "--config", "x.toml"], 0),
    (["-v", "agent", "--config", "x.toml"], 1),
    (["agent", "--config", "x.toml", "-v"], 1),  # was: unrecognized arguments: -v
    (["agent", "-vv", "--config", "x.toml"], 2),
    (["broker", "add-user", "--verbose"], 1),
    (["simulate", "-v", "--agents", "3"], 1),
])
def test_verbose_is_accepted_after_the_subcommand(argv, level):
    assert build_parser().parse_args(argv).verbose == level


def test_verbose_after_the_subcommand_turns_on_debug_logging(tmp_path, monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: seen.append(kw["level"]))
    assert main(["sample-data", "--devices", "1", "--out", str(tmp_path), "-v"]) == 0
    assert main(["sample-data", "--devices", "1", "--out", str(tmp_path)]) == 0
    assert seen == [logging.DEBUG, logging.INFO]
