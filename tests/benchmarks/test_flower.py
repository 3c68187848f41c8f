"""bench-flower: Flower and fedmq get the same fleet, split, model and start; a tiny run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedmq.benchmarks.flower import _env, flower_python, run_flower, table
from fedmq.benchmarks.flower_task import SCALING, TASK, Task, write_fleet
from fedmq.simulation.run import Simulation, SimulationOptions


@pytest.fixture(scope="module")
def flower() -> str:
    """A Python with flwr; skip without one, or fail if FEDMQ_REQUIRE_FLOWER=1 (.ci/run
    builds .venv-flower and sets it)."""
    python = flower_python()
    if python is None:
        message = "no Python with flwr (make .venv-flower/.installed)"
        if os.environ.get("FEDMQ_REQUIRE_FLOWER") == "1":
            pytest.fail(message + "; FEDMQ_REQUIRE_FLOWER=1 requires it")
        pytest.skip(message)
    return python


def _fedmq_side(task: Task, out: Path) -> Simulation:
    return Simulation(SimulationOptions(
        agents=task.clients, rounds=task.rounds, task=TASK, scaling=SCALING, seed=task.seed,
        samples_per_device=task.samples_per_device, out_dir=str(out), plot=False))


def test_flower_and_fedmq_get_the_same_split_model_and_start(tmp_path: Path, flower: str) -> None:
    task = Task(clients=4, rounds=1, samples_per_device=200, seed=3)
    sim = _fedmq_side(task, tmp_path / "fedmq")
    fedmq_files = sim._write_data()  # the CSVs fedmq's agents load
    flower_files = write_fleet(task, tmp_path / "flower")
    assert [p.read_bytes() for p in flower_files] == [p.read_bytes() for p in fedmq_files]
    assert sim.spec == task.spec
    assert (sim.options.epochs, sim.options.batch_size, sim.options.learning_rate) == (
        task.epochs, task.batch_size, task.learning_rate)
    got = json.loads(subprocess.run(
        [flower, "-m", "fedmq.benchmarks.flower_side", "describe", task.to_json(),
         *map(str, flower_files)], capture_output=True, text=True, check=True,
        env=_env()).stdout)
    assert got["samples"] == [len(d.train) for d in sim.devices]  # the FedAvg weights
    assert got["n_params"] == sim.spec.n_params
    zeros = np.zeros(sim.spec.n_params)  # where a new fedmq run starts (aggregator.runs)
    np.testing.assert_array_equal(got["initial_params"], zeros)
    for params in got["client_params"]:
        np.testing.assert_array_equal(params, zeros)


@pytest.mark.slow
def test_a_tiny_run_of_both_sides_learns_the_same_model(tmp_path: Path, flower: str) -> None:
    from fedmq.benchmarks.flower_fedmq import run_fedmq

    task = Task(clients=3, rounds=1)
    fl = run_flower(task, flower, tmp_path / "flower", timeout=120)
    fm = run_fedmq(task, key_bits=512, out_dir=str(tmp_path / "fedmq"))
    sharded = run_fedmq(task, key_bits=512, out_dir=str(tmp_path / "fedmq-w1"), workers=1)
    assert len(fl.rounds) == len(fm.rounds) == len(sharded.rounds) == 1
    # Agents in a worker process train the same and the encrypted sum is exact.
    np.testing.assert_array_equal(sharded.final_params, fm.final_params)
    # Read from /proc per process (round 1 includes their start-up): a renamed process
    # would count as nothing.
    assert sharded.rounds[0].cpu["agents"] > 0
    assert sharded.rounds[0].cpu["broker"] > 0
    # One FedAvg step from the same start on the same data: only fedmq's fixed-point
    # quantization separates the two models.
    np.testing.assert_allclose(fm.final_params, fl.final_params, atol=1e-4)
    assert fm.accuracy == pytest.approx(fl.accuracy, abs=1e-3)
    assert fl.rounds[0].wire_bytes > fl.rounds[0].payload_bytes > 0
    assert fm.rounds[0].wire_bytes > fm.rounds[0].payload_bytes > 0
    assert len(fm.rounds[0].encrypt_ms) == 3  # each agent's timing line was seen
    lines = table(task, 512, fl, [fm, sharded])
    assert any(line.startswith("round time (s)") for line in lines)
    assert any(line.startswith("final accuracy") for line in lines)


def test_the_table_has_a_column_and_a_ratio_per_fedmq_layout() -> None:
    from fedmq.benchmarks.flower import FlowerResult, FlowerRound
    from fedmq.benchmarks.flower_fedmq import FedmqResult, FedmqRound

    task = Task(clients=2, rounds=2)
    # Round 1 pays start-up: its numbers (9 s, 9 CPU-s) must not reach the table.
    fl = FlowerResult([FlowerRound(r, 9.0 if r == 1 else 0.1, 1000, 100, 9.0 if r == 1 else 0.02,
                                   0.01) for r in (1, 2)], np.zeros(3), 0.9, "1.41.0")
    cpu = {"agents": 0.04, "obfuscators": 0.0, "agents-mqtt": 0.0, "broker": 0.01,
           "aggregator": 0.02}
    fms = [FedmqResult([FedmqRound(r, 9.0 if r == 1 else seconds, 2, 4000, 400, cpu, 0.001,
                                   [5.0, 5.0], [1.0, 1.0]) for r in (1, 2)],
                       np.full(3, 1e-6), 0.9, 1.0, workers)
           for workers, seconds in ((0, 0.2), (1, 0.15))]
    lines = table(task, 2048, fl, fms)
    assert lines[1].split() == ["fedmq", "fedmq", "w=1", "Flower", "fedmq/Flower",
                                "fedmq", "w=1/Flower"]
    # round 2 only (round 1 pays start-up): 0.2 and 0.15 s against 0.1 s
    assert lines[2].split() == ["round", "time", "(s)", "0.200", "0.150", "0.100", "2.00", "1.50"]
    cpu_row = next(line for line in lines if line.startswith("CPU per client"))
    assert cpu_row.split()[-5:] == ["0.0200", "0.0200", "0.0100", "2.00", "2.00"]
    assert any(line.startswith("fedmq w=1: final parameters differ") for line in lines)
    assert any("training + evaluation sums" in line for line in lines)  # threads' breakdown
