"""The edge agent process: wait for a round, train locally, publish an encrypted update.

The MQTT callback only queues ``(topic, payload)``; training, encryption and
publishing run on the agent's own thread so keepalives never stall.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.config import AgentConfig
from edge_agent.data import LocalData, load_csv
from edge_agent.obfuscator_pool import ObfuscatorPool
from edge_agent.trainer import LocalUpdate, train_round
from fedmq import __version__
from fedmq.transport import Inbox, MqttLink
from models import save_model
from protocol.codec import CODEC_NAMES, Codec, make_codec, quantize_update
from protocol.errors import ConfigError, FedmqError, ProtocolError
from protocol.messages import PubKeyMessage, RoundMessage, StatusMessage
from protocol.obfuscation import make_obfuscators
from protocol.paillier import PaillierPublicKey, encrypt_ints, public_key_from_hex
from protocol.paillier import fingerprint as key_fingerprint
from protocol.wire import UpdateMessage, encode_update

log = logging.getLogger(__name__)


class UntrustedKey(FedmqError):
    """The announced public key is not the one this agent pinned or first trusted."""


class EdgeAgent:
    def __init__(self, config: AgentConfig, *, data: LocalData | None = None) -> None:
        self.config = config
        self.data = data if data is not None else load_csv(
            config.data_path, config.features, config.label, delimiter=config.delimiter)
        self.history: dict[int, LocalUpdate] = {}
        self.final_params: NDArray[np.float64] | None = None
        self._inbox = Inbox(maxsize=1000)
        self._stop = threading.Event()
        self._killed = False
        self._key: PaillierPublicKey | None = None
        self._announced: PubKeyMessage | None = None
        self._codec: Codec | None = None
        self._pool: ObfuscatorPool | None = None
        self._pending_round: RoundMessage | None = None
        topics = config.topics
        self._status_topic = topics.status(config.agent_id)
        self._link = MqttLink(
            config.mqtt, client_id=f"fedmq-agent-{config.agent_id}", on_message=self._inbox.put,
            subscriptions=[(topics.pubkey, 1), (topics.round, 1)],
            will=(self._status_topic, self._status("offline")),
            on_connect=self._announce_online,
        )

    def _status(self, state: str) -> bytes:
        return StatusMessage(agent_id=self.config.agent_id, state=state,
                             software=f"fedmq/{__version__}", codecs=CODEC_NAMES).to_bytes()

    def _announce_online(self) -> None:
        # Runs on paho's thread after every (re)connect: queue it, never wait.
        self._link.publish(self._status_topic, self._status("online"), retain=True, wait=False)

    def stop(self) -> None:
        self._stop.set()

    def kill(self) -> None:
        """Vanish like a device losing power: no DISCONNECT, so the broker fires the Last Will."""
        self._killed = True
        self._stop.set()
        self._link.close(graceful=False)
        self._drop_pool()

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def run(self) -> None:
        """Serve rounds until the fleet finishes (or ``stop()``)."""
        log.info("agent %s: %d local samples, features %s", self.config.agent_id,
                 self.data.n_samples, ", ".join(self.data.features))
        self._link.connect()
        try:
            while not self._stop.is_set():
                item = self._inbox.get(timeout=0.2)
                if item is None:
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
        try:
            if topic == topics.pubkey:
                self._accept_key(PubKeyMessage.from_bytes(payload))
                msg = self._pending_round
            elif topic == topics.round:
                msg = RoundMessage.from_bytes(payload)
            else:
                return False
        except ProtocolError as exc:
            log.warning("ignoring bad message on %s: %s", topic, exc)
            return False
        except UntrustedKey as exc:
            log.error("%s", exc)
            return False
        return msg is not None and self._on_round(msg)

    def _accept_key(self, msg: PubKeyMessage) -> None:
        key = public_key_from_hex(msg.n_hex)
        fp = key_fingerprint(key)
        if fp != msg.fingerprint:
            raise ProtocolError("announced fingerprint does not match the announced key")
        trusted = self.config.key_fingerprint or self._remembered_key()
        if trusted is None:
            log.warning(
                "TRUST ON FIRST USE: no key_fingerprint pinned in the agent config; trusting "
                "aggregator key %s. Pin it under [fleet] key_fingerprint so a rogue broker "
                "cannot substitute its own key.", fp)
            self._remember_key(fp)
        elif fp != trusted:
            raise UntrustedKey(
                f"REFUSING aggregator key {fp[:16]}...: this agent trusts {trusted[:16]}... "
                "(pinned or first seen). Nothing will be sent under the new key.")
        if self._key is None or self._key.n != key.n:
            # Obfuscators belong to one key: a new key starts a new pool.
            self._drop_pool()
            self._pool = ObfuscatorPool(make_obfuscators(self.config.obfuscators, key),
                                        target=self.config.obfuscator_pool)
        self._key, self._announced = key, msg
        self._codec = make_codec(msg.codec, key.n)

    def _remembered_key(self) -> str | None:
        if self._announced is not None:
            return self._announced.fingerprint
        if self.config.state_dir is None:
            return None
        path = Path(self.config.state_dir) / "trusted_key_fingerprint"
        return path.read_text().strip() if path.exists() else None

    def _remember_key(self, fp: str) -> None:
        if self.config.state_dir is not None:
            path = Path(self.config.state_dir)
            path.mkdir(parents=True, exist_ok=True)
            (path / "trusted_key_fingerprint").write_text(fp + "\n")

    def _on_round(self, msg: RoundMessage) -> bool:
        if msg.fleet != self.config.topics.fleet:
            log.warning("ignoring round for fleet %s", msg.fleet)
            return False
        if self._key is None or self._announced is None or self._codec is None:
            self._pending_round = msg  # the retained key may arrive after the round
            return False
        self._pending_round = None
        fp = self._announced.fingerprint
        if msg.key_fingerprint != fp or msg.codec_digest != self._announced.codec.digest(fp):
            log.warning("round %d names another key or codec; waiting for its key", msg.round_id)
            self._pending_round = msg
            return False
        if msg.state == "finished":
            if not self.history:
                # A retained announcement from an earlier run (brokers with persistence
                # keep it): this agent took no part in it, so wait for the next run.
                log.info("fleet already finished (model version %d) before this agent joined; "
                         "waiting for a new run", msg.model_version)
                return False
            self._finish(msg)
            return True
        if msg.round_id in self.history:
            return False  # retained copy or redelivery of a round already served
        try:
            self._serve(msg, self._key, self._codec)
        except (ConfigError, ProtocolError) as exc:
            log.error("round %d skipped: %s", msg.round_id, exc)
        return False

    def _serve(self, msg: RoundMessage, key: PaillierPublicKey, codec: Codec) -> None:
        started = time.perf_counter()
        update = train_round(msg, self.data, max_weight=codec.params.max_weight,
                             seed=self.config.seed)
        values, n_clipped = quantize_update(update.delta, update.weight, codec.params)
        if n_clipped:
            log.warning("round %d: clipped %d of %d delta values to +-%g", msg.round_id,
                        n_clipped, update.delta.size, codec.params.clip)
        trained = time.perf_counter()
        plaintexts = codec.encode(values)
        pool = self._pool
        assert pool is not None  # created with the key
        ciphertexts = encrypt_ints(key, plaintexts, pool.take(len(plaintexts)))
        payload = encode_update(UpdateMessage(
            fleet=msg.fleet, round_id=msg.round_id, agent_id=self.config.agent_id,
            key_fingerprint=msg.key_fingerprint, codec_digest=msg.codec_digest,
            n_values=len(values), ciphertexts=tuple(ciphertexts)), key)
        encrypted = time.perf_counter()
        if self.config.obfuscator_pool == 0:
            pool.set_target(len(plaintexts))  # refill one round's worth while idle
        self.history[msg.round_id] = update
        if self.config.straggle_seconds and self._stop.wait(self.config.straggle_seconds):
            pool.refill()
            return
        self._link.publish(self.config.topics.update(self.config.agent_id), payload)
        pool.refill()
        log.info("round %d: loss %.4f -> %.4f on %d samples; train %.0f ms, encrypt %.1f ms "
                 "(%d ciphertexts), %d bytes", msg.round_id, update.loss_before,
                 update.loss_after, update.weight, 1000 * (trained - started),
                 1000 * (encrypted - trained), len(ciphertexts), len(payload))

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
