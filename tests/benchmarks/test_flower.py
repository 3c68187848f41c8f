"""bench-flower: Flower and fedmq get the same fleet, split, model and start; a tiny run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks.flower import _env, flower_python, run_flower, table
from benchmarks.flower_task import SCALING, TASK, Task, write_fleet
from fedmq.simulate import Simulation, SimulationOptions

FLOWER = flower_python()
needs_flower = pytest.mark.skipif(
    FLOWER is None, reason="no Python with flwr (make .venv-flower/.installed)")


def _fedmq_side(task: Task, out: Path) -> Simulation:
    return Simulation(SimulationOptions(
        agents=task.clients, rounds=task.rounds, task=TASK, scaling=SCALING, seed=task.seed,
        samples_per_device=task.samples_per_device, out_dir=str(out), plot=False))


@needs_flower
def test_flower_and_fedmq_get_the_same_split_model_and_start(tmp_path: Path) -> None:
    task = Task(clients=4, rounds=1, samples_per_device=200, seed=3)
    sim = _fedmq_side(task, tmp_path / "fedmq")
    fedmq_files = sim._write_data()  # the CSVs fedmq's agents load
    flower_files = write_fleet(task, tmp_path / "flower")
    assert [p.read_bytes() for p in flower_files] == [p.read_bytes() for p in fedmq_files]
    assert sim.spec == task.spec
    assert (sim.options.epochs, sim.options.batch_size, sim.options.learning_rate) == (
        task.epochs, task.batch_size, task.learning_rate)
    assert FLOWER is not None
    got = json.loads(subprocess.run(
        [FLOWER, "-m", "benchmarks.flower_side", "describe", task.to_json(),
         *map(str, flower_files)], capture_output=True, text=True, check=True,
        env=_env()).stdout)
    assert got["samples"] == [len(d.train) for d in sim.devices]  # the FedAvg weights
    assert got["n_params"] == sim.spec.n_params
    zeros = np.zeros(sim.spec.n_params)  # where a new fedmq run starts (aggregator.runs)
    np.testing.assert_array_equal(got["initial_params"], zeros)
    for params in got["client_params"]:
        np.testing.assert_array_equal(params, zeros)


@pytest.mark.slow
@needs_flower
def test_a_tiny_run_of_both_sides_learns_the_same_model(tmp_path: Path) -> None:
    from benchmarks.flower_fedmq import run_fedmq

    task = Task(clients=3, rounds=1)
    assert FLOWER is not None
    fl = run_flower(task, FLOWER, tmp_path / "flower", timeout=120)
    fm = run_fedmq(task, key_bits=512, out_dir=str(tmp_path / "fedmq"))
    assert len(fl.rounds) == len(fm.rounds) == 1
    # One FedAvg step from the same start on the same data: only fedmq's fixed-point
    # quantization separates the two models.
    np.testing.assert_allclose(fm.final_params, fl.final_params, atol=1e-4)
    assert fm.accuracy == pytest.approx(fl.accuracy, abs=1e-3)
    assert fl.rounds[0].wire_bytes > fl.rounds[0].payload_bytes > 0
    assert fm.rounds[0].wire_bytes > fm.rounds[0].payload_bytes > 0
    assert len(fm.rounds[0].encrypt_ms) == 3  # each agent's timing line was seen
    lines = table(task, 512, fl, fm)
    assert any(line.startswith("round time (s)") for line in lines)
    assert any(line.startswith("final accuracy") for line in lines)
