"""A whole fleet on one machine: embedded broker, aggregator and N agents, real MQTT.

Each agent gets its own synthetic sensor data set written to its own CSV file
and loads it the way a device would. By default nobody gives center/scale: the
aggregator's statistics round derives them from the devices' encrypted sums.
Every round shows the aggregator's federated evaluation (decrypted fleet totals
of the devices' own rows) beside the same model's metric on the pooled held-out
test rows (possible only in simulation); the final model is compared with a
centralized scikit-learn model trained on the pooled training rows: the number
federated learning has to come close to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.config import AggregatorConfig, RoundPolicy
from fedmq.aggregator.outcome import RoundResult
from fedmq.aggregator.service import Aggregator
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.trainer import clip_note
from fedmq.models import make_model
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.signing import Ed25519PublicKey
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.messages import TrainingSettings
from fedmq.protocol.sums.statistics import StatsParams, scaled_spec
from fedmq.protocol.topics import Topics
from fedmq.runtime.files import load_or_create_signer
from fedmq.runtime.quiet import quieted
from fedmq.runtime.transport import MqttSettings
from fedmq.simulation import plot, synthetic
from fedmq.simulation.broker import BrokerChoice, RunEnd, fleet_broker
from fedmq.simulation.dashboard import live_dashboard
from fedmq.simulation.options import SimulationOptions, options_from
from fedmq.simulation.privacy import simulation_privacy
from fedmq.simulation.rundirs import start_run
from fedmq.simulation.shards import Clips, Fleet, ShardedFleet, ThreadFleet, peak_rss_bytes
from fedmq.simulation.table import (
    METRICS_COLUMNS,
    RoundRow,
    fleet_metrics,
    row_line,
    skipped_line,
    statistics_lines,
    table_header,
    write_metrics,
)
from fedmq.simulation.tasks import TASKS, central_baseline, model_spec, xy
from fedmq.simulation.trustees import SimulatedTrustees, deal_trustees, running, write_configs

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SimulationReport:
    rows: tuple[RoundRow, ...]
    metric: str
    federated_score: float
    central_score: float
    final_params: NDArray[np.float64]
    out_dir: Path  # this run's own directory, out_dir/<run_id>
    naive_score: float = float("nan")  # majority-class accuracy, or R^2 = 0
    run_id: str = ""
    latest: Path | None = None  # out_dir/latest, pointing at out_dir/<run_id> when it ended

    @property
    def gap(self) -> float:
        return self.central_score - self.federated_score


class Simulation:
    def __init__(self, options: SimulationOptions, *,
                 progress: Callable[[str], None] = print) -> None:
        self.options = options
        self.progress = progress
        self.out_dir = Path(options.out_dir)  # until run() makes this run's directory
        self.run_id = ""
        self.latest: Path | None = None
        self.spec = model_spec(options.task, options.scaling or "federated",  # as configured
                               options.spare_sensors)
        self.aggregator: Aggregator | None = None
        self._started_from: NDArray[np.float64] | None = None  # the open round's model
        # Device-level DP: epsilon after the last round, and before it (None without DP).
        self._epsilon: float | None = None
        self._epsilon_before: float | None = None
        self.devices = synthetic.generate_fleet(synthetic.FleetSpec(
            n_devices=options.agents, samples_per_device=options.samples_per_device,
            iid=options.iid, seed=options.seed, spare_sensors=options.spare_sensors))
        self.test_rows = synthetic.pooled(self.devices, "test")
        label, kind, _ = TASKS[options.task]
        # the label column of each device, not every pooled column (~300 MB at d = 100)
        seen = np.unique(np.concatenate([synthetic.column(d.train, d.columns, label)
                                         for d in self.devices]))
        if kind == "logistic" and seen.size < 2:
            # Fault episodes are long and rare: a tiny fleet may never see one.
            raise ConfigError(
                f"the simulated fleet has only class {seen.tolist()} of {label!r} in its data; "
                "use more --samples, more --agents or another --seed")
        self.rows: list[RoundRow] = []
        self.agents: list[EdgeAgent] = []  # with --workers 0 only: in other processes else
        self.fleet: Fleet | None = None
        self.end: RunEnd | None = None  # peak memory and broker complaints, once run
        self._enrolled: dict[str, Ed25519PublicKey] = {}  # fedmq enroll, for the aggregator
        self.trustees: SimulatedTrustees | None = None

    def _write_data(self) -> list[Path]:
        data_dir = self.out_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for dev in self.devices:
            path = data_dir / f"{dev.device_id}.csv"
            synthetic.write_csv(path, dev.columns, dev.train)
            paths.append(path)
        return paths

    @property
    def metric(self) -> str:
        return "accuracy" if self.spec.kind == "logistic" else "R^2"

    def _evaluate(self, params: NDArray[np.float64]) -> tuple[float, float]:
        """Test loss and score of ``params`` under the run's spec (the statistics round's
        center/scale: the parameters mean nothing without them)."""
        assert self.aggregator is not None
        label = TASKS[self.options.task][0]
        X, y = xy(self.test_rows, label, self.options.spare_sensors)
        model = make_model(self.aggregator.spec).set_params_vector(params)
        return float(model.loss(X, y)), float(model.score(X, y))

    def _on_round(self, result: RoundResult) -> None:
        if result.phase == "statistics":
            self._on_statistics(result)
            return
        # Training: the fleet evaluated the model the round started from, so the test
        # metric is of that model too; the final evaluation is of the final model.
        final = result.phase == "evaluation"
        if final or self._started_from is None:
            started = result.params if final else np.zeros(result.params.shape)
        else:
            started = self._started_from
        loss, score = self._evaluate(started)
        self._started_from = result.params
        assert self.fleet is not None
        clips = Clips() if final else self.fleet.clipped(result.round_id, result.reported)
        fleet_loss, fleet_score, fleet_rows = fleet_metrics(result.evaluation)
        # The row is about the model the round started from: the epsilon its release cost.
        epsilon = self._epsilon if final else self._epsilon_before
        self._epsilon_before = self._epsilon = result.epsilon
        row = RoundRow(result.round_id, len(result.reported), result.expected,
                       result.closed_by, loss, score, result.seconds,
                       update_bytes=result.update_bytes, model_bytes=result.model_bytes,
                       clipped=clips.clipped, phase=result.phase,
                       fleet_loss=fleet_loss, fleet_score=fleet_score, fleet_rows=fleet_rows,
                       skipped=dict(result.skipped), epsilon=epsilon)
        if not self.rows:
            self.progress(table_header(self.options.rounds, self.metric))
        self.rows.append(row)
        self.progress(row_line(row, self.options.rounds, self.metric))
        # The agents' own clipping warnings are held during a simulation (they would
        # interleave with this table); the fleet's total follows the round's line.
        dp = self.aggregator.config.privacy.device if self.aggregator else None
        if clips.clipped and dp is not None:  # one per update: clipped to its L2 norm
            self.progress(f"  round {row.round_id}: {clips.clipped} of {row.reported} updates "
                          f"clipped to L2 norm {dp.clip:g} (device-level DP)")
        elif clips.clipped:
            self.progress("  " + clip_note(row.round_id, clips.clipped, clips.values,
                                           CodecParams().clip, agents=clips.agents))
        if (skips := skipped_line(row)) is not None:
            self.progress(f"  {skips}")
        opts = self.options
        if opts.kill and not final and result.round_id == opts.kill_after_round:
            # Cut the network of the last agents without a goodbye, as a power loss
            # would; the next round expects them and must close at its deadline.
            victims = [d.device_id for d in self.devices[-opts.kill:]]
            for agent_id in victims:
                self.progress(f"killing agent {agent_id} (no DISCONNECT)")
            self.fleet.kill(victims)

    def _final_row(self, aggregator: Aggregator, final: NDArray[np.float64]) -> None:
        """The final model's test row when no final evaluation round ran (under DP the
        fleet does not evaluate it: its exact totals are outside the budget)."""
        last = aggregator.results[-1]
        loss, score = self._evaluate(final)
        row = RoundRow(last.round_id + 1, 0, 0, "all", loss, score, 0.0, phase="evaluation",
                       epsilon=last.epsilon)
        self.rows.append(row)
        self.progress(row_line(row, self.options.rounds, self.metric))

    def _on_statistics(self, result: RoundResult) -> None:
        warnings: list[str] = []
        if result.statistics is not None:
            assert self.aggregator is not None
            _spec, warnings = scaled_spec(self.spec, result.statistics,
                                          self.aggregator.config.statistics)
        label = self.spec.kind == "linear" and self.spec.target_center is None
        derived = ("the label's center/scale" if self.spec.center is not None
                   else f"center/scale of {self.spec.n_features} features"
                   + (" and of the label" if label else ""))
        for line in statistics_lines(result.statistics, len(result.reported), derived,
                                     warnings, result.skipped):
            self.progress(line)

    def run(self) -> SimulationReport:
        opts = self.options
        run, note = start_run(Path(opts.out_dir), reuse_key=opts.reuse_key)
        self.out_dir, self.run_id, self.latest = run.run_dir, run.run_id, run.latest
        if note is not None:
            self.progress(note)
        paths = self._write_data()
        topics = Topics(fleet="sim")
        label = TASKS[opts.task][0]
        ids = [dev.device_id for dev in self.devices]
        sharded = opts.workers > 0
        trustees = None
        if opts.trustees:
            self.progress(f"dealing the {opts.key_bits}-bit key {opts.effective_threshold}-of-"
                          f"{opts.trustees} to trustees (this process is the dealer) ...")
            trustees, shares = deal_trustees(self.out_dir, trustees=opts.trustees,
                                             threshold=opts.effective_threshold,
                                             bits=opts.key_bits)
            del shares  # in the bundles now; this process keeps no share
            self.trustees = trustees
        with fleet_broker(BrokerChoice.parse(opts.broker), topics=topics, agent_ids=ids,
                          out_dir=self.out_dir, own_process=sharded,
                          trustee_users=trustees.ids if trustees else ()) as broker, \
                contextlib.ExitStack() as stack:
            self.progress(f"fleet: {opts.agents} agents ({'IID' if opts.iid else 'non-IID'}), "
                          f"task {opts.task!r} (d = {self.spec.n_params}), {opts.rounds} "
                          f"rounds, {opts.key_bits}-bit Paillier, {opts.scaling} scaling, "
                          f"server optimizer {opts.server.describe()}, {broker.where}, "
                          + (f"agents in {opts.workers} worker processes" if sharded
                             else "agents on threads of this process"))
            aggregator = self._aggregator(run, topics, broker.aggregator, trustees)
            if opts.dashboard is not None:
                stack.enter_context(live_dashboard(topics, aggregator.signer.public_hex,
                                                   broker.dashboard(), opts.dashboard,
                                                   self.progress))
            configs = [AgentConfig(
                agent_id=dev.device_id, topics=topics, data_path=str(path),
                features=self.spec.features, label=label, mqtt=broker.agent(dev.device_id),
                key_fingerprint=aggregator.fingerprint,
                aggregator_signing_key=aggregator.signer.public_hex,
                state_dir=str(self.out_dir / "agents" / dev.device_id), seed=opts.seed)
                for dev, path in zip(self.devices, paths, strict=True)]
            for cfg in configs:  # fedmq enroll: the agent loads this key from its state_dir
                self._enrolled[cfg.agent_id] = load_or_create_signer(
                    cfg.signing_key_path).public_key
            if trustees is not None:
                write_configs(trustees, topics=topics, aggregator_key=aggregator.signer.public_hex,
                              enrolled=self._enrolled,
                              mqtt={t: broker.trustee(t) for t in trustees.ids})
                stack.enter_context(running(trustees, verbose=log.isEnabledFor(logging.DEBUG)))
                self.progress(f"trustees: {', '.join(trustees.ids)} (own processes, logs in "
                              f"{self.out_dir / 'trustees'}); every decryption needs "
                              f"{opts.effective_threshold} of them; key dealt in "
                              f"{trustees.seconds_to_deal:.1f} s")
            if sharded:
                self.fleet = ShardedFleet(configs, workers=opts.workers, spread=opts.spread,
                                          seed=opts.seed,
                                          log_level=logging.getLogger().getEffectiveLevel())
            else:
                self.agents = [EdgeAgent(cfg) for cfg in configs]
                self.fleet = ThreadFleet(self.agents, spread=opts.spread, seed=opts.seed)
            self.fleet.start()
            try:
                with quieted("fedmq.edge_agent.agent.clipping"):  # summarised per round instead
                    final = aggregator.run()
            finally:
                fleet_end = self.fleet.stop()
            if aggregator.final_evaluation is None and aggregator.results:
                self._final_row(aggregator, final)
        self.end = RunEnd(main_rss=peak_rss_bytes(), broker=broker.end,
                          worker_rss=fleet_end.worker_rss)
        self.progress(self.end.line())
        (self.out_dir / "resources.json").write_text(json.dumps(self.end.to_dict()) + "\n")
        central = central_baseline(opts.task, synthetic.pooled(self.devices, "train"),
                                   self.test_rows, opts.spare_sensors)
        report = SimulationReport(
            rows=tuple(self.rows), metric=self.metric,
            federated_score=self._evaluate(final)[1],  # the final model's test score
            central_score=central, final_params=final, out_dir=self.out_dir,
            naive_score=plot.naive_score(
                self.metric, xy(self.test_rows, label, opts.spare_sensors)[1]),
            run_id=run.run_id, latest=run.latest)
        self._write_metrics(report)
        return report

    def _aggregator(self, run: Any, topics: Topics, mqtt: MqttSettings,
                    trustees: SimulatedTrustees | None = None) -> Aggregator:
        opts = self.options
        fleet = max(CodecParams().max_agents, opts.agents)
        privacy = simulation_privacy(opts, self.spec, opts.quorum, CodecParams(max_agents=fleet))
        if privacy.device is not None:
            self._epsilon_before = 0.0  # the first row's model (zeros) cost nothing
        if privacy.enabled:
            self.progress(f"privacy: {privacy.describe()}"
                          + ("; the statistics round and fleet metrics are exact and outside "
                             "the budget" if privacy.exact_aggregates else ""))
        config = AggregatorConfig(
            topics=topics, spec=self.spec, mqtt=mqtt,
            key_file=str(self.out_dir / "aggregator" / "paillier.key"), key_bits=opts.key_bits,
            policy=RoundPolicy(rounds=opts.rounds, round_timeout=opts.round_timeout,
                               quorum=opts.quorum, min_agents=opts.agents,
                               start_timeout=120 + 2 * opts.spread),
            training=TrainingSettings(epochs=opts.epochs, batch_size=opts.batch_size,
                                      learning_rate=opts.learning_rate, l2=opts.l2,
                                      prox_mu=opts.prox_mu, augment=opts.augment,
                                      jitter=opts.jitter, distill_weight=opts.distill_weight,
                                      distill_temperature=opts.distill_temperature),
            server=opts.server,
            # a round of the whole fleet must fit (the default is 1,000 devices)
            codec=CodecParams(max_agents=fleet), statistics=StatsParams(max_agents=fleet),
            state_dir=str(self.out_dir / "aggregator"),
            signing_key_file=str(self.out_dir / "aggregator" / "signing.key"),
            resume=False,  # every simulation is a new run on new data
            privacy=privacy,
            trustees_file=None if trustees is None else str(trustees.path),
        )  # keys: fresh in the new run directory, or copied there by start_run (--reuse-key)
        if trustees is not None:  # the aggregator's own signing key, before it starts
            load_or_create_signer(config.signing_key_file)
        t0 = time.perf_counter()
        self.aggregator = Aggregator(config, on_round=self._on_round,
                                     allow_list=self._enrolled,  # filled before agents start
                                     run_id=run.run_id)  # one id: directory and protocol
        self.progress(f"run {run.run_id} in {run.run_dir}; aggregator key ready in "
                      f"{time.perf_counter() - t0:.1f} s (fingerprint "
                      f"{self.aggregator.fingerprint[:16]}...)")
        return self.aggregator

    def _write_metrics(self, report: SimulationReport) -> None:
        write_metrics(self.out_dir / "metrics.csv", report.rows, report.metric)
        if self.options.plot:
            try:
                plot.render(self.plot_input(report), self.out_dir / "metrics.png")
            except ImportError:
                log.warning("matplotlib not installed: skipping the plot")

    def plot_input(self, report: SimulationReport) -> plot.PlotInput:
        opts = self.options
        return plot.PlotInput(
            task=opts.task, metric=report.metric, agents=opts.agents, iid=opts.iid,
            key_bits=opts.key_bits, codec=CodecParams().name,
            central_score=report.central_score, naive_score=report.naive_score,
            rounds=tuple(plot.PlotRound(r.round_id, r.score, r.loss, r.closed_by, r.seconds,
                                        r.update_bytes, r.model_bytes, fleet_score=r.fleet_score,
                                        fleet_loss=r.fleet_loss, final=r.final,
                                        epsilon=r.epsilon)
                         for r in report.rows))


__all__ = ["METRICS_COLUMNS", "TASKS", "RoundRow", "Simulation", "SimulationOptions",
           "SimulationReport", "central_baseline", "model_spec", "options_from"]

