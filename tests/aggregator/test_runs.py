"""Each aggregator run in its own directory: resume, resume = false, changed spec, old layout."""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import replace

import numpy as np
import pytest
from support import AGGREGATOR_SIGNER, SPEC, EnrolledFleet

from fedmq.aggregator.checkpoint import Checkpoints, RunCheckpoint
from fedmq.aggregator.runs import RunDirs, new_run_id, point_latest
from fedmq.aggregator.store import LEGACY_FIELDS, RunStore


class _Crash(Exception):
    """The gateway losing power after a round was recorded."""


def _crash(_result):
    raise _Crash


def _files(root):
    """Every file under ``root`` with its bytes: to prove a run was left untouched."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _unfinished_run(make_aggregator, broker_port, start_agents):
    """A real run that crashed after round 1 of 3: what the next start finds."""
    start_agents(broker_port, 1)
    first = make_aggregator(broker_port, rounds=3)
    first._on_round = _crash
    with pytest.raises(_Crash):
        first.run()
    return first


def test_resume_false_starts_a_new_run_and_leaves_the_old_one_untouched(
        make_aggregator, broker_port, start_agents, tmp_path):
    """The README promised it; it overwrote the old run's model and appended to its log."""
    _unfinished_run(make_aggregator, broker_port, start_agents)
    state = tmp_path / "aggregator"
    before = _files(state)
    start_agents(broker_port, 1, first_seed=1)
    second = make_aggregator(broker_port, rounds=2)
    object.__setattr__(second.config, "resume", False)
    second.run()
    assert [r.round_id for r in second.results] == [1, 2]
    assert {p: b for p, b in _files(state).items() if p in before} == before
    new_dir = (state / "latest").resolve()
    rows = _rows(new_dir / "rounds.csv")
    assert [(r["run_id"], r["round"], r["phase"]) for r in rows] == [
        (new_dir.name, "1", "training"), (new_dir.name, "2", "training"),
        (new_dir.name, "3", "evaluation")]  # the final model's fleet evaluation
    assert len(list((state / "runs").iterdir())) == 2


def test_a_changed_model_spec_starts_a_new_run_instead_of_failing(
        make_aggregator, broker_port, start_agents, tmp_path, caplog, keypair):
    """It failed with 'global_model.npz holds another model than the config'."""
    from fedmq.aggregator.service import Aggregator

    first = _unfinished_run(make_aggregator, broker_port, start_agents)
    old_dir = first.store.model_path.parent
    other = replace(SPEC, center=(1.0,) * len(SPEC.features))
    second = Aggregator(replace(first.config, spec=other), keypair=keypair,
                        signer=AGGREGATOR_SIGNER, allow_list=EnrolledFleet())
    caplog.set_level(logging.WARNING)
    start = second._start_point()
    assert (start.round_id, start.version, start.open_round) == (1, 0, None)
    assert second.store.run_dir != old_dir and (tmp_path / "aggregator" / "latest").resolve() \
        == second.store.run_dir
    assert "trained another model than [model] now describes; starting a new run" in caplog.text


def test_an_unfinished_run_with_the_same_config_is_resumed(
        make_aggregator, broker_port, start_agents):
    first = _unfinished_run(make_aggregator, broker_port, start_agents)
    second = make_aggregator(broker_port, rounds=3)
    start = second._start_point()
    assert (start.run_id, start.round_id, start.version) == (first.store.run_id, 2, 1)
    assert second.store.run_dir == first.store.run_dir


