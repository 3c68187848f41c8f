from __future__ import annotations

import csv
import logging

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
    with (tmp_path / "latest" / "metrics.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3
    assert (tmp_path / "latest" / "metrics.png").stat().st_size > 1000
    assert len(list((tmp_path / "latest" / "data").glob("dev-*.csv"))) == 4


def test_killed_agent_round_closes_at_deadline(tmp_path):
    opts = SimulationOptions(agents=3, rounds=2, key_bits=512, samples_per_device=100,
                             out_dir=str(tmp_path), kill=1, kill_after_round=1,
                             round_timeout=2.0, plot=False, task="next_temperature")
    sim = Simulation(opts, progress=lambda _: None)
    report = sim.run()
    assert report.rows[0].closed_by == "all"
    assert report.rows[1].reported == 2
    assert report.metric == "R^2"
    assert report.naive_score == 0.0
    with (tmp_path / "latest" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # The deadline-closed round is flagged; the cost columns hold what went over the wire.
    assert [r["closed_by"] for r in rows] == ["all", "deadline"]
    last_payloads = sum(len(a._sent[2]) for a in sim.agents[:2])  # the survivors' round 2
    assert int(rows[1]["update_bytes"]) == last_payloads
    assert int(rows[0]["update_bytes"]) > int(rows[1]["update_bytes"])  # 3 agents vs 2
    assert all(int(r["model_bytes"]) > 8 * 16 for r in rows)  # 16 parameters as JSON+
    for r in rows:
        assert {"seconds", "update_bytes", "model_bytes", "clipped_values"} <= r.keys()


def test_clipping_is_summarised_after_the_round_line_not_interleaved(tmp_path, caplog):
    """Each agent warned about clipped values on its own; with 20 agents in one process
    those lines interleaved with the progress table."""
    caplog.set_level(logging.WARNING)
    lines: list[str] = []
    opts = SimulationOptions(agents=4, rounds=2, key_bits=512, samples_per_device=200,
                             out_dir=str(tmp_path), learning_rate=20.0, plot=False)
    report = Simulation(opts, progress=lines.append).run()
    assert not [r for r in caplog.records if "clipped" in r.getMessage()]
    with (tmp_path / "latest" / "metrics.csv").open() as fh:
        clipped = [int(r["clipped_values"]) for r in csv.DictReader(fh)]
    assert clipped == [r.clipped for r in report.rows] and sum(clipped) > 0
    table = [ln for ln in lines if ln.startswith("round") or "clipped" in ln]
    for i, row in enumerate(report.rows):
        at = table.index(next(ln for ln in table if ln.startswith(f"round {row.round_id:3d}/")))
        if row.clipped:
            assert table[at + 1].strip().startswith(
                f"round {row.round_id}: ") and f"clipped {row.clipped} of 20 values to " \
                "\u00b110 (missing scaling" in table[at + 1], table
        else:
            assert i + 1 == len(report.rows) or table[at + 1].startswith("round"), table


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


def _fingerprint(aggregator_dir):
    from aggregator.keys import load_keypair
    from protocol.paillier import fingerprint

    return fingerprint(load_keypair(aggregator_dir / "paillier.key")[0])


README_VARIATIONS = [[], ["--task", "fault_type"], ["--task", "next_temperature"], ["--iid"],
                     ["--kill", "1"]]


@pytest.mark.slow
def test_the_readme_demo_variations_run_back_to_back(tmp_path, capsys, monkeypatch):
    """After one `make demo`, `--task fault_type` failed: runs/latest/aggregator/
    global_model.npz holds another model than the config (issue 9). Each run now has
    its own directory and its own fresh key."""
    from fedmq.cli import main

    monkeypatch.chdir(tmp_path)  # make demo's default --out: runs/ of the checkout
    out = tmp_path / "runs"
    run_dirs = []
    for extra in README_VARIATIONS:
        code = main(["simulate", "--agents", "4", "--rounds", "2", "--key-bits", "512",
                     "--samples", "200", "--round-timeout", "3", "--no-plot", *extra])
        printed = capsys.readouterr()
        assert code == 0, (extra, printed.err)
        assert "metrics: runs/latest/metrics.csv" in printed.out  # what the README shows
        run_dirs.append((out / "latest").resolve())
    assert len(set(run_dirs)) == len(run_dirs) and {d.parent for d in run_dirs} == {out}
    for run_dir in run_dirs:
        with (run_dir / "metrics.csv").open() as fh:
            assert [r["round"] for r in csv.DictReader(fh)] == ["1", "2"]
        with (run_dir / "aggregator" / "latest" / "rounds.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        # One run id: the directory's name, the aggregator's run and every audit row.
        assert {r["run_id"] for r in rows} == {run_dir.name}
        assert (run_dir / "aggregator" / "latest").resolve().name == run_dir.name
    assert not (out / "latest").readlink().is_absolute()
    assert sorted(p for p in out.iterdir() if p.name != "latest") == sorted(run_dirs)
    fingerprints = {_fingerprint(d / "aggregator") for d in run_dirs}
    assert len(fingerprints) == len(run_dirs)  # a fresh key every invocation


def test_reuse_key_takes_the_key_of_the_latest_run(tmp_path):
    opts = SimulationOptions(agents=4, rounds=1, key_bits=512, samples_per_device=200,
                             out_dir=str(tmp_path), plot=False)
    first = Simulation(opts, progress=lambda _: None).run()
    lines: list[str] = []
    again = SimulationOptions(**{**opts.__dict__, "reuse_key": True})
    second = Simulation(again, progress=lines.append).run()
    assert first.out_dir != second.out_dir and (tmp_path / "latest").resolve() == second.out_dir
    assert _fingerprint(first.out_dir / "aggregator") == _fingerprint(
        second.out_dir / "aggregator")
    assert any("reusing the aggregator key of " + first.run_id in ln for ln in lines)
    assert (second.out_dir / "aggregator" / "paillier.key").stat().st_mode & 0o077 == 0


def test_a_runs_latest_directory_from_before_run_dirs_is_kept_as_a_run(tmp_path):
    old = tmp_path / "latest"
    (old / "aggregator").mkdir(parents=True)
    (old / "metrics.csv").write_text("round\n1\n")
    opts = SimulationOptions(agents=4, rounds=1, key_bits=512, samples_per_device=200,
                             out_dir=str(tmp_path), plot=False)
    report = Simulation(opts, progress=lambda _: None).run()
    kept = [p for p in tmp_path.iterdir() if p.name.endswith("-old")]
    assert len(kept) == 1 and (kept[0] / "metrics.csv").read_text() == "round\n1\n"
    assert (tmp_path / "latest").is_symlink()
    assert (tmp_path / "latest").resolve() == report.out_dir
