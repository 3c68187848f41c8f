"""An agent that cannot serve a round says why in its retained status, and serves again.

Real roles on an embedded broker: the aggregator, a healthy agent that keeps the
rounds going, and the agent under test; its status is read by a raw subscriber.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_support import Probe
from support import (
    AGGREGATOR_SIGNER,
    FEATURES,
    EnrolledFleet,
    agent_config,
    local_data,
    run_in_thread,
    wait_until,
)

from fedmq.aggregator.service import Aggregator, RoundResult
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.edge_agent.data import LocalData
from fedmq.protocol.health import Skip
from fedmq.protocol.messages import StatusMessage
from fedmq.protocol.topics import Topics

pytestmark = pytest.mark.slow

STATUS = Topics("test").status("pi-bad")
RUN = "run-skips"


def retained_status(port: int) -> StatusMessage:
    """What the broker keeps for pi-bad: a subscriber that connects now gets it."""
    probe = Probe(port, "status-reader")
    try:
        assert probe.connect() and probe.subscribe(STATUS)
        assert probe.wait(lambda: bool(probe.got(STATUS)))
        return StatusMessage.from_bytes(probe.got(STATUS)[-1])
    finally:
        probe.close()


def _aggregator(make_aggregator: Callable[..., Aggregator], port: int, keypair: Any,
                on_round: Callable[[RoundResult], None] | None = None,
                **policy: Any) -> Aggregator:
    config = make_aggregator(port, **policy).config
    return Aggregator(config, keypair=keypair, signer=AGGREGATOR_SIGNER,
                      allow_list=EnrolledFleet(), on_round=on_round, run_id=RUN)


def _outside_classes(port: int) -> EdgeAgent:
    data = local_data(3, 50)
    return EdgeAgent(agent_config(port, "pi-bad"),
                     data=replace(data, y=data.y + 2))  # classes 2 and 3 of a 2-class model


def _other_features(port: int) -> EdgeAgent:
    data = local_data(3, 50)
    features = ("x1", "x2", "x4")
    return EdgeAgent(replace(agent_config(port, "pi-bad"), features=features),
                     data=LocalData(X=data.X, y=data.y, features=features, label="y"))


@pytest.mark.parametrize("make_bad, code, detail", [
    (_outside_classes, "class-outside-model", "class labels must lie in [0, 2)"),
    (_other_features, "feature-mismatch", "missing: x3; extra: x4"),
])
def test_an_agent_whose_data_does_not_fit_the_model_publishes_why_it_skipped(
        broker_port, make_aggregator, keypair, run_agents, caplog, make_bad, code, detail):
    caplog.set_level(logging.INFO)
    good, bad = run_agents(EdgeAgent(agent_config(broker_port, "pi-good"),
                                     data=local_data(0, 60)), make_bad(broker_port))
    # No final evaluation round: the bad agent would skip it too and its retained status
    # could name round 2 before this test reads it.
    aggregator = _aggregator(make_aggregator, broker_port, keypair, rounds=1, min_agents=2,
                             round_timeout=3.0, max_extensions=0, final_evaluation=False)
    thread, out = run_in_thread(aggregator.run)
    # Logged once the broker acknowledged the status.
    wait_until(lambda: "round 1 skipped" in caplog.text, "pi-bad to skip round 1")
    status = retained_status(broker_port)
    assert status.state == "online"
    assert status.skipped is not None
    assert (status.skipped.round_id, status.skipped.code) == (1, code)
    assert status.skipped.run_id == RUN
    assert detail in status.skipped.detail
    said = [r.getMessage() for r in caplog.records
            if r.name == "fedmq.edge_agent.agent" and "skipped" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"round 1 skipped ({code}): ")
    assert "fix: " in said[0]
    thread.join(20)
    assert "error" not in out
    assert [r.reported for r in aggregator.results] == [("pi-good",)]
    assert 1 in good.history and not bad.history


def _write_csv(path: Path, data: LocalData) -> None:
    np.savetxt(path, np.column_stack([data.X, data.y]), delimiter=",",
               header=",".join((*FEATURES, "y")), comments="")


def test_a_data_file_broken_mid_run_skips_rounds_until_it_is_fixed(
        tmp_path, broker_port, make_aggregator, keypair, run_agents, caplog):
    """Round 1 trains on the file; before round 2 a logger garbles it (data-error skip,
    the agent keeps running); before round 3 it is fixed and grown: the agent reads the
    new rows and contributes again, and its status no longer names a skip."""
    caplog.set_level(logging.INFO)
    csv_path = tmp_path / "pi-bad.csv"
    _write_csv(csv_path, local_data(3, 50))
    bad = EdgeAgent(replace(agent_config(broker_port, "pi-bad"), data_path=str(csv_path)))
    good = EdgeAgent(agent_config(broker_port, "pi-good"), data=local_data(0, 60))

    def between_rounds(result: RoundResult) -> None:  # the aggregator's thread, before the next
        if result.round_id == 1:
            with csv_path.open("a") as fh:
                fh.write("1.0,oops,3.0,1\n")
        elif result.round_id == 2:
            _write_csv(csv_path, local_data(3, 70))

    aggregator = _aggregator(make_aggregator, broker_port, keypair, between_rounds,
                             rounds=3, min_agents=2, round_timeout=3.0, max_extensions=0)
    watcher = Probe(broker_port, "status-watcher")
    assert watcher.connect() and watcher.subscribe(STATUS)
    try:
        run_agents(good, bad)
        thread, out = run_in_thread(aggregator.run)
        thread.join(40)
        assert not thread.is_alive() and "error" not in out
        watcher.wait(lambda: b'"offline"' in b"".join(watcher.got(STATUS)))
    finally:
        watcher.close()
    assert [sorted(r.reported) for r in aggregator.results] == [
        ["pi-bad", "pi-good"], ["pi-good"], ["pi-bad", "pi-good"]]
    assert sorted(bad.history) == [1, 3]
    assert bad.history[3].weight == 70  # the rows of the fixed file
    said = [r.getMessage() for r in caplog.records
            if r.name == "fedmq.edge_agent.agent" and "skipped" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("round 2 skipped (data-error): ")
    assert "pi-bad.csv:52" in said[0] and "fix: fix the data file" in said[0]
    statuses = [StatusMessage.from_bytes(p) for p in watcher.got(STATUS)]
    seen = [(s.state, s.skipped.code if s.skipped else None) for s in statuses]
    seen = [x for i, x in enumerate(seen) if i == 0 or seen[i - 1] != x]
    assert seen == [("online", None), ("online", "data-error"), ("online", None),
                    ("offline", None)]
    # The gateway learns the line and what is wrong, not the cell or the device's paths.
    assert next(s.skipped for s in statuses if s.skipped) == Skip(
        RUN, 2, "data-error", "data file line 52: column 'x2' is not a number")
