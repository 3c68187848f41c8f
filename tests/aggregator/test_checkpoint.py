"""Restart state of the aggregator: checkpoint files and where a restarted run resumes."""

from __future__ import annotations

import csv
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from support import AGGREGATOR_SIGNER, SPEC, EnrolledFleet, agent_config, local_data, wait_until

from fedmq.aggregator.checkpoint import Checkpoints, RunCheckpoint, start_point
from fedmq.aggregator.service import Aggregator, RoundFailed
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.protocol.errors import ConfigError


def checkpoint(**kw):
    base = dict(run_id="r1", fleet="test", key_fingerprint="k" * 64, codec_digest="c" * 32,
                round_id=3, model_version=2, status="open", expected=("a", "b"),
                sampled=True, opened_at=1.0, deadline=2.0, extensions=1)
    return RunCheckpoint(**{**base, **kw})


def test_checkpoint_round_trip_and_accepted_payloads(tmp_path):
    cps = Checkpoints(tmp_path)
    assert cps.load() is None
    cps.save(checkpoint())
    assert cps.load() == checkpoint()
    cps.save_update("a", b"payload-a")
    cps.save_update("b", b"payload-b")
    assert cps.load_updates() == [("a", b"payload-a"), ("b", b"payload-b")]
    cps.clear_updates()
    assert cps.load_updates() == []
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


@pytest.mark.parametrize("content", ["{", '{"schema": "other"}', '{"schema": '
                                     '"fedmq.aggregator-state/1", "status": "weird"}'])
def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path, content):
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(ConfigError, match="cannot resume"):
        Checkpoints(tmp_path).load()


