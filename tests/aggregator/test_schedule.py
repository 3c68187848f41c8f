"""[schedule]: durations, validation, when the next run is due, what survives a restart."""

from __future__ import annotations

import json

import pytest

from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.schedule import (
    LastRun,
    Schedule,
    ScheduleFile,
    parse_duration,
    ready_count,
    run_id_time,
)
from fedmq.aggregator.schema import ScheduleTable
from fedmq.protocol.errors import ConfigError

MODEL = "[model]\nkind='logistic'\nfeatures=['a']\nn_classes=2\n"


@pytest.mark.parametrize("text,seconds", [
    ("90s", 90.0), ("15m", 900.0), ("6h", 21600.0), ("1.5d", 129600.0), (" 2 s ", 2.0),
    (".5s", 0.5),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["6", "6 hours", "h", "-1h", "0s", "1e3s", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError, match="every"):
        parse_duration(text)


def test_off_by_default_and_schema_defaults_match() -> None:
    cfg = AggregatorConfig.from_dict({"model": {"kind": "linear", "features": ["a"]}})
    assert not cfg.schedule.enabled and cfg.schedule == Schedule()
    table = ScheduleTable()
    assert (table.min_new_rows, table.ready_devices, table.check_seconds, table.warm_start) == (
        Schedule().min_new_rows, Schedule().ready_devices, Schedule().check_seconds,
        Schedule().warm_start)


def test_config_reads_schedule(tmp_path) -> None:
    path = tmp_path / "agg.toml"
    path.write_text(MODEL + "[schedule]\nevery='24h'\nmin_new_rows=5000\nready_devices=3\n"
                    "check_seconds=10\n")
    cfg = AggregatorConfig.from_file(path)
    assert cfg.schedule == Schedule(every=86400.0, min_new_rows=5000, ready_devices=3,
                                    check_seconds=10.0)
    assert cfg.schedule.enabled


@pytest.mark.parametrize("text,match", [
    ("[schedule]\nevery='soon'\n", r"agg.toml: \[schedule\]: every = 'soon' is not a duration"),
    ("[schedule]\nevery=24\n", r"\[schedule\] every: expected str"),
    ("[schedule]\nmin_new_rows=-1\n", r"\[schedule\] min_new_rows"),
    ("[schedule]\nready_devices=0\n", r"\[schedule\] ready_devices"),
    ("[schedule]\ncheck_seconds=0\n", r"\[schedule\] check_seconds"),
    ("[schedule]\nevry='1h'\n", "unknown"),
])
def test_bad_schedule_gives_one_line(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "agg.toml"
    path.write_text(MODEL + text)
    with pytest.raises(ConfigError, match=match) as info:
        AggregatorConfig.from_file(path)
    assert "\n" not in str(info.value)


def test_next_run_counts_from_the_start_and_never_overlaps() -> None:
    sched = Schedule(every=100.0)
    assert sched.next_at(1000.0, 1030.0) == 1100.0  # from the start
    assert sched.next_at(1000.0, 1250.0) == 1250.0  # a long run: right after it
    assert Schedule(min_new_rows=5).next_at(1000.0, 1030.0) == 0.0  # no timer


def test_schedule_file_survives_restarts(tmp_path) -> None:
    f = ScheduleFile(tmp_path)
    assert f.load() is None
    f.save(LastRun("20261207-120000-abcd", 1000.0))
    assert f.load() == LastRun("20261207-120000-abcd", 1000.0, 0.0)
    # Killed before the end was written: the end is "now", the start is kept.
    assert f.last("20261207-120000-abcd", now=2000.0) == LastRun(
        "20261207-120000-abcd", 1000.0, 2000.0)
    f.save(LastRun("20261207-120000-abcd", 1000.0, 1500.0))
    assert f.last("20261207-120000-abcd", now=2000.0).ended_at == 1500.0


def test_schedule_file_falls_back_to_the_run_id(tmp_path, caplog) -> None:
    f = ScheduleFile(tmp_path)
    started = run_id_time("20261207-120000-abcd")
    assert started == 1796644800.0
    assert f.last("20261207-120000-abcd", now=5e9) == LastRun("20261207-120000-abcd",
                                                              started, 5e9)
    assert f.last("sim-run", now=7.0) == LastRun("sim-run", 7.0, 7.0)
    f.path.write_text(json.dumps({"schema": "fedmq.schedule/1", "run_id": 3}))
    assert f.load() is None and "ignoring" in caplog.text


def test_ready_counts_online_enrolled_devices_of_the_last_run() -> None:
    ready = {"a": "r1", "b": "r1", "c": "r0", "d": "r1", "e": "r1"}
    online = {"a": True, "b": True, "c": True, "d": False, "e": True}
    assert ready_count(ready, online, {"a", "b", "c", "d"}, "r1") == 2
