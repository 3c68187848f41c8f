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

from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.contract import FleetContract
from fedmq.edge_agent.data import DataError, DataFile, GivenRows, LocalData
from fedmq.edge_agent.health import RoundSkipped, public_detail
from fedmq.edge_agent.ledger import DeviceLedger
from fedmq.edge_agent.memory import RunMemory
from fedmq.edge_agent.notices import NoticeReader
from fedmq.edge_agent.obfuscator_pool import ObfuscatorPool, SharedFiller
from fedmq.edge_agent.phases import phase_line, phase_values
from fedmq.edge_agent.sample_privacy import SampleDp
from fedmq.edge_agent.status import DeviceStatus
from fedmq.edge_agent.trainer import LocalUpdate, clip_note
from fedmq.edge_agent.trust import TrustedKeys, UntrustedKey
from fedmq.protocol.crypto.obfuscation import ObfuscatorSource, make_obfuscators
from fedmq.protocol.crypto.paillier import PaillierPublicKey
from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer
from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.protocol.holdings import Asks, Holdings, announcement_digest
from fedmq.protocol.messages import PubKeyMessage, RoundMessage, ServerSettings
from fedmq.runtime.files import load_or_create_signer, save_model
from fedmq.runtime.transport import Inbox, MqttLink, NetworkLoop

log = logging.getLogger(__name__)
clip_log = logging.getLogger(f"{__name__}.clipping")


