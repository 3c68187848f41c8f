"""The aggregator process: publish key and rounds, add encrypted updates, decrypt only sums.

Sequencing only: the maths lives in ``protocol`` (codec, Paillier) and
``aggregator.rounds``; the MQTT callback only queues ``(topic, payload)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from aggregator.config import AggregatorConfig
from aggregator.keys import load_or_create_keypair
from aggregator.rounds import Rejected, RoundState
from aggregator.store import RunStore
from fedmq.transport import Inbox, MqttLink
from protocol.codec import make_codec, mean_from_sums
from protocol.errors import CodecError, FedmqError, ProtocolError
from protocol.messages import MetricsMessage, PubKeyMessage, RoundMessage, StatusMessage
from protocol.paillier import PaillierPrivateKey, PaillierPublicKey, decrypt_ints, fingerprint
from protocol.wire import decode_update

log = logging.getLogger(__name__)
FloatArray = NDArray[np.float64]


class RoundFailed(FedmqError):
    """A round could not reach its quorum within the allowed deadline extensions."""


@dataclass(frozen=True)
class RoundResult:
    """What one closed round produced; ``announced`` is the round message published next."""

    round_id: int
    model_version: int
    params: FloatArray
    closed_by: str
    reported: tuple[str, ...]
    expected: int
    rejected: int
    total_weight: float
    seconds: float
    update_norm: float


class Aggregator:
    def __init__(
        self,
        config: AggregatorConfig,
        *,
        keypair: tuple[PaillierPublicKey, PaillierPrivateKey] | None = None,
        on_round: Callable[[RoundResult], None] | None = None,
    ) -> None:
        self.config = config
        self.public_key, self._private_key = keypair or load_or_create_keypair(
            config.key_file, config.key_bits)
        self.fingerprint = fingerprint(self.public_key)
        self.codec = make_codec(config.codec, self.public_key.n)
        self.codec_digest = config.codec.digest(self.fingerprint)
        self._on_round = on_round
        self._inbox = Inbox(maxsize=100_000)
        self._stop = threading.Event()
        self.online: dict[str, bool] = {}
        self.store = RunStore(Path(config.state_dir))
        topics = config.topics
        self._link = MqttLink(
            config.mqtt, client_id=config.client_id, on_message=self._inbox.put,
            subscriptions=[(topics.updates_filter, 1), (topics.status_filter, 1)],
        )
        self.results: list[RoundResult] = []

    def stop(self) -> None:
        self._stop.set()

    # --- orchestration -------------------------------------------------------
    def run(self) -> FloatArray:
        """Run all configured rounds; return the final global parameters."""
        cfg = self.config
        self._link.connect()
        try:
            self._publish(cfg.topics.pubkey, PubKeyMessage(
                fleet=cfg.topics.fleet, n_hex=format(self.public_key.n, "x"),
                fingerprint=self.fingerprint, codec=cfg.codec).to_bytes(), retain=True)
            log.info("public key %s published on %s", self.fingerprint[:16], cfg.topics.pubkey)
            self._wait_for_agents()
            params = np.zeros(cfg.spec.n_params)
            version = 0
            for round_id in range(1, cfg.policy.rounds + 1):
                if self._stop.is_set():
                    break
                result = self._run_round(round_id, version, params)
                params, version = result.params, result.model_version
            # _finish already saved this model after the last round.
            self._announce(cfg.policy.rounds + 1, version, params, state="finished")
            return params
        finally:
            self._link.close()

    def _wait_for_agents(self) -> None:
        policy = self.config.policy
        deadline = time.monotonic() + policy.start_timeout
        last_log = 0.0
        while len(self._online_agents()) < policy.min_agents and not self._stop.is_set():
            if time.monotonic() > deadline:
                if len(self._online_agents()) >= policy.quorum:
                    log.warning("only %d of %d agents online after %.0f s; starting with quorum",
                                len(self._online_agents()), policy.min_agents, policy.start_timeout)
                    return
                raise RoundFailed(f"only {len(self._online_agents())} agents online after "
                                  f"{policy.start_timeout:g} s, quorum is {policy.quorum}")
            if time.monotonic() - last_log > 10:
                log.info("waiting for agents: %d of %d online", len(self._online_agents()),
                         policy.min_agents)
                last_log = time.monotonic()
            self._drain(None, 0.1)

    def _online_agents(self) -> frozenset[str]:
        return frozenset(a for a, up in self.online.items() if up)

    def _run_round(self, round_id: int, version: int, params: FloatArray) -> RoundResult:
        cfg = self.config
        started = time.time()
        state = RoundState(
            fleet=cfg.topics.fleet, round_id=round_id, expected=self._online_agents(),
            deadline=started + cfg.policy.round_timeout, quorum=cfg.policy.quorum,
            n_values=cfg.spec.n_params + 1, key_fingerprint=self.fingerprint,
            codec_digest=self.codec_digest, codec=self.codec, public_key=self.public_key,
            opened_at=started,
        )
        self._announce(round_id, version, params, state="training", deadline=state.deadline)
        log.info("round %d open: expecting %d agents, quorum %d, deadline in %.0f s", round_id,
                 len(state.expected), state.quorum, cfg.policy.round_timeout)
        extensions = 0
        while (reason := state.close_reason(time.time())) is None:
            if self._stop.is_set():
                raise RoundFailed(f"stopped during round {round_id}")
            if time.time() >= state.deadline:
                extensions += 1
                if extensions > cfg.policy.max_extensions:
                    raise RoundFailed(
                        f"round {round_id}: {len(state.accepted)} updates, quorum "
                        f"{state.quorum} not reached after {extensions - 1} extensions")
                state.deadline += cfg.policy.round_timeout
                log.warning("round %d: %d of quorum %d at the deadline; extending by %.0f s",
                            round_id, len(state.accepted), state.quorum,
                            cfg.policy.round_timeout)
            self._drain(state, min(0.2, max(0.0, state.deadline - time.time())))
        if state.missing:
            log.warning("round %d closed at the deadline without %s", round_id,
                        ", ".join(sorted(state.missing)))
        return self._finish(state, reason, version, params)

    def _finish(self, state: RoundState, reason: str, version: int,
                params: FloatArray) -> RoundResult:
        assert state.ciphertext_sum is not None  # quorum >= 1 guarantees an update
        try:
            sums = self.codec.decode(decrypt_ints(self._private_key, state.ciphertext_sum),
                                     state.n_values, len(state.accepted))
            avg_delta, total_weight = mean_from_sums(sums, self.codec.params)
            new_params, new_version = params + avg_delta, version + 1
        except CodecError as exc:
            # Only a forged or broken update can do this; we cannot tell which
            # one from the sum, so the round is dropped and the model kept.
            log.error("round %d: decrypted sum rejected (%s); keeping the model", state.round_id,
                      exc)
            avg_delta, total_weight = np.zeros_like(params), 0
            new_params, new_version, reason = params, version, "rejected-sum"
        result = RoundResult(
            round_id=state.round_id, model_version=new_version, params=new_params,
            closed_by=reason, reported=tuple(state.accepted), expected=len(state.expected),
            rejected=state.rejected, total_weight=total_weight,
            seconds=time.time() - state.opened_at, update_norm=float(np.linalg.norm(avg_delta)),
        )
        self.results.append(result)
        self.store.record(result)
        self.store.save_model(self.config.spec, new_params, round_id=state.round_id,
                              version=new_version)
        self._publish(self.config.topics.metrics, MetricsMessage(
            fleet=self.config.topics.fleet, round_id=result.round_id,
            model_version=result.model_version, expected=result.expected,
            reported=len(result.reported), rejected=result.rejected,
            total_weight=result.total_weight, seconds=result.seconds,
            update_norm=result.update_norm, closed_by=result.closed_by).to_bytes(), qos=0)
        log.info("round %d closed (%s): %d/%d agents, weight %.0f, %.2f s", state.round_id,
                 reason, len(state.accepted), len(state.expected), total_weight, result.seconds)
        if self._on_round is not None:
            self._on_round(result)
        return result

    def _announce(self, round_id: int, version: int, params: FloatArray, *, state: str,
                  deadline: float | None = None) -> None:
        msg = RoundMessage(
            fleet=self.config.topics.fleet, round_id=round_id, model_version=version,
            state=state, spec=self.config.spec, params=tuple(float(p) for p in params),
            deadline=deadline if deadline is not None else time.time(),
            settings=self.config.training, key_fingerprint=self.fingerprint,
            codec_digest=self.codec_digest,
        )
        self._publish(self.config.topics.round, msg.to_bytes(), retain=True)

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
        if not self._link.publish(topic, payload, qos=qos, retain=retain):
            log.warning("publish on %s not confirmed yet; paho retries after reconnect", topic)

    # --- inbound -------------------------------------------------------------
    def _drain(self, state: RoundState | None, timeout: float) -> None:
        """Handle queued messages, waiting up to ``timeout`` seconds for the first.

        At most a batch per call, so a flood of junk cannot starve the deadline check.
        """
        item = self._inbox.get(timeout)
        for _ in range(1000):
            if item is None:
                return
            self._handle(state, *item)
            item = self._inbox.get(0)

    def _handle(self, state: RoundState | None, topic: str, payload: bytes) -> None:
        topics = self.config.topics
        if (agent := topics.agent_of(topic, "status")) is not None:
            try:
                status = StatusMessage.from_bytes(payload)
            except ProtocolError as exc:
                log.warning("ignoring bad status on %s: %s", topic, exc)
                return
            if status.agent_id == agent:
                if self.online.get(agent) != (status.state == "online"):
                    log.info("agent %s is %s", agent, status.state)
                self.online[agent] = status.state == "online"
            return
        if (agent := topics.agent_of(topic, "update")) is None:
            log.warning("ignoring message on unexpected topic %s", topic)
            return
        try:
            update = decode_update(payload, self.public_key)
        except ProtocolError as exc:
            log.warning("rejected payload on %s: %s", topic, exc)
            if state is not None:
                state.rejected += 1
            return
        if state is None:
            log.info("dropping update from %s for round %d: no round is open", agent,
                     update.round_id)
            return
        try:
            state.offer(update, agent)
        except Rejected as exc:
            log.warning("rejected update from %s: %s", agent, exc)
            return
        log.debug("accepted update from %s (%d/%d)", agent, len(state.accepted),
                  len(state.expected))
