from __future__ import annotations

import csv

import pytest

from fedmq.simulate import Simulation, SimulationOptions, options_from
from protocol.errors import ConfigError


def test_small_fleet_learns_and_writes_metrics(tmp_path):
    lines: list[str] = []
    opts = SimulationOptions(agents=4, rounds=3, key_bits=512, samples_per_device=200,
                             out_dir=str(tmp_path))
    report = Simulation(opts, progress=lines.append).run()
    assert [r.round_id for r in report.rows] == [1, 2, 3]
    assert all(r.reported == 4 for r in report.rows)
    assert sum(ln.startswith("round") for ln in lines) == 3
    assert report.federated_score > 0.75
    assert abs(report.gap) < 0.1
    with (tmp_path / "metrics.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3
    assert (tmp_path / "metrics.png").stat().st_size > 1000
    assert len(list((tmp_path / "data").glob("dev-*.csv"))) == 4


def test_killed_agent_round_closes_at_deadline(tmp_path):
    opts = SimulationOptions(agents=3, rounds=2, key_bits=512, samples_per_device=100,
                             out_dir=str(tmp_path), kill=1, kill_after_round=1,
                             round_timeout=2.0, plot=False, task="next_temperature")
    report = Simulation(opts, progress=lambda _: None).run()
    assert report.rows[0].closed_by == "all"
    assert report.rows[1].reported == 2
    assert report.metric == "R^2"


def test_fleet_without_faults_is_a_clear_error(tmp_path):
    opts = SimulationOptions(agents=3, rounds=1, samples_per_device=100, out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="only class"):
        Simulation(opts)


def test_options_from_config_and_overrides(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("[simulate]\nagents = 7\nrounds = 3\nout_dir = 'out'\n")
    opts = options_from(str(cfg), {"rounds": 5})
    assert (opts.agents, opts.rounds) == (7, 5)
    assert opts.out_dir == str(tmp_path / "out")
    cfg.write_text("[simulate]\nagentz = 7\n")
    with pytest.raises(ConfigError, match="agentz"):
        options_from(str(cfg), {})


@pytest.mark.slow
def test_a_long_run_of_fast_rounds_never_stalls(tmp_path):
    """60 rounds of ~0.1 s: a per-second update limit in the aggregator's admission
    dropped honest updates from round ~37 on and the run failed (issue 8 review)."""
    opts = SimulationOptions(agents=3, rounds=60, key_bits=512, samples_per_device=300,
                             out_dir=str(tmp_path), round_timeout=3.0, plot=False)
    report = Simulation(opts, progress=lambda _: None).run()
    assert len(report.rows) == 60
    assert all(r.closed_by == "all" and r.reported == 3 for r in report.rows)