class EdgeAgent:
    def __init__(self, config: AgentConfig, *, data: LocalData | None = None,
                 signer: Signer | None = None,
                 obfuscators: Callable[[PaillierPublicKey], ObfuscatorSource] | None = None,
                 network: NetworkLoop | None = None, filler: SharedFiller | None = None
                 ) -> None:
        """``network``/``filler``: the threads a simulation shares among the agents of one
        process (fedmq.simulation.shards); a device's agent has its own."""
        self.config = config
        self._filler = filler
        # A simulation shares the public DJN table among its agents (fedmq.simulation.shards).
        self._obfuscators = obfuscators or (lambda key: make_obfuscators(config.obfuscators,
                                                                         key))
        self._trusted = TrustedKeys(config)
        self._ledger = DeviceLedger(config.state_dir, max_epsilon=config.max_epsilon,
                                    max_quorum=config.max_quorum,
                                    max_alone_epsilon=config.max_alone_epsilon)
        self._sample_dp = SampleDp(config.state_dir, max_epsilon=config.max_sample_epsilon)
        # A file is read again before a round when it changed; given rows never change.
        self._rows: DataFile | GivenRows = GivenRows(
            data, holdout=config.holdout, seed=config.agent_id) if data is not None else DataFile(
            config.data_path, config.features, config.label, delimiter=config.delimiter,
            holdout=config.holdout, seed=config.agent_id)
        self.signer = signer or load_or_create_signer(config.signing_key_path)
        self._memory = RunMemory()
        self.final_params: NDArray[np.float64] | None = None
        self._inbox = Inbox(maxsize=1000)
        self._stop = threading.Event()
        self._killed = False
        self._contract: FleetContract | None = None  # once the aggregator's key is trusted
        self._pool: ObfuscatorPool | None = None
        self._pending_round: bytes | None = None
        # The signed bytes of the key and round accepted last: a non-retained copy (sent
        # again on an ask) is read exactly like a retained one, so this is all an ask names.
        self._key_payload: bytes | None = None
        self._round_payload: bytes | None = None
        self._asks = Asks()
        self._notices = NoticeReader(config.topics.fleet, config.agent_id,
                                     self.signer.public_hex, log)
        # Set when the aggregator announced that the run failed (its reason).
        self.run_failed: str | None = None
        # The server optimizer the last round named (signed): only reported, never applied.
        self.server: ServerSettings | None = None
        topics = config.topics
        self._notice_topic = topics.notice(config.agent_id)
        self._status = DeviceStatus(config.agent_id, topics.status(config.agent_id), log)
        self._link = MqttLink(
            config.mqtt, client_id=f"fedmq-agent-{config.agent_id}", on_message=self._inbox.put,
            subscriptions=[(topics.pubkey, 1), (topics.round, 1), (self._notice_topic, 1)],
            will=(self._status.topic, self._status.payload("offline")),
            on_connect=self._connected, network=network,
        )
        self._status.attach(self._link.publish)

    @property
    def data(self) -> LocalData:
        """All local rows."""
        return self._rows.data

    @property
    def train_data(self) -> LocalData:
        """The rows training uses."""
        return self._rows.train

    @property
    def eval_data(self) -> LocalData:
        """The held-out share evaluation uses (all rows when nothing is held out)."""
        return self._rows.evaluation

    @property
    def history(self) -> dict[int, LocalUpdate]:
        """Training rounds this agent served in the current run: its plaintext updates."""
        return self._memory.history

    @property
    def _aggregator_key(self) -> Ed25519PublicKey | None:
        return self._contract.aggregator_key if self._contract else None

    def _connected(self) -> None:
        """paho's thread, after every (re)connect: say "online" now, ask a little later."""
        self._asks.connected()
        self._status.online()

    def _maybe_ask(self) -> None:
        if self._asks.due():
            holds = Holdings.of(self._key_payload, self._round_payload)
            self._asks.asked(holds)
            self._status.ask(holds)

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
                item = self._inbox.get(timeout=self._asks.wait(2.0))
                if item is not None and item[0] and self._handle(*item) \
                        and self.config.exit_when_finished:
                    break
                self._maybe_ask()
        finally:
            self._drop_pool()
            if not self._killed:
                self._status.offline()
                self._link.close()

    def _handle(self, topic: str, payload: bytes) -> bool:
        """Process one message; True once the fleet announced it is finished."""
        topics = self.config.topics
        if topic == self._notice_topic:
            self._notices.read(payload, self._aggregator_key, self._memory.run_id)
            return False
        try:
            if topic == topics.pubkey:
                self._accept_key(PubKeyMessage.from_bytes(payload))
                self._key_payload = payload
                self._asks.key(announcement_digest(payload))
                payload, self._pending_round = self._pending_round or b"", None
                if not payload:
                    return False
            elif topic != topics.round:
                return False
            if self._contract is None:
                self._pending_round = payload  # the retained key may arrive after the round
                return False
            msg = RoundMessage.from_bytes(payload, verify_with=self._contract.aggregator_key)
            self._round_payload = payload
        except ProtocolError as exc:
            log.warning("ignoring bad message on %s: %s", topic, exc)
            return False
        except UntrustedKey as exc:
            log.error("%s", exc)
            return False
        return self._on_round(msg)

    def _accept_key(self, msg: PubKeyMessage) -> None:
        contract = FleetContract.accept(msg, self._trusted, self._contract)
        key = contract.key
        if self._contract is None or self._contract.key.n != key.n:
            # Obfuscators belong to one key: a new key starts a new pool.
            self._drop_pool()
            self._pool = ObfuscatorPool(self._obfuscators(key),
                                        target=self.config.obfuscator_pool, filler=self._filler)
        self._contract = contract

    def _on_round(self, msg: RoundMessage) -> bool:
        if msg.fleet != self.config.topics.fleet:
            log.warning("ignoring round for fleet %s", msg.fleet)
            return False
        contract = self._contract
        if contract is None:
            return False  # unreachable: rounds are parsed only once a key is trusted
        if not contract.names(msg):
            log.warning("round %d names another key or codec; ignoring it", msg.round_id)
            return False
        if msg.state == "finished":
            if msg.run_id != self._memory.run_id:
                # A retained announcement from an earlier run (brokers with persistence
                # keep it): this agent took no part in it, so wait for the next run.
                log.info("fleet already finished (model version %d) before this agent joined; "
                         "waiting for a new run", msg.model_version)
                return False
            self._finish(msg)
            return True
        if msg.state == "failed":
            return self._failed(msg)
        memory, joined = self._memory, self._memory.run_id
        if msg.server != self.server or memory.run_id != msg.run_id:
            # Signed into the round: what the gateway does with the fleet's average update.
            log.info("run %s: the gateway steps the model with server optimizer %s",
                     msg.run_id, msg.server.describe())
        self.server = msg.server
        if memory.join(msg.run_id):
            if joined is not None:
                log.info("a new run %s started; joining it", msg.run_id)
            self._notices.new_run()
            self.run_failed = None
        if msg.round_id in memory.served:
            self._resend(msg)
            return False
        if msg.round_id in memory.not_selected:
            return False  # retained copy or redelivery of a round already handled
        if not msg.selects(self.config.agent_id):
            memory.not_selected.add(msg.round_id)
            log.info("round %d: not selected (%d of the fleet are); idle", msg.round_id,
                     len(msg.participants))
            return False
        try:
            self._serve(msg, contract)
        except RoundSkipped as exc:
            self._status.sat_out(msg, exc)
        except (ConfigError, ProtocolError) as exc:
            log.error("round %d skipped: %s", msg.round_id, exc)
        return False

    def _failed(self, msg: RoundMessage) -> bool:
        """The aggregator gave up: True (stop) if it was this agent's run."""
        if msg.run_id != self._memory.run_id:
            log.info("an earlier run failed before this agent joined (%s); waiting for a new "
                     "run", msg.reason)
            return False
        self.run_failed = msg.reason or "no reason given"
        then = "exiting" if self.config.exit_when_finished else "waiting for a new run"
        log.error("the aggregator gave up run %s at round %d: %s; %s", msg.run_id,
                  msg.round_id, self.run_failed, then)
        return True

    def _reload(self) -> None:
        """Read the data file again if it changed (a logger appends to it)."""
        try:
            if not self._rows.refresh():
                return
        except DataError as exc:
            raise RoundSkipped("data-error", str(exc),
                               public_detail(str(exc), str(self._rows.path))) from exc
        log.info("data file %s changed: %d rows now, %d for training", self._rows.path,
                 self.data.n_samples, self.train_data.n_samples)

    def _serve(self, msg: RoundMessage, contract: FleetContract) -> None:
        announced, codec = contract.announced, contract.codec
        started = time.perf_counter()
        privacy = announced.privacy
        if privacy.device is not None:
            # Terms outside this device's limits get nothing, in any phase.
            self._ledger.admit(privacy.device)
        self._reload()
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
        computed = time.perf_counter()
        pool = self._pool
        assert pool is not None  # created with the key
        sealed = contract.seal(msg, done.phase, done.parts, pool, self.signer,
                               self.config.agent_id)
        encrypted = time.perf_counter()
        if self.config.obfuscator_pool == 0 and done.phase != "evaluation":
            # Refill while idle for what comes next: a training round.
            pool.set_target(contract.layout(
                "training", msg.spec, distill=msg.settings.distills).plaintext_count())
        payload = sealed.payload
        self._memory.answered(msg, done.update)
        self._status.serving()
        if self.config.straggle_seconds and self._stop.wait(self.config.straggle_seconds):
            pool.refill()
            return
        if charge is not None and privacy.device is not None:
            # Recorded before the update leaves: a crash in between over-counts, never under.
            log.info("round %d: %s", msg.round_id,
                     self._ledger.commit(charge, privacy.device.delta))
        self._memory.sending(msg, payload)
        self._link.publish(self.config.topics.update(self.config.agent_id), payload)
        pool.refill()
        log.info("round %d (%s): %s; compute %.0f ms, encrypt %.1f ms (%d values in %d "
                 "ciphertexts), %d bytes", msg.round_id, done.phase, phase_line(done),
                 1000 * (computed - started), 1000 * (encrypted - computed), sealed.n_values,
                 sealed.n_ciphertexts, len(payload))

    def _resend(self, msg: RoundMessage) -> None:
        """The open round was announced again (the aggregator or the broker restarted):
        send the same signed bytes again. The aggregator counts an identical payload
        once, and one it missed (lost in flight, or sent to a broker that went down)
        now arrives."""
        if (payload := self._memory.resend(msg)) is not None:
            log.info("round %d announced again; re-sending this agent's update", msg.round_id)
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
