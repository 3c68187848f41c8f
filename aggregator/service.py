"""The aggregator process: publish key and rounds, add encrypted updates, decrypt only sums.

Sequencing only: the maths lives in ``protocol`` (codec, Paillier) and
``aggregator.rounds``; the MQTT callback only queues ``(topic, payload)``.
Every step that matters is checkpointed (``aggregator.checkpoint``), so a
restarted aggregator resumes the open round with the updates it had accepted.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.admission import Admission
from fedmq.aggregator.allowlist import AllowListFile
from fedmq.aggregator.announcer import Announcer, Herald
from fedmq.aggregator.attendance import Attendance
from fedmq.aggregator.between_runs import BetweenRuns
from fedmq.aggregator.checkpoint import Checkpoints, RunCheckpoint, StartPoint
from fedmq.aggregator.closing import NoEvaluation, RoundClosing, RoundFailed
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.culprits import Suspects
from fedmq.aggregator.health import FleetHealth
from fedmq.aggregator.inbound import Inbound
from fedmq.aggregator.keys import load_aggregator_keys
from fedmq.aggregator.notices import Notifier
from fedmq.aggregator.optstate import ServerOptimizer
from fedmq.aggregator.outcome import RoundResult
from fedmq.aggregator.privacy import BudgetSpent, FleetBudget
from fedmq.aggregator.progress import ProgressReporter, TappedLink
from fedmq.aggregator.resume import carry_over, restore_updates
from fedmq.aggregator.rounds import RoundState
from fedmq.aggregator.runs import RunDirs, open_run, spec_digest
from fedmq.aggregator.runspec import load_group_rows
from fedmq.aggregator.schedule import ScheduleFile
from fedmq.aggregator.store import RunStore
from fedmq.aggregator.trustees import TrusteePanel, TrusteeSet
from fedmq.aggregator.verifier import CHUNK
from fedmq.aggregator.warm import keep_warm_start, warm_params
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import make_codec
from fedmq.protocol.crypto.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    ciphertext_size,
    fingerprint,
)
from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.layout import PHASES, UpdateLayout, contract_digest, layout_for
from fedmq.runtime.transport import Inbox, MqttLink

log = logging.getLogger(__name__)
# Messages taken off the inbox at once when a backlog waits: 32 chunks of the signature
# worker (aggregator.verifier), so its pipeline fills and the stops between are rare.
BURST = 32 * CHUNK
__all__ = ["Aggregator", "NoEvaluation", "RoundFailed"]
FloatArray = NDArray[np.float64]


class Aggregator(RoundClosing, BetweenRuns):
    def __init__(
        self,
        config: AggregatorConfig,
        *,
        keypair: tuple[PaillierPublicKey, PaillierPrivateKey | None] | None = None,
        signer: Signer | None = None,
        allow_list: Mapping[str, Ed25519PublicKey] | None = None,
        on_round: Callable[[RoundResult], None] | None = None,
        run_id: str | None = None,
        relays: Mapping[str, Ed25519PublicKey] | None = None,
        tap: Callable[[str, bytes], object] | None = None,
    ) -> None:
        """``run_id``: the id a new run takes (fedmq simulate names its directory so);
        by default a fresh one, see aggregator.runs. ``tap`` sees every message the
        aggregator publishes (its own metrics endpoint folds them, fedmq.gateway_cli)."""
        self.config = config
        self._new_run_id = run_id
        if keypair is None or signer is None:  # never replaces a lost key silently
            keypair, signer = load_aggregator_keys(config)
        (self.public_key, self._private_key), self.signer = keypair, signer
        self.fingerprint = fingerprint(self.public_key)
        self.codec = make_codec(config.codec, self.public_key.n)
        self.codec_digest = contract_digest(config.codec, config.statistics,
                                            self.fingerprint, config.privacy)
        # Enrolled devices and relays (fedmq relay); by default the allow-list file's.
        self.enrolled = AllowListFile(config.allow_list_file, agents=allow_list, relays=relays)
        self._on_round = on_round
        limits = config.limits
        self._inbox = Inbox(maxsize=limits.inbox_messages, max_bytes=limits.inbox_bytes)
        # Taken off the inbox as part of a backlog, not handled yet (the drain stopped).
        self._carry: deque[tuple[str, bytes]] = deque()
        # The layout follows from the settings every round signs (config.training), so the
        # agents and relays derive the same one from the round they receive.
        self._layouts = {phase: layout_for(phase, config.spec, config.codec, config.statistics,
                                           self.public_key.n, config.privacy,
                                           personal=config.training.personalized,
                                           distill=config.training.distills)
                         for phase in PHASES}
        device_dp = config.privacy.device
        self._budget = None if device_dp is None else FleetBudget(device_dp,
                                                                  config.spec.n_params)
        self._admission = Admission(config.topics, limits=limits, update_body=max(
            self._body(layout) for layout in self._layouts.values()))
        # The spec this run trains: [model], completed by the statistics round.
        self.spec: ModelSpec = config.spec
        self._health = FleetHealth(config.health, server=config.server,
                                   learning_rate=config.training.learning_rate,
                                   kind=config.spec.kind)
        # [server]'s optimizer, stepped on each training round's average update.
        self._optimizer = ServerOptimizer(config.server, config.spec.n_params)
        self._stop = threading.Event()
        # Both point at the run `latest` names until the start picks the run (_start_point).
        self.runs = RunDirs(Path(config.state_dir))
        # [schedule]: None runs one run and returns; else runs go on (aggregator.schedule).
        self._schedule = config.schedule if config.schedule.enabled else None
        self._schedule_file = ScheduleFile(self.runs.state_dir)
        self.store = RunStore(self.runs.latest_link)
        self.checkpoints = Checkpoints(self.runs.latest_link)
        self._model_digest = spec_digest(config.spec)
        self._notifier = Notifier(config.topics, self.signer, self._send_notice)
        self._inbound = Inbound(config.topics, self.public_key, self.checkpoints,
                                self._notifier, on_skip=self._health.skipped,
                                on_ask=lambda holds: self._herald.asked(holds), limits=limits)
        self._suspects = Suspects()
        self._statistics_rows: dict[frozenset[str], int] = {}  # the statistics round's groups
        # Distilling fleets: the teacher the last training round's sums gave (not
        # checkpointed: after a restart the first round trains without one).
        self._teacher: tuple[float, ...] = ()
        self._admit = self._admission.filter(self._inbox.put)
        # Who is sampled must not be predictable (the culprit search's halves are: the
        # same failing set is split the same way, see aggregator.culprits).
        self._rng = secrets.SystemRandom()
        self._attendance = Attendance(config.policy, self._inbound.online, self.allow_list,
                                      rng=self._rng, relays=self.relays)
        topics = config.topics
        self._announcer = Announcer((topics.pubkey, topics.round),
                                    own_key=self.signer.public_key)
        # A clean session: a persistent one is what lets Mosquitto 2.0.11 deafen
        # us for good after one unauthenticated CONNECT with our user name as
        # client id (see aggregator.announcer). Whatever agents sent while we
        # were away comes back as their re-send of the re-announced round.
        subscriptions = [(topics.updates_filter, 1), (topics.status_filter, 1),
                         (topics.pubkey, 1), (topics.round, 1)]
        # Trustees hold the key (aggregator.trustees): every decryption is theirs.
        self._panel: TrusteePanel | None = None
        if config.trustees_file:
            self._panel = TrusteePanel(
                TrusteeSet.load(config.trustees_file), topics,
                lambda topic, payload: self._link.publish(topic, payload, qos=1, wait=False),
                timeout=config.policy.round_timeout, attempts=config.policy.max_extensions)
            subscriptions.append((topics.trustee_replies_filter, 1))
            public = self._panel.set.public
            log.info("Paillier key %s is split among %d trustees (%d needed to decrypt); this "
                     "aggregator holds no private key", self.fingerprint[:16], public.trustees,
                     public.threshold)
        elif self._private_key is None:
            raise ConfigError("the aggregator has neither a private key nor [keys] "
                              "trustees_file")
        self._link = (MqttLink if tap is None else partial(TappedLink, tap=tap))(
            config.mqtt, client_id=config.client_id, on_message=self._on_message,
            subscriptions=subscriptions, on_connect=self._announcer.connected,
            clean_session=True,
        )
        self._herald = Herald(config, self._link, self.signer, self._announcer,
                              n_hex=format(self.public_key.n, "x"), fingerprint=self.fingerprint,
                              codec_digest=self.codec_digest)
        self.results: list[RoundResult] = []  # the training rounds
        self.statistics: RoundResult | None = None  # the statistics round, if one ran
        self.final_evaluation: RoundResult | None = None  # the final model's evaluation
        self._sent_at_open = 0  # the herald's byte count when the open round was announced
        self._progress = ProgressReporter(
            topics, self.signer,
            lambda topic, payload: self._link.publish(topic, payload, qos=1, retain=True,
                                                      wait=False),
            rounds=config.policy.rounds)
        # How run() ended when it returned: "finished" (every round), "budget" (the privacy
        # budget ended it early), "stopped" (stop() before the broker answered) or, with
        # [schedule], "between runs" (stop() while waiting for the next run).
        self.ended = "finished"

    def _body(self, layout: UpdateLayout) -> int:
        return layout.plaintext_count() * ciphertext_size(self.public_key)

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def online(self) -> dict[str, bool]:
        """Agent id -> online, from their retained status and Last Will."""
        return self._inbound.online

    def stop(self) -> None:
        self._stop.set()

    def allow_list(self) -> Mapping[str, Ed25519PublicKey]:
        """Re-read every round (aggregator.allowlist.AllowListFile)."""
        return self.enrolled.agents()

    def relays(self) -> Mapping[str, Ed25519PublicKey]:
        return self.enrolled.relays()

    # --- orchestration -------------------------------------------------------
    def run(self) -> FloatArray:
        """Run (or resume) all configured rounds; return the final global parameters.

        With ``[schedule]`` (aggregator.schedule) it then stays up and starts the next
        run whenever it is due, until ``stop()``: a restart between runs waits for the
        same due time, and a run that failed is resumed at the next one.
        """
        cfg = self.config
        last = self._ended_run() if self._schedule is not None else None
        restarted = last is not None
        start = None if last is not None else self._start_point()
        if not self._link.connect_retrying(self._stop):  # stopped before the broker came up
            self.ended = "stopped"
            return start.params if start is not None else np.zeros(cfg.spec.n_params)
        params = np.zeros(cfg.spec.n_params)
        try:
            self._herald.key(cfg.codec)
            while True:
                if start is None:
                    assert last is not None
                    if restarted:  # this process did not announce the run's end
                        params, restarted = self._announce_ended(last, params), False
                    if not self._wait_for_next(last):
                        self.ended = "between runs"
                        return params
                    start = self._start_point()
                started = self._run_began(start.run_id)
                try:
                    params = self._one_run(start)
                except RoundFailed as exc:
                    if self._schedule is None or self._stop.is_set():
                        raise
                    log.error("run %s failed: %s; it is resumed when the next run is due",
                              start.run_id, exc)
                    params = start.params
                if self._schedule is None or self._stop.is_set():
                    return params
                last, start = self._run_ended(start.run_id, started), None
        finally:
            self._inbound.close()  # the signature worker, if a backlog started one
            self.checkpoints.close()
            self._link.close()

    def _one_run(self, start: StartPoint) -> FloatArray:
        cfg = self.config
        run_id, resume = start.run_id, start.open_round
        params, version, round_id = start.params, start.version, start.round_id
        try:
            if resume is None:
                # Also after a restart at a round boundary: the agents' retained statuses
                # arrive only now, and a round opened before them would expect nobody.
                self._attendance.wait(self._stop, partial(self._drain, None))
                if self._stop.is_set():  # open no round a stopped aggregator never saves
                    raise RoundFailed(f"stopped before round {round_id}")
            if start.spec is not None:
                self.spec = start.spec
                self._statistics_rows = load_group_rows(self.store.run_dir)
            elif cfg.needs_statistics and round_id == 1 and resume is None:
                self._run_round(run_id, 0, 0, params, phase="statistics")
            if version == 0 and self._schedule is not None and self._schedule.warm_start:
                warm = warm_params(self.store.run_dir, self.spec)
                params = params if warm is None else warm
            while round_id <= cfg.policy.rounds and not self._stop.is_set():
                if self._budget is not None:
                    try:
                        self._budget.check_next(round_id)
                    except BudgetSpent as exc:
                        log.warning("%s", exc)
                        self.ended = "budget"
                        break
                # Only the first round of a restarted run can be a resumed one.
                result = self._run_round(run_id, round_id, version, params, resume=resume)
                params, version, round_id = result.params, result.model_version, round_id + 1
                resume = None
            if self._stop.is_set():  # between two rounds: the run is not finished
                raise RoundFailed(f"stopped before round {round_id}")
            if cfg.policy.final_evaluation and cfg.privacy.evaluates:
                try:
                    self._run_round(run_id, round_id, version, params, phase="evaluation")
                except NoEvaluation as exc:
                    self._admission.close_round()
                    log.warning("%s", exc)
        except RoundFailed as exc:
            if not self._stop.is_set():  # given up, not stopped: agents need not wait
                self._herald.round(run_id, max(round_id, 1), version, params,
                                   state="failed", spec=self.spec, reason=str(exc),
                                   **self._next_run_terms(run_id))
            raise
        self._herald.round(run_id, cfg.policy.rounds + 1, version, params, state="finished",
                           spec=self.spec, **self._next_run_terms(run_id))
        self.checkpoints.save(self._checkpoint(run_id, cfg.policy.rounds, version,
                                               "finished"))
        self._health.run_finished(never_online=self._attendance.never_online())
        return params

    def _start_point(self) -> StartPoint:
        cfg = self.config
        self.runs.check_writable()
        # A broken allow-list (or its relays) stops the start, not the first round.
        self.allow_list()
        self.relays()
        self.enrolled.relay_devices()
        prior = self.runs.latest()
        start, saved = open_run(self.runs, self.checkpoints, self.store, self.config,
                                identity=(cfg.topics.fleet, self.fingerprint, self.codec_digest),
                                model_digest=self._model_digest, new_id=self._new_run_id)
        self._new_run_id = None  # the name given is the first run's; later ones are fresh
        # Each run starts clean: its own spec, results and statistics groups.
        self.spec, self._statistics_rows, self.ended = cfg.spec, {}, "finished"
        self.results, self.statistics, self.final_evaluation = [], None, None
        fresh = start.round_id == 1 and start.open_round is None and saved is None
        if (fresh and prior is not None and self._schedule is not None
                and self._schedule.warm_start and prior != self.store.run_dir
                and keep_warm_start(prior, self.store.run_dir)):
            log.info("run %s starts from run %s's final model", start.run_id, prior.name)
        if cfg.privacy.enabled:
            log.info("privacy: %s", cfg.privacy.describe())
        # Before carry_over says where the run starts: a state that cannot continue stops
        # the start first, with one line.
        self._optimizer.resume(self.store.run_dir, start.version)
        carry_over(start, saved, store=self.store, checkpoints=self.checkpoints,
                   inbound=self._inbound, budget=self._budget,
                   optimizer=cfg.server.describe())
        return start

    def _open(self, run_id: str, round_id: int, version: int,
              resume: RunCheckpoint | None, phase: str) -> RoundState:
        """A new round, or round ``resume.round_id`` reopened with its accepted updates."""
        cfg, now = self.config, time.time()
        training = phase == "training"
        if resume is not None:
            # Give agents (and the broker's queued messages) time to come back.
            expected, sampled = frozenset(resume.expected), resume.sampled
            opened_at, deadline = resume.opened_at, max(resume.deadline, now + min(
                10.0, cfg.policy.round_timeout))
        else:
            (expected, sampled), opened_at = self._attendance.select(phase), now
            deadline = now + cfg.policy.round_timeout
            # Every round: the updates table holds one round's members (aggregator.commit).
            self.checkpoints.clear_updates()
        state = RoundState(
            fleet=cfg.topics.fleet, run_id=run_id, round_id=round_id, expected=expected,
            deadline=deadline, quorum=self._attendance.quorum(phase), layout=self._layouts[phase],
            key_fingerprint=self.fingerprint, codec_digest=self.codec_digest,
            max_agents=cfg.codec.max_agents, public_key=self.public_key,
            allow_list=self.allow_list(), opened_at=opened_at, sampled=sampled,
            relays=self.relays(), relay_devices=self.enrolled.relay_devices(),
        )
        if resume is not None:
            restore_updates(state, self.checkpoints, self.public_key)
        if training:  # only training rounds are resumed: the others are simply run again
            self._save_open(state, version)
        return state

    def _save_open(self, state: RoundState, version: int, extensions: int = 0) -> None:
        self.checkpoints.save(self._checkpoint(state.run_id, state.round_id, version, "open",
                                               state, extensions))

    def _run_round(self, run_id: str, round_id: int, version: int, params: FloatArray, *,
                   resume: RunCheckpoint | None = None, phase: str = "training") -> RoundResult:
        cfg = self.config
        state = self._open(run_id, round_id, version, resume, phase)
        extensions = resume.extensions if resume is not None else 0
        participants = tuple(sorted(state.expected)) if state.sampled else ()
        self._sent_at_open = self._herald.sent_bytes
        announce = partial(self._herald.round, run_id, round_id, version, params, state=phase,
                           spec=self.spec, participants=participants,
                           teacher=self._teacher if phase == "training" else ())
        announce(deadline=state.deadline)
        self._report(state, version, force=True)
        what = {"training": "round", "statistics": "statistics round",
                "evaluation": "final evaluation round"}[phase]
        log.info("%s %d open: expecting %d agents, quorum %d, deadline in %.0f s%s", what,
                 round_id, len(state.expected), state.quorum, state.deadline - time.time(),
                 f", server optimizer {cfg.server.optimizer}" if phase == "training" else "")
        while (reason := self._close_reason(state)) is None:
            if self._stop.is_set():
                self._inbound.flush(state)  # durable, for the resumed round
                raise RoundFailed(f"stopped during round {round_id}")
            if time.time() >= state.deadline:
                if phase == "evaluation":  # nothing to wait for: the model is final
                    raise NoEvaluation(f"final evaluation round {round_id}: "
                                       f"{len(state.accepted)} of {state.quorum} updates needed "
                                       "at the deadline; the final model has no fleet metric")
                extensions += 1
                if extensions > cfg.policy.max_extensions:
                    raise RoundFailed(
                        f"round {round_id}: {len(state.accepted)} updates, quorum "
                        f"{state.quorum} not reached after {extensions - 1} extensions")
                state.deadline += cfg.policy.round_timeout
                if phase == "training":
                    self._save_open(state, version, extensions)
                log.warning("round %d: %d of quorum %d at the deadline; extending by %.0f s",
                            round_id, len(state.accepted), state.quorum,
                            cfg.policy.round_timeout)
                # Announced again with the new deadline: agents whose update was lost on
                # the way (a full broker queue, a drop) send it again.
                announce(deadline=state.deadline)
            self._drain(state, min(0.2, max(0.0, state.deadline - time.time())))
            self._report(state, version)
            if taken := self._notifier.newly_enrolled(state, self.allow_list):
                log.info("round %d: %s enrolled now; announcing the round again for their "
                         "updates", round_id, ", ".join(taken))
                announce(deadline=state.deadline)
        self._inbound.flush(state)  # nothing held is left behind by a closed round
        if state.missing:
            log.warning("round %d closed at the deadline without %s", round_id,
                        ", ".join(sorted(state.missing)))
        return self._finish(state, reason, version, params)

    def _close_reason(self, state: RoundState) -> str | None:
        """state.close_reason, with no update held at the deadline: the round must
        not close (nor extend) while a batch waits for its commit."""
        if self._inbound.batch and (time.time() >= state.deadline
                                    or state.waits_only_for_held):
            self._inbound.flush(state)
        return state.close_reason(time.time())

    def _report(self, state: RoundState, version: int, *, closed: bool = False,
                force: bool = False) -> None:
        """The round's progress for dashboards (aggregator.progress), throttled."""
        enrolled = self.allow_list()
        online = sum(1 for a, up in self._inbound.online.items() if up and a in enrolled)
        self._progress.report(state, version=version, enrolled=len(enrolled), online=online,
                              closed=closed, force=force or closed)

    def _send_notice(self, topic: str, payload: bytes) -> None:
        # From the round loop: queued for paho, never waited for (a notice is advice).
        self._link.publish(topic, payload, qos=1, wait=False)

    def _on_message(self, topic: str, payload: bytes) -> None:
        # paho's thread: our own retained topics go to the announcer, the rest
        # through admission to the inbox; both only store, the aggregator's thread acts.
        if self._panel is not None and self._panel.deliver(topic, payload):
            return
        if not self._announcer.observe(topic, payload):
            self._admit(topic, payload)

    # --- inbound -------------------------------------------------------------
    def _next(self, timeout: float) -> tuple[str, bytes] | None:
        return self._carry.popleft() if self._carry else self._inbox.get(timeout)

    def _drain(self, state: RoundState | None, timeout: float) -> None:
        """Handle queued messages, waiting up to ``timeout`` seconds for the first.

        Then for at most ``limits.drain_seconds`` and never past the open round's
        deadline: however much is queued, the round loop looks at its clock again
        soon, so a round closes within its deadline plus one drain.
        """
        self._herald.republish()
        if state is not None:
            self._admission.open_round(state.round_id, self._body(state.layout))
        left = self._inbound.batch.time_left()
        wait = timeout if left is None else min(timeout, left)
        item = self._next(wait)
        budget = self.config.limits.drain_seconds
        if state is not None:
            budget = min(budget, max(0.0, state.deadline - time.time()))
        stop_at = time.monotonic() + budget

        def stop() -> bool:
            return time.monotonic() >= stop_at or (state is not None and not state.missing
                                                   and state.close_reason(time.time()) is not None)
        while item is not None:
            # A backlog is handled as one: its signatures verified by a second process
            # (Inbound.handle_many); what it did not get to waits here for the next drain.
            items = [item]
            while len(items) < BURST and (more := self._next(0)) is not None:
                items.append(more)
            left_over = self._inbound.handle_many(state, items, stop)
            if left_over:
                self._carry.extendleft(reversed(left_over))
                break
            if stop():
                break
            item = self._next(0)
        if self._inbound.due():
            self._inbound.flush(state)
        if state is not None and (dropped := self._admission.take_dropped()):
            state.reject("dropped", dropped)
