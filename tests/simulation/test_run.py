from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pytest

from fedmq.protocol.errors import ConfigError
from fedmq.simulation import synthetic
from fedmq.simulation.run import Simulation, SimulationOptions, options_from
from fedmq.simulation.table import METRICS_COLUMNS


def _metrics(run_dir):
    with (run_dir / "metrics.csv").open() as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def test_small_fleet_learns_and_writes_metrics(tmp_path):
    lines: list[str] = []
    opts = SimulationOptions(agents=4, rounds=3, key_bits=512, samples_per_device=200,
                             out_dir=str(tmp_path))
    report = Simulation(opts, progress=lines.append).run()
    # Three training rounds, then the final model's evaluation round (R + 1).
    assert [(r.round_id, r.phase) for r in report.rows] == [
        (1, "training"), (2, "training"), (3, "training"), (4, "evaluation")]
    assert all(r.reported == 4 for r in report.rows)
    assert sum(ln.startswith("round") for ln in lines) == 3
    assert sum(ln.startswith("final ") for ln in lines) == 1
    assert report.federated_score > 0.75
    assert report.federated_score == report.rows[-1].score  # the final model's test score
    assert abs(report.gap) < 0.1
    header, rows = _metrics(tmp_path / "latest")
    assert header == [c.format(metric="accuracy") for c in METRICS_COLUMNS]
    assert header[5:9] == ["test_loss", "test_accuracy", "fleet_loss", "fleet_accuracy"]
    assert [(r["round"], r["phase"]) for r in rows] == [
        ("1", "training"), ("2", "training"), ("3", "training"), ("4", "evaluation")]
    assert all(0.5 < float(r["fleet_accuracy"]) <= 1 and float(r["fleet_loss"]) > 0
               for r in rows)
    assert (tmp_path / "latest" / "metrics.png").stat().st_size > 1000
    assert len(list((tmp_path / "latest" / "data").glob("dev-*.csv"))) == 4


def test_the_fleet_metric_is_of_the_same_model_as_the_test_metric(tmp_path):
    """The aggregator's federated evaluation (decrypted totals of the devices' own rows) of
    the model each round started from, beside the pooled test metric of that model: on an
    IID fleet both estimate the same accuracy, so they agree within a few points."""
    lines: list[str] = []
    opts = SimulationOptions(agents=4, rounds=4, key_bits=512, samples_per_device=300,
                             iid=True, out_dir=str(tmp_path), plot=False)
    sim = Simulation(opts, progress=lines.append)
    report = sim.run()
    train_rows = sum(len(d.train) for d in sim.devices)
    for row in report.rows:
        assert row.fleet_rows == train_rows  # every device evaluated all its rows
        assert math.isfinite(row.fleet_score) and math.isfinite(row.fleet_loss)
        assert abs(row.fleet_score - row.score) < 0.04, row
        assert abs(row.fleet_loss - row.loss) < 0.05, row
    # Round 1 started from zeros: p = 1/2 for every row, on both sides.
    assert report.rows[0].loss == pytest.approx(math.log(2))
    assert report.rows[0].fleet_loss == pytest.approx(math.log(2), abs=1e-6)
    assert report.rows[-1].phase == "evaluation" and report.rows[-1].round_id == 5
    # The statistics round's line comes before the table; round lines show both metrics.
    stats = next(i for i, ln in enumerate(lines) if ln.startswith("statistics round: "))
    assert f"{train_rows} rows on 4 devices" in lines[stats]
    assert stats < next(i for i, ln in enumerate(lines) if ln.startswith("round   1/4"))
    final = next(ln for ln in lines if ln.startswith("final "))
    assert f"accuracy  {report.rows[-1].score:.4f}" in final
    assert f"fleet {report.rows[-1].fleet_loss:8.4f}  {report.rows[-1].fleet_score:.4f}" \
        in final


