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


def test_a_device_command_does_not_import_the_benchmarks():
    """Building every benchmark's arguments imported half the gateway into `fedmq agent`
    (~4 MB of a device's RSS, over its 60 MB budget): now only the benchmark being run."""
    import subprocess
    import sys

    code = ("import sys, fedmq.cli as c; c.build_parser('agent'); "
            "print(sorted(m for m in sys.modules if m.startswith('benchmarks')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    args = build_parser("bench-scale").parse_args(["bench-scale", "--agents", "5"])
    assert args.agents == [5]
    with pytest.raises(SystemExit):  # a benchmark's arguments exist only when it runs
        build_parser("agent").parse_args(["bench-scale", "--agents", "5"])