def test_state_from_before_run_directories_is_moved_into_one_and_resumed(
        make_aggregator, broker_port, tmp_path, caplog):
    state = tmp_path / "aggregator"
    agg = make_aggregator(broker_port, rounds=3)
    Checkpoints(state).save(RunCheckpoint(
        run_id="0123456789abcdef", fleet="test", key_fingerprint=agg.fingerprint,
        codec_digest=agg.codec_digest, round_id=1, model_version=1, status="closed"))
    RunStore(state).save_model(SPEC, np.ones(SPEC.n_params), round_id=1, version=1)
    (state / "rounds.csv").write_text(",".join(LEGACY_FIELDS) + "\n1,1,all,1,1,0,40,0.1,1,a,\n")
    caplog.set_level(logging.WARNING)
    start = agg._start_point()
    assert (start.run_id, start.round_id, start.version) == ("0123456789abcdef", 2, 1)
    moved = state / "runs" / "0123456789abcdef"
    assert (state / "latest").resolve() == moved and not (state / "run.json").exists()
    assert sorted(p.name for p in moved.iterdir()) == ["global_model.npz", "rounds.csv",
                                                       "run.json"]
    assert "each run now has its own directory" in caplog.text
    # Read in today's columns: the run id in front, the fleet columns empty.
    assert agg.store._rows() == [["0123456789abcdef", "1", "1", "all", "1", "1", "0", "40",
                                  "0.1", "1", "a", "", "training", *[""] * 15]]


def test_a_new_run_after_a_finished_one_is_info_not_a_warning(
        make_aggregator, broker_port, tmp_path, caplog):
    """Issue 24: starting again after a finished run is normal operation (no WARNING)."""
    state = tmp_path / "aggregator"
    agg = make_aggregator(broker_port, rounds=3)
    done = RunDirs(state).create("20260101-000000-done")
    Checkpoints(done).save(RunCheckpoint(
        run_id=done.name, fleet="test", key_fingerprint=agg.fingerprint,
        codec_digest=agg.codec_digest, round_id=4, model_version=3, status="finished"))
    caplog.set_level(logging.INFO)
    start = agg._start_point()
    assert start.run_id != done.name and start.round_id == 1
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "not resuming" in
            r.getMessage()]
    assert said == [(logging.INFO, f"not resuming {done.resolve()}: run {done.name} finished; "
                                   "starting a new run")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_latest_is_a_relative_link_replaced_in_place(tmp_path):
    runs = RunDirs(tmp_path / "gw")
    a, b = runs.create("a"), runs.create("b")
    assert os.readlink(runs.latest_link) == os.path.join("runs", "b")
    point_latest(runs.latest_link, a)
    assert runs.latest() == a.resolve()
    assert sorted(p.name for p in (tmp_path / "gw").iterdir()) == ["latest", "runs"]
    assert b.is_dir()


def test_run_ids_sort_by_start_time_and_differ_within_a_second():
    ids = [new_run_id(1_700_000_000.0) for _ in range(20)]
    assert ids[0].startswith("20231114-221320-") and len(set(ids)) > 1
    assert new_run_id(1_700_000_001.0) > max(ids)


def test_stopped_while_waiting_for_devices_opens_no_round_and_restarts_quietly(
        make_aggregator, broker_port, tmp_path, caplog):
    """Issue 24 (review): an aggregator stopped while it waited for its devices announced
    a statistics round of a run it never saved; devices answered that stale round, and the
    next start warned twice. Now it opens nothing, and the next start is quiet."""
    from mqtt_support import Probe
    from support import run_in_thread, wait_until

    from fedmq.aggregator.service import RoundFailed
    from fedmq.protocol.messages import RoundMessage

    caplog.set_level(logging.INFO)
    unscaled = replace(SPEC, center=None, scale=None)  # a statistics round comes first
    first = make_aggregator(broker_port, rounds=1, min_agents=2, start_timeout=60.0,
                            spec=unscaled)
    probe = Probe(broker_port, "watcher")
    assert probe.connect()
    probe.subscribe(first.config.topics.round)
    thread, out = run_in_thread(first.run)
    try:
        wait_until(lambda: "waiting for" in caplog.text.lower(), "the aggregator to wait", 20)
        first.stop()
        thread.join(20)
        assert not thread.is_alive()
        assert isinstance(out.get("error"), RoundFailed), out
        assert "stopped before round 1" in str(out["error"])
        time.sleep(0.5)  # anything it published has reached the probe by now
        rounds = [RoundMessage.from_bytes(p) for t, p in probe.received if p]
        assert [r.state for r in rounds] == [], rounds  # no round opened, none failed
    finally:
        probe.close()
    caplog.clear()
    again = make_aggregator(broker_port, rounds=1, spec=unscaled)
    start = again._start_point()
    assert start.round_id == 1
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