def test_federated_scaling_is_the_pooled_statistics_and_datasheet_still_works(tmp_path):
    base = {"agents": 4, "rounds": 2, "key_bits": 512, "samples_per_device": 200,
            "plot": False}
    sim = Simulation(SimulationOptions(**base, out_dir=str(tmp_path / "fed")),
                     progress=lambda _: None)
    assert sim.spec.center is None and sim.spec.scale is None  # nothing given
    sim.run()
    assert sim.aggregator is not None
    pooled = synthetic.pooled(sim.devices, "train")
    X = np.column_stack([synthetic.column(pooled, synthetic.COLUMNS, f)
                         for f in synthetic.FEATURES])
    np.testing.assert_allclose(sim.aggregator.spec.center, X.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(sim.aggregator.spec.scale, X.std(axis=0), atol=1e-6)

    lines: list[str] = []
    sheet = Simulation(SimulationOptions(**base, scaling="datasheet",
                                         out_dir=str(tmp_path / "sheet")),
                       progress=lines.append)
    report = sheet.run()
    assert sheet.aggregator is not None
    nominal = [synthetic.SENSOR_NOMINAL[f] for f in synthetic.FEATURES]
    assert sheet.aggregator.spec.center == tuple(c for c, _ in nominal)
    assert sheet.aggregator.spec.scale == tuple(s for _, s in nominal)
    assert not [ln for ln in lines if ln.startswith("statistics round")]  # nothing to derive
    assert report.federated_score > 0.75
    assert all(math.isfinite(r.fleet_score) for r in report.rows)


def test_next_temperature_trains_on_a_standardised_label_without_clipping(tmp_path):
    """Before: the label (~60 degC) was not standardised, so the first rounds' deltas
    ran into the codec's clip bound (4 agents: 10, 9, 7, 1 of 20 values clipped in rounds
    1-4) and R^2 was -1.2 after 5 rounds. The statistics round now gives the label's
    center/scale too."""
    lines: list[str] = []
    opts = SimulationOptions(agents=4, rounds=5, key_bits=512, samples_per_device=200,
                             task="next_temperature", out_dir=str(tmp_path), plot=False)
    sim = Simulation(opts, progress=lines.append)
    report = sim.run()
    assert sim.aggregator is not None and sim.aggregator.spec.target_scale is not None
    assert [r.clipped for r in report.rows] == [0] * 6
    assert not [ln for ln in lines if "clipped" in ln]
    assert report.federated_score > 0.9 and abs(report.gap) < 0.05
    stats = next(ln for ln in lines if ln.startswith("statistics round"))
    assert "center/scale of 4 features and of the label" in stats
    header, rows = _metrics(tmp_path / "latest")
    assert "test_R^2" in header and "fleet_R^2" in header
    assert abs(float(rows[-1]["fleet_R^2"]) - report.federated_score) < 0.05


def test_killed_agent_round_closes_at_deadline(tmp_path):
    opts = SimulationOptions(agents=3, rounds=2, key_bits=512, samples_per_device=200,
                             out_dir=str(tmp_path), kill=1, kill_after_round=1,
                             round_timeout=2.0, plot=False, task="next_temperature")
    sim = Simulation(opts, progress=lambda _: None)
    report = sim.run()
    assert report.rows[0].closed_by == "all"
    assert report.rows[1].reported == 2
    assert report.metric == "R^2"
    assert report.naive_score == 0.0
    _header, rows = _metrics(tmp_path / "latest")
    # The deadline-closed round is flagged; the cost columns hold what went over the wire.
    assert [(r["phase"], r["closed_by"]) for r in rows] == [
        ("training", "all"), ("training", "deadline"), ("evaluation", rows[2]["closed_by"])]
    if rows[2]["reported"] == "2":  # the survivors' last payloads: the final evaluation
        sent = [a._memory.sent for a in sim.agents[:2]]
        assert int(rows[2]["update_bytes"]) == sum(len(s.payload) for s in sent if s is not None)
        assert None not in sent
    rows = rows[:2]
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
    # (the aggregator's one warning for the fleet stays: it is what a gateway shows)
    assert not [r for r in caplog.records
                if "clipped" in r.getMessage() and r.name.startswith("edge_agent")]
    clipped = [int(r["clipped_values"]) for r in _metrics(tmp_path / "latest")[1]]
    assert clipped == [r.clipped for r in report.rows] and sum(clipped) > 0
    table = [ln for ln in lines if ln.startswith(("round", "final")) or "clipped" in ln]
    training = [r for r in report.rows if r.phase == "training"]
    for row in training:
        at = table.index(next(ln for ln in table if ln.startswith(f"round {row.round_id:3d}/")))
        if row.clipped:
            assert table[at + 1].strip().startswith(
                f"round {row.round_id}: ") and f"clipped {row.clipped} of 20 values to " \
                "\u00b110 (missing scaling" in table[at + 1], table
        else:
            assert table[at + 1].startswith(("round", "final")), table


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
    assert len(report.rows) == 61  # and the final evaluation round
    assert all(r.closed_by == "all" and r.reported == 3 for r in report.rows)


def _fingerprint(aggregator_dir):
    from fedmq.aggregator.keys import load_keypair
    from fedmq.protocol.crypto.paillier import fingerprint

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
        assert [(r["round"], r["phase"]) for r in _metrics(run_dir)[1]] == [
            ("1", "training"), ("2", "training"), ("3", "evaluation")]
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


def test_a_device_that_skips_is_shown_under_each_round(tmp_path):
    """A device whose labels the model has no class for sits out every phase; the table
    says so under the statistics line and each round's, and metrics.csv counts it."""
    lines: list[str] = []
    opts = SimulationOptions(agents=4, rounds=2, key_bits=512, samples_per_device=200,
                             out_dir=str(tmp_path), plot=False, round_timeout=3.0)
    sim = Simulation(opts, progress=lines.append)
    sim.devices[0].train[:, synthetic.COLUMNS.index("fault")] = 7  # written at run()
    report = sim.run()
    assert [(r.reported, r.expected, r.skipped) for r in report.rows] == [
        (3, 4, {"class-outside-model": 1})] * 3
    stats = next(i for i, ln in enumerate(lines) if ln.startswith("statistics round"))
    assert lines[stats + 1] == "  devices skipped: 1 class-outside-model"
    for row in report.rows:
        at = lines.index(next(ln for ln in lines if ln.startswith(
            "final" if row.final else f"round {row.round_id:3d}/")))
        assert lines[at + 1] == f"  round {row.round_id}: devices skipped: 1 class-outside-model"
    assert {r["skipped"] for r in _metrics(tmp_path / "latest")[1]} == {
        "class-outside-model=1"}


def test_spare_sensors_widen_the_model_and_the_fleet_still_learns(tmp_path):
    """--spare-sensors 3: seven features (d = 8 with the intercept) in the spec, the
    agents' CSVs and the centralized baseline; the uninformative channels do not stop
    the fleet from learning the fault label."""
    lines: list[str] = []
    opts = SimulationOptions(agents=4, rounds=3, key_bits=512, samples_per_device=200,
                             spare_sensors=3, out_dir=str(tmp_path), plot=False)
    sim = Simulation(opts, progress=lines.append)
    report = sim.run()
    spares = ("spare_00", "spare_01", "spare_02")
    assert sim.spec.features == (*synthetic.FEATURES, *spares)
    assert sim.aggregator is not None and sim.aggregator.spec.n_params == 8
    assert any("(d = 8)" in ln for ln in lines)
    header = (tmp_path / "latest" / "data" / "dev-000.csv").read_text().splitlines()[0]
    assert header.split(",") == list(synthetic.columns(3))
    assert report.final_params.shape == (8,)
    assert report.federated_score > 0.75 and abs(report.gap) < 0.1


def test_the_server_optimizer_reaches_the_simulated_gateway(tmp_path):
    lines: list[str] = []
    opts = SimulationOptions(agents=3, rounds=2, key_bits=512, samples_per_device=200,
                             out_dir=str(tmp_path), plot=False, server_optimizer="fedavgm",
                             server_lr=0.5, server_momentum=0.7)
    sim = Simulation(opts, progress=lines.append)
    sim.run()
    assert "server optimizer fedavgm (server_lr 0.5, momentum 0.7)" in lines[0]
    assert sim.aggregator is not None and sim.aggregator.config.server == opts.server
    state = (tmp_path / "latest" / "aggregator").glob("runs/*/server_opt.json")
    assert '"optimizer": "fedavgm"' in next(state).read_text()


def test_the_non_iid_options_reach_the_signed_rounds(tmp_path):
    """--prox-mu, --augment, --distill-weight travel as aggregator.toml's [training] keys."""
    opts = options_from(None, {"agents": 4, "rounds": 2, "key_bits": 512,
                               "samples_per_device": 200, "out_dir": str(tmp_path),
                               "plot": False, "workers": 0, "prox_mu": 0.01,
                               "augment": "oversample", "distill_weight": 0.5})
    sim = Simulation(opts, progress=lambda _: None)
    report = sim.run()
    assert [r.phase for r in report.rows] == ["training", "training", "evaluation"]
    training = sim.aggregator.config.training
    assert (training.prox_mu, training.augment, training.distill_weight) == \
        (0.01, "oversample", 0.5)
    assert report.federated_score > 0.6