def test_agent_ids_cannot_escape_the_state_dir(tmp_path):
    """An id is a row's key, never a file name: nothing is written outside the run."""
    run = tmp_path / "run"
    Checkpoints(run).save_update("../evil", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert Checkpoints(run).load_updates() == [("../evil", b"x")]


def test_updates_of_earlier_versions_are_still_read(tmp_path):
    """open_round/<agent>.fmqu (one file per update) from before the group commit."""
    cps = Checkpoints(tmp_path)
    (tmp_path / "open_round").mkdir()
    (tmp_path / "open_round" / "old.fmqu").write_bytes(b"payload-old")
    cps.save_update("new", b"payload-new")
    assert cps.load_updates() == [("old", b"payload-old"), ("new", b"payload-new")]
    cps.clear_updates()
    assert cps.load_updates() == []


def earlier_run(tmp_path, run_id="r1"):
    """The directory of an earlier run that ``latest`` names, for a test to fill."""
    from fedmq.aggregator.runs import RunDirs

    return RunDirs(tmp_path / "aggregator").create(run_id)


def make(port, tmp_path, keypair, **policy):
    from fedmq.aggregator.config import AggregatorConfig, RoundPolicy
    from fedmq.protocol.messages import TrainingSettings
    from fedmq.protocol.topics import Topics
    from fedmq.runtime.transport import MqttSettings

    config = AggregatorConfig(
        topics=Topics("test"), spec=SPEC, mqtt=MqttSettings(port=port),
        policy=RoundPolicy(**{"rounds": 2, "round_timeout": 10.0, "quorum": 2,
                              "min_agents": 2, "start_timeout": 20.0, **policy}),
        training=TrainingSettings(epochs=2, batch_size=8, learning_rate=0.1),
        state_dir=str(tmp_path / "aggregator"))
    return Aggregator(config, keypair=keypair, signer=AGGREGATOR_SIGNER,
                      allow_list=EnrolledFleet())


def test_a_closed_round_is_never_reopened(tmp_path, keypair, broker_port):
    """Crash after the new model was saved but before the checkpoint said so."""
    earlier_run(tmp_path)
    agg = make(broker_port, tmp_path, keypair)
    agg.checkpoints.save(checkpoint(fleet="test", key_fingerprint=agg.fingerprint,
                                    codec_digest=agg.codec_digest, round_id=1,
                                    model_version=0))
    agg.store.save_model(SPEC, np.ones(SPEC.n_params), round_id=1, version=1)
    start = agg._start_point()
    assert (start.run_id, start.round_id, start.version, start.open_round) == ("r1", 2, 1, None)
    np.testing.assert_array_equal(start.params, np.ones(SPEC.n_params))


def test_a_quarantined_device_stays_out_after_a_restart(tmp_path, keypair, broker_port):
    """A culprit named by the search is in every checkpoint; a restarted run keeps it out."""
    earlier_run(tmp_path)
    agg = make(broker_port, tmp_path, keypair)
    agg._inbound.quarantine("mallory", (3, 4, 5))
    cp = agg._checkpoint("r1", 5, 4, "closed")
    assert cp.quarantined == ("mallory",)
    agg.checkpoints.save(cp)
    agg.store.save_model(SPEC, np.ones(SPEC.n_params), round_id=5, version=4)
    restarted = make(broker_port, tmp_path, keypair)
    assert restarted._start_point().round_id == 6
    assert "mallory" in restarted._inbound.quarantined
    assert restarted._checkpoint("r1", 6, 4, "open").quarantined == ("mallory",)
    # a new run starts with nobody quarantined
    fresh = make(broker_port, tmp_path, keypair)
    object.__setattr__(fresh.config, "resume", False)
    fresh._start_point()
    assert fresh._inbound.quarantined == {}


def test_state_of_another_key_is_refused(tmp_path, keypair, broker_port):
    earlier_run(tmp_path)
    agg = make(broker_port, tmp_path, keypair)
    agg.checkpoints.save(checkpoint(fleet="test"))
    with pytest.raises(ConfigError, match=r"r1/run\.json: the run belongs to another fleet or key"):
        agg._start_point()
    resumed_off = make(broker_port, tmp_path, keypair)
    object.__setattr__(resumed_off.config, "resume", False)
    assert resumed_off._start_point().round_id == 1


def test_restarted_aggregator_resumes_the_open_round_with_its_accepted_updates(
        tmp_path, keypair, broker_port):
    fast = EdgeAgent(agent_config(broker_port, "agent-0"), data=local_data(0, 50))
    slow = EdgeAgent(agent_config(broker_port, "agent-1", straggle_seconds=2.5),
                     data=local_data(1, 60))
    threads = [threading.Thread(target=a.run, daemon=True) for a in (fast, slow)]
    for t in threads:
        t.start()
    try:
        first = make(broker_port, tmp_path, keypair)
        done = threading.Event()

        def run_first() -> None:
            with pytest.raises(RoundFailed, match="stopped"):
                first.run()
            done.set()

        threading.Thread(target=run_first, daemon=True).start()
        deadline = time.monotonic() + 15
        while not first.checkpoints.load_updates() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [a for a, _ in first.checkpoints.load_updates()] == ["agent-0"]
        first.stop()  # the gateway goes down inside round 1, agent-1 still training
        assert done.wait(10)

        second = make(broker_port, tmp_path, keypair)
        final = second.run()
        # "finished" is published as run() returns: let the agent take it before stopping.
        wait_until(lambda: fast.final_params is not None, "agent-0 to take the final model")
    finally:
        for a in (fast, slow):
            a.stop()
        for t in threads:
            t.join(5)
    r1, r2 = second.results
    assert r1.round_id == 1 and sorted(r1.reported) == ["agent-0", "agent-1"]
    assert r1.total_weight == 110 and r1.model_version == 1
    assert r2.round_id == 2 and r2.model_version == 2
    with (tmp_path / "aggregator" / "latest" / "rounds.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["round"], r["model_version"], r["phase"]) for r in rows] == [
        ("1", "1", "training"), ("2", "2", "training"), ("3", "2", "evaluation")]
    assert rows[0]["agents"].split() == list(r1.reported)
    assert second.checkpoints.load().status == "finished"
    np.testing.assert_array_equal(final, fast.final_params)


def test_sampling_selects_a_subset_each_round(tmp_path, keypair, broker_port,
                                              start_agents):
    agents = start_agents(broker_port, 4)
    agg = make(broker_port, tmp_path, keypair, rounds=3, quorum=2, min_agents=4,
               sample_count=2)
    agg.run()
    for result in agg.results:
        assert result.expected == 2 and len(result.reported) == 2
    for result in agg.results:
        # Agents not selected stay idle: exactly the selected ones trained and sent.
        trained = {a.config.agent_id for a in agents if result.round_id in a.history}
        assert trained == set(result.reported)
    unused = replace(agg.config.policy, sample_fraction=0.5, sample_count=0)
    assert unused.sample_size(10) == 5 and unused.sample_size(3) == 2  # never below quorum


@pytest.mark.parametrize("cp,saved,expect", [
    (None, None, (1, 0, False)),
    (checkpoint(status="finished"), 5, (1, 0, False)),     # a finished run: start anew
    (checkpoint(status="open"), 2, (3, 2, True)),          # resume the open round
    (checkpoint(status="open"), 3, (4, 3, False)),         # closed + saved, not recorded
    (checkpoint(status="closed", model_version=3), 3, (4, 3, False)),
])
def test_start_point_decisions(cp, saved, expect):
    params = np.ones(3)
    start = start_point(cp, identity=("test", "k" * 64, "c" * 32), saved_params=params,
                        saved_version=saved, fresh_run_id="fresh")
    assert (start.round_id, start.version, start.open_round is not None) == expect
    assert start.run_id == ("fresh" if expect[0] == 1 else "r1")


def test_a_missing_model_beside_a_run_is_refused(tmp_path, keypair, broker_port):
    """Without global_model.npz a resumed run would restart from (or finish with) zeros."""
    earlier_run(tmp_path)
    agg = make(broker_port, tmp_path, keypair)
    ident = dict(fleet="test", key_fingerprint=agg.fingerprint, codec_digest=agg.codec_digest)
    for cp in (checkpoint(**ident, status="closed", model_version=2),
               checkpoint(**ident, status="open", model_version=2)):
        agg.checkpoints.save(cp)
        with pytest.raises(ConfigError, match=r"global_model.npz .*missing.*restore it"):
            agg._start_point()
    # A saved model older than the checkpoint is as wrong as none at all.
    agg.store.save_model(SPEC, np.ones(SPEC.n_params), round_id=1, version=1)
    with pytest.raises(ConfigError, match=r"global_model\.npz holds model version 1"):
        agg._start_point()
    # Round 1 still open: no model was ever saved, and none is needed.
    agg.store.model_path.unlink()
    agg.checkpoints.save(checkpoint(**ident, status="open", round_id=1, model_version=0))
    assert agg._start_point().open_round is not None


def test_unreadable_open_round_is_an_error_not_zero_updates(tmp_path):
    cps = Checkpoints(tmp_path)
    cps.updates_dir.write_bytes(b"not a directory")
    with pytest.raises(ConfigError, match=r"open_round.*not a directory"):
        cps.load_updates()
    with pytest.raises(ConfigError, match=r"open_round.*not a directory"):
        cps.clear_updates()
    cps.updates_dir.unlink()
    (cps.updates_dir / "agent-0.fmqu").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"cannot read .*agent-0\.fmqu"):
        cps.load_updates()


