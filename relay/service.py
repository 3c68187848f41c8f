"""The relay process: an intermediate gateway that holds NO Paillier private key.

Upstream (one MQTT connection to the top aggregator's broker) it reads the retained
pubkey and round, checks the aggregator's signature against the pinned key, and
re-publishes them byte for byte (retained) to its own devices' broker, so devices
verify the very signature the aggregator made. Downstream it checks every device's
signed update exactly as the aggregator would (``aggregator.rounds.RoundState``
with this relay's allow-list: fleet, run, round, key and contract digest, size,
every ciphertext in Z*_{n^2}), and the device's attestation (protocol.attestation), then
multiplies the ciphertexts. When all its online enrolled devices reported, or
``margin_seconds`` before the round's deadline, it sends ONE partial sum (protocol.partial)
signed with its own Ed25519 key on its update topic upstream, naming every contributing
device with its attestation, which the top aggregator checks with the device's key.

On a clustered broker whose nodes keep retained messages apart (RabbitMQ), the relay asks
upstream with its status for the key and round it lacks, and answers its devices' asks
with non-retained copies (protocol.holdings, aggregator.resend), as the aggregator does.

Not done here (documented limits): notices to devices (a device rejected by the relay
learns it only from the relay's log), forwarding device skips upstream, persisting an
open round across a relay restart, and sampled rounds (participants name devices the
top aggregator cannot see behind a relay).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from fedmq.aggregator.admission import Admission
from fedmq.aggregator.allowlist import AllowListFile
from fedmq.aggregator.config import Limits
from fedmq.aggregator.resend import Resends
from fedmq.aggregator.rounds import Redelivered, Rejected, RoundState
from fedmq.protocol.attestation import Attestation
from fedmq.protocol.crypto.paillier import (
    PaillierPublicKey,
    ciphertext_size,
    fingerprint,
    public_key_from_hex,
)
from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer
from fedmq.protocol.crypto.signing import public_key_from_hex as signing_key_from_hex
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.holdings import Asks, Holdings, announcement_digest
from fedmq.protocol.layout import PHASES, layout_for
from fedmq.protocol.messages import PubKeyMessage, RoundMessage, StatusMessage
from fedmq.protocol.partial import PartialSum, encode_partial
from fedmq.protocol.wire import UpdateMessage, decode_update
from fedmq.relay.config import RelayConfig
from fedmq.runtime import __version__
from fedmq.runtime.files import load_or_create_signer
from fedmq.runtime.transport import Inbox, MqttLink

log = logging.getLogger(__name__)
_LIMITS = Limits()


class Relay:
    def __init__(self, config: RelayConfig, *, signer: Signer | None = None,
                 allow_list: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self.config = config
        self.signer = signer or load_or_create_signer(config.signing_key_file)
        self._aggregator_key = signing_key_from_hex(config.aggregator_signing_key)
        self.enrolled = AllowListFile(config.allow_list_file, agents=allow_list)  # its devices
        self._stop = threading.Event()
        self._up_inbox = Inbox(maxsize=1000, max_bytes=_LIMITS.inbox_bytes)
        self._local_inbox = Inbox(maxsize=_LIMITS.inbox_messages, max_bytes=_LIMITS.inbox_bytes)
        self._admission: Admission | None = None  # per round: sizes follow the round's layout
        self.online: dict[str, bool] = {}  # device -> online, from the local statuses
        self._pubkey: PubKeyMessage | None = None
        self._public_key: PaillierPublicKey | None = None
        self._pending_round: bytes | None = None
        # The aggregator's signed bytes, as forwarded: what an ask upstream names, and what
        # a device that asks here gets again.
        self._key_payload: bytes | None = None
        self._round_payload: bytes | None = None
        self._asks = Asks()
        self.resends = Resends(_LIMITS.resend_seconds)
        self._bad_status: set[str] = set()  # devices whose malformed status was said once
        self.state: RoundState | None = None
        self._participants: frozenset[str] = frozenset()
        self._sent: bytes | None = None  # the open round's partial sum, once forwarded
        self._attested: dict[str, Attestation] = {}  # the open round's accepted devices'
        self._said_online = False
        self.forwarded: list[PartialSum] = []  # every partial sum sent (tests, operators)
        up, local = config.upstream_topics, config.local_topics
        self._status_topic = up.status(config.relay_id)
        self._up = MqttLink(
            config.upstream, client_id=config.client_id, on_message=self._up_inbox.put,
            subscriptions=[(up.pubkey, 1), (up.round, 1), (up.metrics, 0)],
            will=(self._status_topic, self._status("offline")),
            on_connect=self._announce_online, clean_session=True)
        self._local = MqttLink(
            config.local, client_id=f"{config.client_id}-local", on_message=self._admit_local,
            subscriptions=[(local.updates_filter, 1), (local.status_filter, 1)],
            clean_session=True)

    def _status(self, state: str, holds: Holdings | None = None) -> bytes:
        return StatusMessage(agent_id=self.config.relay_id, state=state,
                             software=f"fedmq-relay/{__version__}", holds=holds).to_bytes()

    def _announce_online(self) -> None:
        if self._said_online:  # paho's thread, after a reconnect: queue, never wait
            self._asks.connected()
            self._up.publish(self._status_topic, self._status("online"), retain=True, wait=False)

    def _ask_and_answer(self) -> None:
        """Ask upstream for what this relay lacks; send its devices what they asked for."""
        if self._said_online and self._asks.due():
            holds = Holdings.of(self._key_payload, self._round_payload)
            self._asks.asked(holds)
            self._up.publish(self._status_topic, self._status("online", holds), retain=True,
                             wait=False)
        key, round_, _asks = self.resends.due()
        local = self.config.local_topics
        for topic, payload in ((local.pubkey, self._key_payload if key else None),
                               (local.round, self._round_payload if round_ else None)):
            if payload is not None:
                self._local.publish(topic, payload, wait=False)

    def stop(self) -> None:
        self._stop.set()

    def allow_list(self) -> Mapping[str, Ed25519PublicKey]:
        """This relay's devices, re-read every round (a broken file keeps the last one)."""
        return self.enrolled.agents()

    def run(self) -> None:
        self.allow_list()  # a broken allow-list stops the start
        log.info("relay %s: signing key %s (enroll it upstream: fedmq relay enroll --relay %s "
                 "--public-key %s)", self.config.relay_id, self.signer.public_hex[:16],
                 self.config.relay_id, self.signer.public_hex)
        if not self._local.connect_retrying(self._stop) or \
                not self._up.connect_retrying(self._stop):
            return
        try:
            while not self._stop.is_set():
                self.tick(0.05)
        finally:
            if self._said_online:
                self._up.publish(self._status_topic, self._status("offline"), retain=True,
                                 timeout=2)
            self._up.close()
            self._local.close()

    def kill(self) -> None:
        """Drop both connections without a goodbye (tests: the broker fires the Last Will)."""
        self._stop.set()
        self._said_online = False
        self._up.close(graceful=False)
        self._local.close(graceful=False)

    def tick(self, timeout: float) -> None:
        item = self._local_inbox.get(timeout)
        for _ in range(1000):  # then look at upstream and the clock again
            if item is None:
                break
            self._on_local(*item)
            item = self._local_inbox.get(0)
        while (up := self._up_inbox.get(0)) is not None:
            self._on_upstream(*up)
        self._ask_and_answer()
        self._maybe_forward(time.time())

    # --- upstream: the aggregator's announcements --------------------------------
    def _on_upstream(self, topic: str, payload: bytes) -> None:
        up, local = self.config.upstream_topics, self.config.local_topics
        try:
            if topic == up.pubkey:
                self._accept_key(PubKeyMessage.from_bytes(payload))
                self._local.publish(local.pubkey, payload, retain=True, wait=False)
                self._key_payload = payload
                self._asks.key(announcement_digest(payload))
                payload, self._pending_round = self._pending_round or b"", None
                if not payload:
                    return
            elif topic == up.metrics:
                self._local.publish(local.metrics, payload, qos=0, wait=False)
                return
            elif topic != up.round:
                return
            if self._pubkey is None:
                self._pending_round = payload  # the retained key may come after the round
                return
            msg = RoundMessage.from_bytes(payload, verify_with=self._aggregator_key)
            if msg.fleet != up.fleet or msg.key_fingerprint != self._pubkey.fingerprint \
                    or msg.codec_digest != self._pubkey.contract_digest:
                raise ProtocolError("round names another fleet, key or codec contract")
        except ProtocolError as exc:
            log.warning("relay: ignoring bad message on %s: %s", topic, exc)
            return
        self._local.publish(local.round, payload, retain=True, wait=False)  # byte-identical
        self._round_payload = payload
        self._open(msg)

    def _accept_key(self, msg: PubKeyMessage) -> None:
        if msg.signing_key != self.config.aggregator_signing_key:
            raise ProtocolError(f"pubkey signed by {msg.signing_key[:16]}..., not the pinned "
                                f"aggregator key {self.config.aggregator_signing_key[:16]}...")
        if msg.fleet != self.config.upstream_topics.fleet:
            raise ProtocolError(f"pubkey is for fleet {msg.fleet!r}")
        key = public_key_from_hex(msg.n_hex)
        if fingerprint(key) != msg.fingerprint:
            raise ProtocolError("announced fingerprint does not match the announced key")
        if self._public_key is not None and self._public_key.n != key.n:
            self.state = None  # a new key: nothing summed under the old one counts
        self._pubkey, self._public_key = msg, key

    def _open(self, msg: RoundMessage) -> None:
        state = self.state
        if msg.state not in PHASES:  # finished or failed: nothing to sum
            self.state, self._admission = None, None
            return
        if state is not None and (state.run_id, state.round_id) == (msg.run_id, msg.round_id):
            # Announced again (a deadline extension, a reconnect): our partial may be lost.
            if self._sent is not None:
                self._up.publish(self.config.upstream_topics.update(self.config.relay_id),
                                 self._sent, wait=False)
            else:
                state.deadline = self._deadline(msg.deadline)
            return
        assert self._pubkey is not None and self._public_key is not None
        pub, key = self._pubkey, self._public_key
        layout = layout_for(msg.state, msg.spec, pub.codec, pub.statistics, key.n,
                            pub.privacy, distill=msg.settings.distills)
        self._participants = frozenset(msg.participants)
        enrolled = self.allow_list()
        self.state = RoundState(
            fleet=msg.fleet, run_id=msg.run_id, round_id=msg.round_id,
            expected=frozenset(a for a, up in self.online.items()
                               if up and self._takes(a) and a in enrolled),
            deadline=self._deadline(msg.deadline), quorum=1, layout=layout,
            key_fingerprint=pub.fingerprint, codec_digest=pub.contract_digest,
            max_agents=pub.codec.max_agents, public_key=key, allow_list=enrolled,
            opened_at=time.time())
        self._sent, self._attested = None, {}
        body = layout.plaintext_count() * ciphertext_size(key)
        admission = Admission(self.config.local_topics, update_body=body, limits=_LIMITS)
        admission.open_round(msg.round_id, body)
        self._admission = admission
        log.info("relay: %s round %d open, expecting %d devices", msg.phase, msg.round_id,
                 len(self.state.expected))

    def _maybe_online(self) -> None:
        """Online upstream once ``min_devices`` ENROLLED devices are: any login may say
        "online" on a status topic."""
        if self._said_online:
            return
        enrolled = self.allow_list()
        n = sum(1 for d, up in self.online.items() if up and d in enrolled)
        if n >= self.config.min_devices:
            self._said_online = True
            log.info("relay %s: %d devices online; online upstream", self.config.relay_id, n)
            self._announce_online()

    def _takes(self, device: str) -> bool:
        return not self._participants or device in self._participants

    def _deadline(self, round_deadline: float) -> float:
        """A bit before the round's: the partial must still reach the aggregator in time."""
        left = max(0.0, round_deadline - time.time())
        return round_deadline - min(self.config.margin_seconds, 0.2 * left)

    # --- downstream: the devices -------------------------------------------------
    def _admit_local(self, topic: str, payload: bytes) -> None:
        admission = self._admission  # paho's thread: cheap size checks, then queue
        if admission is not None:
            if admission.admit(topic, payload):
                self._local_inbox.put(topic, payload)
        elif len(payload) <= _LIMITS.status_bytes:  # no round yet: statuses only
            self._local_inbox.put(topic, payload)

    def _on_local(self, topic: str, payload: bytes) -> None:
        local, state = self.config.local_topics, self.state
        if (device := local.agent_of(topic, "status")) is not None:
            self._on_status(device, payload)
            return
        if (device := local.agent_of(topic, "update")) is None:
            return
        if state is None or self._sent is not None or (key := self._public_key) is None:
            log.info("relay: update from %s dropped: no round open here", device)
            return

        def attested(update: UpdateMessage) -> None:  # after every other check, before counting
            try:
                self._attested[device] = update.attested(state.allow_list[device], key)
            except ProtocolError as exc:
                raise Rejected(str(exc)) from exc
        try:
            state.offer(decode_update(payload, key), device, attested)
        except Redelivered:
            return
        except (ProtocolError, Rejected) as exc:
            log.warning("relay rejected update from %s: %s", device, exc)
            return
        state.update_bytes += len(payload)

    def _on_status(self, device: str, payload: bytes) -> None:
        try:
            status = StatusMessage.from_bytes(payload)
        except ProtocolError as exc:
            # Once per device at WARNING (a broken device repeats it; later ones at DEBUG).
            level = logging.DEBUG if device in self._bad_status else logging.WARNING
            self._bad_status.add(device)
            log.log(level, "relay: ignoring bad status of %s: %s", device, exc)
            return
        if status.agent_id != device:
            return
        self.online[device] = status.state == "online"
        self._maybe_online()
        if status.holds is not None and self.online[device]:
            self.resends.ask(status.holds, self._key_payload, self._round_payload)
        state = self.state
        if state is None or self._sent is not None:
            return
        if self.online[device] and self._takes(device) and device in state.allow_list:
            state.expected = state.expected | {device}  # came online during the round
        if status.skipped is not None:
            state.skip(device, status.skipped)

    def _maybe_forward(self, now: float) -> None:
        state = self.state
        if state is None or self._sent is not None or state.close_reason(now) is None:
            return
        assert state.ciphertext_sum is not None and self._public_key is not None
        partial = PartialSum(
            fleet=state.fleet, run_id=state.run_id, round_id=state.round_id,
            relay_id=self.config.relay_id, key_fingerprint=state.key_fingerprint,
            codec_digest=state.codec_digest, n_values=state.n_values,
            ciphertexts=tuple(int(c) for c in state.ciphertext_sum),
            contributors=(devices := tuple(sorted(state.accepted))),
            attestations=tuple(self._attested[d] for d in devices))
        self._sent = encode_partial(partial, self._public_key, self.signer)
        self._up.publish(self.config.upstream_topics.update(self.config.relay_id), self._sent,
                         wait=False)
        self.forwarded.append(partial)
        log.info("relay: round %d partial sum of %d devices forwarded (%s)%s", state.round_id,
                 partial.summed, state.phase, "" if not state.missing else
                 f"; without {', '.join(sorted(state.missing))}")
