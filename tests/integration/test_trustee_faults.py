"""Trustees that die: one of three killed mid-run costs nothing; two end a round cleanly."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedmq.aggregator.outcome import RoundResult
from fedmq.simulation import trustees as sim_trustees
from fedmq.simulation.options import SimulationOptions
from fedmq.simulation.run import Simulation, SimulationReport

Hook = Callable[[Simulation, RoundResult], None]


def simulate(tmp_path: Path, hook: Hook | None = None, *, trustees: int = 3, rounds: int = 3,
             round_timeout: float = 20.0) -> tuple[Simulation, SimulationReport]:
    opts = SimulationOptions(agents=6, rounds=rounds, key_bits=512, trustees=trustees,
                             workers=0, out_dir=str(tmp_path), plot=False, seed=3,
                             samples_per_device=150, round_timeout=round_timeout)
    sim = Simulation(opts, progress=lambda _line: None)
    own = sim._on_round

    def on_round(result: RoundResult) -> None:
        own(result)
        if hook is not None:
            hook(sim, result)

    sim._on_round = on_round  # type: ignore[method-assign]
    return sim, sim.run()


def kill(sim: Simulation, *names: str) -> None:
    assert sim.trustees is not None
    for name in names:
        proc = sim.trustees.processes[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_same_model_bit_for_bit_with_and_without_trustees(tmp_path: Path) -> None:
    _, plain = simulate(tmp_path / "plain", trustees=0)
    sim, split = simulate(tmp_path / "split")
    assert np.array_equal(plain.final_params, split.final_params)
    assert sim.trustees is not None
    # No file of the run holds the whole key: only shares, public and verification keys.
    names = {p.name for p in split.out_dir.rglob("*") if p.is_file()}
    assert "paillier.key" not in names
    assert not any("private" in n for n in names)


def test_one_trustee_of_three_killed_mid_run_costs_nothing(tmp_path: Path) -> None:
    def hook(sim: Simulation, result: RoundResult) -> None:
        if result.phase == "training" and result.round_id == 1:
            kill(sim, "trustee-1")

    sim, report = simulate(tmp_path, hook)
    assert sim.aggregator is not None
    assert [r.closed_by for r in sim.aggregator.results] == ["all"] * 3
    assert [r.model_version for r in sim.aggregator.results] == [1, 2, 3]
    assert report.federated_score > 0.8


@pytest.mark.slow
def test_two_killed_end_the_round_cleanly_and_a_restarted_trustee_rejoins(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def hook(sim: Simulation, result: RoundResult) -> None:
        assert sim.trustees is not None
        if result.phase == "training" and result.round_id == 1:
            kill(sim, "trustee-1", "trustee-2")
        if result.phase == "training" and result.round_id == 2:
            sim_trustees.start(sim.trustees, "trustee-2")  # its ledger and share on disk

    # round_timeout 2 s and 5 extensions: the decryption of round 2 waits 12 s.
    sim, _ = simulate(tmp_path, hook, round_timeout=2.0)
    assert sim.aggregator is not None
    results = sim.aggregator.results
    assert [r.closed_by for r in results] == ["all", "rejected-sum", "all"]
    assert [r.model_version for r in results] == [1, 1, 2]  # round 2 kept the model
    assert np.array_equal(results[1].params, results[0].params)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("decryption needs 2 of 3 trustees, got 1; silent: trustee-1, trustee-2" in line
               for line in lines), lines