@pytest.mark.parametrize("field,value", [
    ("round_id", "25"), ("round_id", True), ("round_id", 2.0), ("model_version", None),
    ("deadline", "soon"), ("opened_at", False), ("expected", "ab"), ("expected", [1]),
    ("sampled", 1), ("run_id", 5), ("extensions", -1), ("round_id", 0),
    ("quarantined", "mallory"), ("quarantined", [None]),
])
def test_checkpoint_fields_are_typed_strictly(tmp_path, field, value):
    import json

    doc = {"schema": "fedmq.aggregator-state/1", **checkpoint().__dict__,
           "expected": ["a", "b"], field: value}
    (tmp_path / "run.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=f"run.json.*{field}"):
        Checkpoints(tmp_path).load()


class _Crash(BaseException):
    """The gateway losing power: nothing after this point of the code runs."""


def _crash_in_window(agg, window):
    if window == "before the closed checkpoint":
        save = agg.checkpoints.save

        def save_unless_closed(cp):
            if cp.status == "closed":
                raise _Crash
            save(cp)
        agg.checkpoints.save = save_unless_closed
    else:  # after the closed checkpoint, before the rounds.csv append
        def record(_result):
            raise _Crash
        agg.store.record = record


@pytest.mark.parametrize("window", ["before the closed checkpoint", "before the csv append"])
def test_the_audit_row_of_a_round_survives_a_crash_in_any_window(
        tmp_path, keypair, broker_port, start_agents, window):
    start_agents(broker_port, 2)
    first = make(broker_port, tmp_path, keypair)
    _crash_in_window(first, window)
    with pytest.raises(_Crash):
        first.run()
    first._link.close()
    log = tmp_path / "aggregator" / "latest" / "rounds.csv"
    assert not log.exists()  # the crash hit before the row was written
    second = make(broker_port, tmp_path, keypair)
    second._start_point()
    second._start_point()  # recovery is idempotent: never a duplicate row
    second.run()
    with log.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["round"], r["model_version"], r["phase"]) for r in rows] == [
        ("1", "1", "training"), ("2", "2", "training"), ("3", "2", "evaluation")]
    assert sorted(rows[0]["agents"].split()) == ["agent-0", "agent-1"]
    assert rows[0]["closed_by"] == "all"


def test_a_broken_allow_list_stops_the_start_but_never_a_running_round(
        tmp_path, keypair, broker_port, caplog):
    from fedmq.aggregator.allowlist import AllowListFile, enroll

    agg = make(broker_port, tmp_path, keypair)
    path = tmp_path / "allow.json"
    agg.enrolled = AllowListFile(path)
    path.write_text("null")
    with pytest.raises(ConfigError, match=r"allow\.json"):
        agg._start_point()
    path.unlink()
    enroll(path, "dev-a", AGGREGATOR_SIGNER.public_hex)
    assert list(agg.allow_list()) == ["dev-a"]
    path.write_bytes(b"\x00\xff binary")  # broken mid-run
    assert list(agg.allow_list()) == ["dev-a"]
    assert "keeping the allow-list read before" in caplog.text
    # A broken relays section stops the start too (it used to leave the relays out, with
    # an error line every round).
    path.unlink()
    enroll(path, "dev-a", AGGREGATOR_SIGNER.public_hex)
    path.write_text(path.read_text().replace('"agents"', '"relays": [], "agents"'))
    agg.enrolled = AllowListFile(path)
    with pytest.raises(ConfigError, match="'relays' must map"):
        agg._start_point()
