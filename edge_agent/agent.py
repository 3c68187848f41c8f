"""The edge agent process: wait for a round, train locally, publish an encrypted update.

The MQTT callback only queues ``(topic, payload)``; training, encryption and
publishing run on the agent's own thread so keepalives never stall.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.config import AgentConfig
from edge_agent.data import DataError, DataFile, LocalData, split_holdout
from edge_agent.health import RoundSkipped, public_detail, skip_line
from edge_agent.ledger import DeviceLedger
from edge_agent.notices import explain
from edge_agent.obfuscator_pool import ObfuscatorPool, SharedFiller
from edge_agent.phases import phase_line, phase_values
from edge_agent.sample_privacy import SampleDp
from edge_agent.trainer import LocalUpdate, clip_note
from edge_agent.trust import TrustedKeys, UntrustedKey
from protocol.codec import CODEC_NAMES, Codec, make_codec
from protocol.errors import ConfigError, ProtocolError
from protocol.health import Skip
from protocol.layout import layout_for
from protocol.messages import PubKeyMessage, RoundMessage, StatusMessage
from protocol.notices import NoticeMessage
from protocol.obfuscation import ObfuscatorSource, make_obfuscators
from protocol.paillier import PaillierPublicKey, encrypt_ints, public_key_from_hex
from protocol.paillier import fingerprint as key_fingerprint
from protocol.signing import Ed25519PublicKey, Signer
from protocol.signing import public_key_from_hex as signing_key_from_hex
from protocol.wire import UpdateMessage, encode_update
from runtime import __version__
from runtime.files import load_or_create_signer, save_model
from runtime.transport import Inbox, MqttLink, NetworkLoop

log = logging.getLogger(__name__)
clip_log = logging.getLogger(f"{__name__}.clipping")


class EdgeAgent:
    def __init__(self, config: AgentConfig, *, data: LocalData | None = None,
                 signer: Signer | None = None,
                 obfuscators: Callable[[PaillierPublicKey], ObfuscatorSource] | None = None,
                 network: NetworkLoop | None = None, filler: SharedFiller | None = None
                 ) -> None:
        """``network``/``filler``: the threads a simulation shares among the agents of one
        process (fedmq.shards); a device's agent has its own."""
        self.config = config
        self._filler = filler
        # A simulation shares the public DJN table among its agents (fedmq.shards).
        self._obfuscators = obfuscators or (lambda key: make_obfuscators(config.obfuscators,
                                                                         key))
        self._trusted = TrustedKeys(config)
        self._ledger = DeviceLedger(config.state_dir, max_epsilon=config.max_epsilon)
        self._sample_dp = SampleDp(config.state_dir, max_epsilon=config.max_sample_epsilon)
        # A file is read again before a round when it changed; given rows never change.
        # Training uses train_data only; eval_data is the held-out share (all rows if none).
        self._file: DataFile | None = None
        if data is None:
            self._file = file = DataFile(
                config.data_path, config.features, config.label, delimiter=config.delimiter,
                holdout=config.holdout, seed=config.agent_id)
            self.data, self.train_data, self.eval_data = file.data, file.train, file.evaluation
        else:
            self.data = data  # all local rows
            self.train_data, self.eval_data = split_holdout(data, config.holdout,
                                                            config.agent_id)
        self._skipped: Skip | None = None  # the round this agent last sat out, and why
        self.signer = signer or load_or_create_signer(config.signing_key_path)
        self.history: dict[int, LocalUpdate] = {}  # training rounds served, by round id
        self._served: set[int] = set()  # rounds of any phase served in this run
        self.final_params: NDArray[np.float64] | None = None
        self._inbox = Inbox(maxsize=1000)
        self._stop = threading.Event()
        self._killed = False
        self._key: PaillierPublicKey | None = None
        self._announced: PubKeyMessage | None = None
        self._aggregator_key: Ed25519PublicKey | None = None
        self._codec: Codec | None = None
        self._pool: ObfuscatorPool | None = None
        self._pending_round: bytes | None = None
        self._not_selected: set[int] = set()  # rounds of the current run, like history
        self._run_id: str | None = None
        self._sent: tuple[str, int, bytes, frozenset[float]] | None = None
        self._noticed: set[str] = set()  # notice codes explained in this run
        self._forged_notice_logged = False
        # Set when the aggregator announced that the run failed (its reason).
        self.run_failed: str | None = None
        topics = config.topics
        self._status_topic = topics.status(config.agent_id)
        self._notice_topic = topics.notice(config.agent_id)
        self._link = MqttLink(
            config.mqtt, client_id=f"fedmq-agent-{config.agent_id}", on_message=self._inbox.put,
            subscriptions=[(topics.pubkey, 1), (topics.round, 1), (self._notice_topic, 1)],
            will=(self._status_topic, self._status("offline")),
            on_connect=self._announce_online, network=network,
        )

    def _status(self, state: str) -> bytes:
        return StatusMessage(agent_id=self.config.agent_id, state=state,
                             software=f"fedmq/{__version__}", codecs=CODEC_NAMES,
                             skipped=self._skipped if state == "online" else None).to_bytes()

    def _announce_online(self) -> None:
        # Runs on paho's thread after every (re)connect: queue it, never wait.
        self._link.publish(self._status_topic, self._status("online"), retain=True, wait=False)

    def stop(self) -> None:
        self._stop.set()
        self._inbox.wake()

    def kill(self) -> None:
        """Vanish like a device losing power: no DISCONNECT, so the broker fires the Last Will."""
        self._killed = True
        self._stop.set()
        self._inbox.wake()
        self._link.close(graceful=False)
        self._drop_pool()

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def run(self) -> None:
        """Serve rounds until the fleet finishes (or ``stop()``)."""
        held = self.eval_data.n_samples if self.config.holdout else 0
        log.info("agent %s: %d local samples (%d held out for evaluation), features %s; "
                 "signing key %s (enroll it on the gateway: fedmq enroll --agent %s "
                 "--public-key %s)", self.config.agent_id, self.data.n_samples, held,
                 ", ".join(self.data.features), self.signer.public_hex[:16],
                 self.config.agent_id, self.signer.public_hex)
        if not self._link.connect_retrying(self._stop):  # the gateway may boot after us
            return
        try:
            while not self._stop.is_set():
                # stop() wakes it: a long wait, so idle agents do not keep waking up
                item = self._inbox.get(timeout=2.0)
                if item is None or not item[0]:
                    continue
                if self._handle(*item) and self.config.exit_when_finished:
                    break
        finally:
            self._drop_pool()
            if not self._killed:
                self._link.publish(self._status_topic, self._status("offline"), retain=True,
                                   timeout=2)
                self._link.close()

    def _handle(self, topic: str, payload: bytes) -> bool:
        """Process one message; True once the fleet announced it is finished."""
        topics = self.config.topics
        if topic == self._notice_topic:
            self._on_notice(payload)
            return False
        try:
            if topic == topics.pubkey:
                self._accept_key(PubKeyMessage.from_bytes(payload))
                payload, self._pending_round = self._pending_round or b"", None
                if not payload:
                    return False
            elif topic != topics.round:
                return False
            if self._aggregator_key is None:
                self._pending_round = payload  # the retained key may arrive after the round
                return False
            msg = RoundMessage.from_bytes(payload, verify_with=self._aggregator_key)
        except ProtocolError as exc:
            log.warning("ignoring bad message on %s: %s", topic, exc)
            return False
        except UntrustedKey as exc:
            log.error("%s", exc)
            return False
        return self._on_round(msg)

    def _accept_key(self, msg: PubKeyMessage) -> None:
        key = public_key_from_hex(msg.n_hex)
        fp = key_fingerprint(key)
        if fp != msg.fingerprint:
            raise ProtocolError("announced fingerprint does not match the announced key")
        # Decide on both keys before remembering either: a refused announcement
        # leaves no trace, so the genuine key is accepted when it comes back.
        self._trusted.remember(self._trusted.check(fp, msg.signing_key, self._announced))
        if self._key is None or self._key.n != key.n:
            # Obfuscators belong to one key: a new key starts a new pool.
            self._drop_pool()
            self._pool = ObfuscatorPool(self._obfuscators(key),
                                        target=self.config.obfuscator_pool, filler=self._filler)
        self._key, self._announced = key, msg
        self._aggregator_key = signing_key_from_hex(msg.signing_key)
        self._codec = make_codec(msg.codec, key.n)

    def _on_round(self, msg: RoundMessage) -> bool:
        if msg.fleet != self.config.topics.fleet:
            log.warning("ignoring round for fleet %s", msg.fleet)
            return False
        if self._key is None or self._announced is None or self._codec is None:
            return False  # unreachable: rounds are parsed only once a key is trusted
        fp = self._announced.fingerprint
        if msg.key_fingerprint != fp or msg.codec_digest != self._announced.contract_digest:
            log.warning("round %d names another key or codec; ignoring it", msg.round_id)
            return False
        if msg.state == "finished":
            if msg.run_id != self._run_id:
                # A retained announcement from an earlier run (brokers with persistence
                # keep it): this agent took no part in it, so wait for the next run.
                log.info("fleet already finished (model version %d) before this agent joined; "
                         "waiting for a new run", msg.model_version)
                return False
            self._finish(msg)
            return True
        if msg.state == "failed":
            return self._failed(msg)
        if msg.run_id != self._run_id:
            if self._run_id is not None:
                log.info("a new run %s started; joining it", msg.run_id)
            self._run_id = msg.run_id
            self.history.clear()
            self._served.clear()
            self._not_selected.clear()
            self._noticed.clear()
            self.run_failed = None
        if msg.round_id in self._served:
            self._resend(msg)
            return False
        if msg.round_id in self._not_selected:
            return False  # retained copy or redelivery of a round already handled
        if not msg.selects(self.config.agent_id):
            self._not_selected.add(msg.round_id)
            log.info("round %d: not selected (%d of the fleet are); idle", msg.round_id,
                     len(msg.participants))
            return False
        try:
            self._serve(msg, self._key, self._codec)
        except RoundSkipped as exc:
            self._skip(msg, exc)
        except (ConfigError, ProtocolError) as exc:
            log.error("round %d skipped: %s", msg.round_id, exc)
        return False

    def _failed(self, msg: RoundMessage) -> bool:
        """The aggregator gave up: True (stop) if it was this agent's run."""
        if msg.run_id != self._run_id:
            log.info("an earlier run failed before this agent joined (%s); waiting for a new "
                     "run", msg.reason)
            return False
        self.run_failed = msg.reason or "no reason given"
        then = "exiting" if self.config.exit_when_finished else "waiting for a new run"
        log.error("the aggregator gave up run %s at round %d: %s; %s", msg.run_id,
                  msg.round_id, self.run_failed, then)
        return True

    def _on_notice(self, payload: bytes) -> None:
        """The aggregator says why it rejected our update: one line with the fix per code."""
        if self._aggregator_key is None:
            return  # no trusted aggregator key yet: nothing to tell a genuine notice by
        try:
            notice = NoticeMessage.from_bytes(payload, verify_with=self._aggregator_key)
        except ProtocolError as exc:
            if not self._forged_notice_logged:
                self._forged_notice_logged = True
                log.warning("ignoring a notice not signed by the trusted aggregator: %s", exc)
            return
        if (notice.fleet != self.config.topics.fleet or notice.agent_id != self.config.agent_id
                or (self._run_id is not None and notice.run_id != self._run_id)):
            return
        if notice.code in self._noticed:
            return
        self._noticed.add(notice.code)
        log.error("%s", explain(notice, self.signer.public_hex))

    def _skip(self, msg: RoundMessage, exc: RoundSkipped) -> None:
        """Sit the round out: say why in the retained status and in one log line."""
        skip = Skip.make(msg.run_id, msg.round_id, exc.code, exc.detail)
        if skip == self._skipped:
            return  # the same round announced again, failing the same way: said already
        self._skipped = skip
        self._link.publish(self._status_topic, self._status("online"), retain=True)
        log.error("%s", skip_line(msg.round_id, exc.code, str(exc)))

    def _reload(self) -> None:
        """Read the data file again if it changed (a logger appends to it)."""
        if self._file is None:
            return
        try:
            if not self._file.refresh():
                return
        except DataError as exc:
            raise RoundSkipped("data-error", str(exc),
                               public_detail(str(exc), str(self._file.path))) from exc
        self.data, self.train_data, self.eval_data = (
            self._file.data, self._file.train, self._file.evaluation)
        log.info("data file %s changed: %d rows now, %d for training", self._file.path,
                 self.data.n_samples, self.train_data.n_samples)

    def _serve(self, msg: RoundMessage, key: PaillierPublicKey, codec: Codec) -> None:
        announced = self._announced
        assert announced is not None  # rounds are parsed only once a key is trusted
        started = time.perf_counter()
        self._reload()
        privacy = announced.privacy
        charge = None
        if privacy.device is not None and msg.phase == "training":
            # Before any work: a spent ledger means this device sits the round out.
            charge = self._ledger.check(msg.fleet, msg.run_id, msg.round_id, privacy.device,
                                        msg.spec.n_params)
        dpsgd = self._sample_dp.round(msg, self.train_data.n_samples, privacy.sample) \
            if privacy.sample is not None and msg.phase == "training" else None
        done = phase_values(msg, self.train_data, self.eval_data, codec.params,
                            announced.statistics, privacy=privacy, dpsgd=dpsgd,
                            seed=self.config.seed)
        if done.update is not None and done.clipped and privacy.device is None:
            # Its own logger: the simulation sums these per round instead.
            clip_log.warning("%s", clip_note(msg.round_id, done.clipped,
                                             done.update.delta.size, codec.params.clip))
        layout = layout_for(done.phase, msg.spec, announced.codec, announced.statistics, key.n,
                            privacy)
        computed = time.perf_counter()
        plaintexts = layout.encode(done.parts)
        pool = self._pool
        assert pool is not None  # created with the key
        ciphertexts = encrypt_ints(key, plaintexts, pool.take(len(plaintexts)))
        payload = encode_update(UpdateMessage(
            fleet=msg.fleet, run_id=msg.run_id, round_id=msg.round_id,
            agent_id=self.config.agent_id, key_fingerprint=msg.key_fingerprint,
            codec_digest=msg.codec_digest, n_values=layout.n_values,
            ciphertexts=tuple(ciphertexts)), key, self.signer)
        encrypted = time.perf_counter()
        if self.config.obfuscator_pool == 0 and done.phase != "evaluation":
            # Refill while idle for what comes next: a training round.
            pool.set_target(layout_for("training", msg.spec, announced.codec,
                                       announced.statistics, key.n, privacy).plaintext_count())
        self._served.add(msg.round_id)
        if done.update is not None:
            self.history[msg.round_id] = done.update
        if self._skipped is not None:  # serving again: the status no longer names a skip
            self._skipped = None
            self._link.publish(self._status_topic, self._status("online"), retain=True)
        if self.config.straggle_seconds and self._stop.wait(self.config.straggle_seconds):
            pool.refill()
            return
        if charge is not None and privacy.device is not None:
            # Recorded before the update leaves: a crash in between over-counts, never under.
            log.info("round %d: %s", msg.round_id,
                     self._ledger.commit(charge, privacy.device.delta))
        self._sent = (msg.run_id, msg.round_id, payload, frozenset({msg.issued_at}))
        self._link.publish(self.config.topics.update(self.config.agent_id), payload)
        pool.refill()
        log.info("round %d (%s): %s; compute %.0f ms, encrypt %.1f ms (%d values in %d "
                 "ciphertexts), %d bytes", msg.round_id, done.phase, phase_line(done),
                 1000 * (computed - started), 1000 * (encrypted - computed), layout.n_values,
                 len(ciphertexts), len(payload))

    def _resend(self, msg: RoundMessage) -> None:
        """The open round was announced again (the aggregator or the broker restarted):
        send the same signed bytes again. The aggregator counts an identical payload
        once, and one it missed (lost in flight, or sent to a broker that went down)
        now arrives. Any phase: statistics, training and the final evaluation."""
        if self._sent is None or msg.phase is None:
            return
        run_id, round_id, payload, answered = self._sent
        # A new announcement has a new issue time; a broker delivering the same
        # retained message twice does not make us send twice.
        if (run_id, round_id) == (msg.run_id, msg.round_id) and msg.issued_at not in answered:
            log.info("round %d announced again; re-sending this agent's update", round_id)
            self._sent = (run_id, round_id, payload, answered | {msg.issued_at})
            self._link.publish(self.config.topics.update(self.config.agent_id), payload,
                               wait=False)

    def _finish(self, msg: RoundMessage) -> None:
        self.final_params = msg.params_array
        log.info("fleet finished at model version %d", msg.model_version)
        if self.config.state_dir is not None:
            path = Path(self.config.state_dir) / "final_model.npz"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_model(path, msg.spec, self.final_params,
                           metadata={"model_version": msg.model_version})
            except OSError as exc:
                log.error("cannot save the final model to %s: %s", path, exc)
                return
            log.info("final model saved to %s", path)
