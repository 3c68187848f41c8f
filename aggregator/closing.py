"""Closing a round: what its decrypted sums yield, recorded, published and acted on.

Split from aggregator.service (the orchestration) as a mixin: the steps after a round's
close reason is known. Order matters for restarts: the model file first, then the
checkpoint that says the round is closed, then the audit row (see aggregator.store).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.admission import Admission
from fedmq.aggregator.announcer import Herald
from fedmq.aggregator.checkpoint import Checkpoints, RunCheckpoint
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.consistency import datasheet_check
from fedmq.aggregator.culprits import Suspects
from fedmq.aggregator.health import FleetHealth, clipped_share
from fedmq.aggregator.inbound import Inbound
from fedmq.aggregator.optstate import ServerOptimizer
from fedmq.aggregator.outcome import Closing, RoundResult, close_round
from fedmq.aggregator.privacy import FleetBudget
from fedmq.aggregator.rounds import RoundState
from fedmq.aggregator.runspec import save_run_spec
from fedmq.aggregator.store import RunStore
from fedmq.aggregator.trustees import TrusteePanel
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.paillier import PaillierPrivateKey
from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer
from fedmq.protocol.errors import FedmqError
from fedmq.protocol.messages import MetricsMessage
from fedmq.protocol.sums.statistics import StatisticsRangeError, scaled_spec
from fedmq.runtime.transport import MqttLink

log = logging.getLogger("fedmq.aggregator.service")
FloatArray = NDArray[np.float64]


class RoundFailed(FedmqError):
    """A round could not reach its quorum within the allowed deadline extensions."""


class NoEvaluation(FedmqError):
    """The final evaluation round closed without enough updates for a fleet metric."""


class RoundClosing:
    """The aggregator's round-closing steps (mixed into aggregator.service.Aggregator)."""

    config: AggregatorConfig
    spec: ModelSpec
    fingerprint: str
    codec_digest: str
    signer: Signer
    store: RunStore
    checkpoints: Checkpoints
    results: list[RoundResult]
    statistics: RoundResult | None
    final_evaluation: RoundResult | None
    _private_key: PaillierPrivateKey | None
    _panel: TrusteePanel | None
    _suspects: Suspects
    _inbound: Inbound
    _admission: Admission
    _health: FleetHealth
    _herald: Herald
    _link: MqttLink
    _on_round: Callable[[RoundResult], None] | None
    _sent_at_open: int
    _model_digest: str
    _budget: FleetBudget | None
    _statistics_rows: dict[frozenset[str], int]
    _optimizer: ServerOptimizer
    _teacher: tuple[float, ...]

    def allow_list(self) -> Mapping[str, Ed25519PublicKey]:
        raise NotImplementedError  # aggregator.service.Aggregator.allow_list

    def _report(self, state: RoundState, version: int, *, closed: bool = False,
                force: bool = False) -> None:
        raise NotImplementedError  # aggregator.service.Aggregator._report

    def _checkpoint(self, run_id: str, round_id: int, version: int, status: str,
                    state: RoundState | None = None, extensions: int = 0) -> RunCheckpoint:
        cp = RunCheckpoint(run_id=run_id, fleet=self.config.topics.fleet,
                           key_fingerprint=self.fingerprint, codec_digest=self.codec_digest,
                           round_id=round_id, model_version=version, status=status,
                           quarantined=tuple(sorted(self._inbound.quarantined)),
                           model_digest=self._model_digest)
        if state is None:
            return cp
        return replace(cp, expected=tuple(sorted(state.expected)), sampled=state.sampled,
                       opened_at=state.opened_at, deadline=state.deadline, extensions=extensions)

    def _finish(self, state: RoundState, reason: str, version: int,
                params: FloatArray) -> RoundResult:
        assert state.ciphertext_sum is not None  # quorum >= 1 guarantees an update
        if dropped := self._admission.close_round():
            state.reject("dropped", dropped)
        cfg = self.config
        key = self._private_key if self._panel is None else self._panel.for_round(state)
        assert key is not None  # checked when the aggregator was made
        closing = close_round(state, key, self._suspects, spec=self.spec,
                              codec=cfg.codec, statistics=cfg.statistics, robust=cfg.robust,
                              statistics_rows=self._statistics_rows, dp=cfg.privacy.device)
        for culprit in closing.named:
            self._inbound.quarantine(culprit, self._suspects.culprits[culprit])
        if state.phase == "statistics":
            self._adopt_statistics(closing)
        if state.phase == "training" and closing.teacher:
            # Of w_r, the model this round started from; the next round announces w_{r+1}
            # with it (one round behind: the price of computing it in the same round).
            self._teacher = closing.teacher
        new_params, new_version = params, version
        epsilon = None if self._budget is None else self._budget.spent
        if closing.avg_delta is not None and state.phase == "training":
            # [server]'s optimizer (fedavg: params + avg_delta); its state is durable before
            # the model is saved, so a resumed run continues it bit for bit.
            new_params = self._optimizer.step(params, closing.avg_delta, version)
            new_version = version + 1
            if self._budget is not None:
                # Charged (and persisted) before the model is saved or published: a crash
                # in between re-runs the round and charges it again, never forgets it.
                epsilon = self._budget.charge(state.round_id, len(closing.kept))
        elif state.phase == "training" or not closing.usable:
            reason = "rejected-sum"
        evaluation = closing.evaluation
        share = clipped_share(evaluation, self.spec.n_params, len(closing.kept))
        # A relay (expected as one member) contributed when its devices were kept.
        relays = tuple(m for m, devices in state.members.items()
                       if m not in devices and set(devices) <= set(closing.kept))
        online = {a for a, up in self._inbound.online.items() if up}
        skipped = self._health.round_closed(
            state.round_id, phase=state.phase, expected=state.expected,
            kept=closing.kept + relays, evaluation=evaluation, share=share,
            skipped=state.skipped, offline=set(self.allow_list()) - online - set(state.expected))
        result = RoundResult(
            round_id=state.round_id, model_version=new_version, params=new_params,
            closed_by=reason, reported=tuple(state.accepted), expected=len(state.expected),
            rejected=state.rejected, total_weight=closing.total_weight,
            seconds=time.time() - state.opened_at,
            update_norm=float(np.linalg.norm(new_params - params)),
            excluded=closing.excluded, update_bytes=state.update_bytes,
            model_bytes=self._herald.sent_bytes - self._sent_at_open, phase=state.phase,
            evaluation=evaluation, statistics=closing.statistics, skipped=skipped,
            clipped_share=share, epsilon=epsilon,
        )
        if state.phase == "training":
            # Model first, then the checkpoint: a crash in between is recognised on
            # resume (saved version = open version + 1) and the round is not reopened.
            self.store.save_model(self.spec, new_params, round_id=state.round_id,
                                  version=new_version, record=result)
            self.checkpoints.save(self._checkpoint(state.run_id, state.round_id, new_version,
                                                   "closed"))
            self.checkpoints.clear_updates()
        self.store.record(result)
        if state.phase == "training":
            self.results.append(result)
        elif state.phase == "evaluation":
            self.final_evaluation = result
        else:
            self.statistics = result
        self._publish_metrics(state, result)
        self._report(state, version, closed=True)
        fleet = "" if evaluation is None else f"; {evaluation.summary()} (model version " \
            f"{version})"
        if epsilon is not None and self._budget is not None:
            fleet += (f"; privacy: epsilon {epsilon:.3f} of {self._budget.params.epsilon:g} "
                      f"spent (delta {self._budget.params.delta:g})")
        log.info("%s %d closed (%s): %d/%d agents, weight %.0f, %.2f s%s",
                 "round" if state.phase == "training" else f"{state.phase} round",
                 state.round_id, reason, len(state.accepted), len(state.expected),
                 closing.total_weight, result.seconds, fleet)
        if self._on_round is not None:
            self._on_round(result)
        return result

    def _adopt_statistics(self, closing: Closing) -> None:
        """The run's spec from the fleet's pooled statistics; no run without them."""
        if closing.statistics is None:
            raise RoundFailed("statistics round: the decrypted sums were rejected, so "
                              "center/scale cannot be derived")
        self._statistics_rows = closing.group_rows
        try:
            spec, warnings = scaled_spec(self.config.spec, closing.statistics,
                                         self.config.statistics)
        except StatisticsRangeError as exc:
            raise RoundFailed(f"statistics round: {exc}") from None
        if self.config.ranges is not None:
            spec, lines = datasheet_check(self.config.spec, spec, self.config.ranges)
            warnings += lines
        path = save_run_spec(self.store.run_dir, spec, closing.statistics, warnings,
                             closing.group_rows)
        self.spec = spec
        for warning in warnings:
            log.warning("statistics round: %s", warning)
        log.info("statistics round: %d rows on %d devices; center/scale of %d features%s "
                 "derived from the fleet totals (%s)", closing.statistics.n,
                 len(closing.kept), self.spec.n_features,
                 " and the label" if spec.kind == "linear" else "", path)

    def _publish_metrics(self, state: RoundState, result: RoundResult) -> None:
        # Retained: a dashboard or fedmq status that starts later still sees the last round.
        self._link.publish(self.config.topics.metrics, MetricsMessage(
            fleet=self.config.topics.fleet, round_id=result.round_id,
            model_version=result.model_version, expected=result.expected,
            reported=len(result.reported), rejected=result.rejected,
            total_weight=result.total_weight, seconds=result.seconds,
            update_norm=result.update_norm, closed_by=result.closed_by, phase=result.phase,
            evaluation=None if result.evaluation is None else result.evaluation.to_dict(),
            clipped_share=result.clipped_share, skipped=result.skipped,
            epsilon=result.epsilon,
            delta=None if self._budget is None else self._budget.params.delta,
            run_id=state.run_id, rounds=self.config.policy.rounds,
            update_bytes=result.update_bytes, model_bytes=result.model_bytes,
            rejected_by=dict(sorted(state.rejected_by.items())),
            epsilon_budget=None if self._budget is None else self._budget.params.epsilon,
            server_optimizer=self.config.server.optimizer,
        ).to_bytes(self.signer), qos=0, retain=True, wait=False)

