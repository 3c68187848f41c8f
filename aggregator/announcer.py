"""The aggregator's retained announcements (key and round): what it last published, and
whether the broker still holds exactly that.

Why the aggregator watches its own topics: a retained ``pubkey`` or ``round``
replaced by someone else (a leaked aggregator login, an anonymous broker)
stays on the broker for every agent that starts later. Subscribed to both
topics, the aggregator sees each copy the broker hands out (its own echo, the
retained copy on subscribe, a forgery) and puts its own back when the copy is
not byte-identical to what it last published and not the echo of one of its
own publishes (each publish is expected back once). A copy it signed itself (its
retained message from an earlier run or process, which the broker hands out on
every restart) is replaced quietly, at INFO; only a copy it did not sign is a
WARNING.

Why it re-announces after every (re)connect: it runs a clean MQTT session.
Mosquitto 2.0.11 with ``use_username_as_clientid`` keeps the client id an
unauthenticated CONNECT asked for on the refused connection, and on closing it
deletes whichever session holds that id from its client-id table
(src/handle_connect.c, the ``use_username_as_clientid`` branch without a user
name leaves ``context->id`` set; src/context.c ``context__remove_from_by_id``
deletes the entry it finds by id, not itself; fixed in 2.0.13 by the
``in_by_id`` flag). A persistent session that is no longer in the table is not
found on reconnect, yet its subscriptions stay in the tree; the reconnected
client's SUBSCRIBE matches them by client id (src/subs.c ``sub__add_leaf``)
and only updates their QoS, so every message keeps going to the orphaned
session's queue until the broker restarts. A clean session is discarded on
disconnect with its subscriptions, so the reconnected client's own are live.
Nothing is queued for a clean session while it is away; a re-announced round
with a new ``issued_at`` makes every agent re-send what it sent meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.resend import Resends
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.signing import Signer, signed_by
from fedmq.protocol.holdings import Holdings
from fedmq.protocol.messages import PubKeyMessage, RoundMessage
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttLink

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from fedmq.aggregator.config import AggregatorConfig

log = logging.getLogger("fedmq.aggregator.service")

_OWN_HISTORY = 8  # earlier payloads per topic still recognised as ours (late echoes)
_WARNED_MAX = 1000


class Announcer:
    """Thread-safe record of the retained topics; paho's thread only stores."""

    def __init__(self, topics: Iterable[str], *,
                 own_key: Ed25519PublicKey | None = None) -> None:
        """``own_key``: the aggregator's signing key, to know its earlier messages."""
        self._topics = frozenset(topics)
        self._own_key = own_key
        self._lock = threading.Lock()
        self._latest: dict[str, bytes] = {}
        self._ours: dict[str, deque[bytes]] = {t: deque(maxlen=_OWN_HISTORY)
                                               for t in self._topics}
        self._seen: dict[str, bytes] = {}
        # Our publishes whose echo has not come back yet: an echo of an earlier one that
        # arrives after the next announcement is no stale copy. Counted, so a later
        # replay of the same payload (by the broker or anyone) still is.
        self._echoes: dict[str, dict[bytes, int]] = {t: {} for t in self._topics}
        self._reconnected = False
        self._connections = 0
        self._warned: set[bytes] = set()

    def connected(self) -> None:
        """paho's on-connect hook: every connection after the first needs a new announcement.

        Counted, not inferred from "something was published already": paho runs this
        hook after ``connect()`` returned, so the first announcement can come first.
        """
        with self._lock:
            self._connections += 1
            if self._connections > 1:
                self._reconnected = True

    def published(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._latest[topic] = payload
            self._ours[topic].append(payload)
            echoes = self._echoes[topic]
            echoes[payload] = echoes.get(payload, 0) + 1
            for old in [p for p in echoes if p not in self._ours[topic]]:  # as bounded
                del echoes[old]

    def resent(self, topic: str, payload: bytes) -> None:
        """A non-retained copy of ``payload`` went out: its echo is ours, not a stale copy."""
        with self._lock:
            echoes = self._echoes[topic]
            echoes[payload] = echoes.get(payload, 0) + 1

    def latest(self, topic: str) -> bytes | None:
        with self._lock:
            return self._latest.get(topic)

    def observe(self, topic: str, payload: bytes) -> bool:
        """paho's thread: keep a copy the broker delivered on one of our topics.

        False for any other topic (the caller hands it on).
        """
        if topic not in self._topics:
            return False
        with self._lock:
            # Judged now, not at the next due(): by then our echo of round k may look
            # like a stale copy of round k+1 (a republish to every agent, every other
            # round of bench-flower). Late echoes of earlier announcements are ours too.
            echoes = self._echoes[topic]
            if echoes.get(payload, 0) > 0:
                echoes[payload] -= 1
                return True
            if payload != self._latest.get(topic):
                self._seen[topic] = payload
        return True

    def due(self) -> tuple[bool, list[str]]:
        """(reconnected since the last call, topics whose broker copy is not our latest)."""
        with self._lock:
            reconnected, self._reconnected = self._reconnected, False
            seen, self._seen = self._seen, {}
            stale = []
            for topic, payload in seen.items():
                latest = self._latest.get(topic)
                if latest is None or payload == latest:
                    continue  # before our first announcement, or our own echo
                stale.append(topic)
                if payload not in self._ours[topic]:
                    self._warn(topic, payload)
            return reconnected, stale

    def _warn(self, topic: str, payload: bytes) -> None:
        digest = hashlib.sha256(payload).digest()
        if digest in self._warned:
            return
        if len(self._warned) >= _WARNED_MAX:
            self._warned.clear()
        self._warned.add(digest)
        if self._own_key is not None and signed_by(payload, self._own_key):
            log.info("the broker handed out an earlier message of this aggregator on %s "
                     "(signed by its key: an earlier run or process; sha256 %s...); "
                     "replacing it with the current one", topic, digest.hex()[:16])
            return
        log.warning("the broker handed out a %d-byte message on %s that this aggregator did "
                    "not publish (sha256 %s...); republishing its own", len(payload), topic,
                    digest.hex()[:16])


class Herald:
    """Publishes the aggregator's signed, retained announcements and keeps them true.

    ``republish`` runs on the aggregator's own thread (from its drain loop): after
    a (re)connect it publishes the key again and re-announces the last round with
    a new ``issued_at``, and it puts back any retained copy that is not ours.
    """

    def __init__(self, config: AggregatorConfig, link: MqttLink, signer: Signer,
                 announcer: Announcer, *, n_hex: str, fingerprint: str, codec_digest: str
                 ) -> None:
        self._config, self._link, self._signer = config, link, signer
        self._announcer = announcer
        self._n_hex, self._fingerprint, self._codec_digest = n_hex, fingerprint, codec_digest
        self._again: Callable[[], None] | None = None  # the last round announcement
        self.sent_bytes = 0  # payload bytes of every announcement published (and re-sent)
        self.resends = Resends(config.limits.resend_seconds)

    @property
    def _topics(self) -> Topics:
        return self._config.topics

    def key(self, codec: CodecParams) -> None:
        self.retain(self._topics.pubkey, PubKeyMessage(
            fleet=self._topics.fleet, n_hex=self._n_hex, fingerprint=self._fingerprint,
            codec=codec, statistics=self._config.statistics,
            signing_key=self._signer.public_hex,
            privacy=self._config.privacy).to_bytes(self._signer))
        log.info("public key %s published on %s", self._fingerprint[:16], self._topics.pubkey)

    def round(self, run_id: str, round_id: int, version: int, params: NDArray[np.float64], *,
              state: str, spec: ModelSpec, deadline: float | None = None,
              participants: tuple[str, ...] = (), reason: str = "",
              teacher: tuple[float, ...] = ()) -> None:
        self._again = partial(self.round, run_id, round_id, version, params, state=state,
                              spec=spec, deadline=deadline, participants=participants,
                              reason=reason, teacher=teacher)
        cfg = self._config
        msg = RoundMessage(
            fleet=cfg.topics.fleet, round_id=round_id, model_version=version, state=state,
            spec=spec, params=tuple(float(p) for p in params),
            deadline=deadline if deadline is not None else time.time(),
            settings=cfg.training, server=cfg.server, key_fingerprint=self._fingerprint,
            codec_digest=self._codec_digest, run_id=run_id, participants=participants,
            reason=reason, teacher=teacher,
        )
        self.retain(cfg.topics.round, msg.to_bytes(self._signer))

    def retain(self, topic: str, payload: bytes) -> None:
        self.sent_bytes += len(payload)
        self._announcer.published(topic, payload)
        if not self._link.publish(topic, payload, retain=True):
            log.warning("publish on %s not confirmed yet; it is re-sent on reconnect", topic)

    def republish(self) -> None:
        """After a (re)connect, announce key and round again; replace copies not ours.

        The broker may have lost its retained messages (restart) and agents may
        have sent updates while we were away (a clean session queues nothing):
        a new ``issued_at`` makes every agent re-send its signed update, which
        the round counts once.
        """
        reconnected, stale = self._announcer.due()
        if reconnected:
            stale = sorted({*stale, self._topics.pubkey} - {self._topics.round})
            if self._again is not None:
                self._again()
        for topic in stale:
            if (payload := self._announcer.latest(topic)) is not None:
                self.retain(topic, payload)
        self._answer()

    def asked(self, holds: Holdings) -> None:
        """A device's status says what it holds: note what it lacks (sent by ``republish``)."""
        self.resends.ask(holds, self._announcer.latest(self._topics.pubkey),
                         self._announcer.latest(self._topics.round))

    def _answer(self) -> None:
        """Send key and round again, not retained, to devices that asked (rate-limited)."""
        key, round_, asks = self.resends.due()
        topics = [t for t, due in ((self._topics.pubkey, key), (self._topics.round, round_))
                  if due]
        for topic in topics:  # the key first: a device verifies the round with it
            if (payload := self._announcer.latest(topic)) is not None:
                self.sent_bytes += len(payload)
                self._announcer.resent(topic, payload)
                self._link.publish(topic, payload, wait=False)
        if topics:
            log.info("sent %s again to devices that lack it (%d asked since the last time)",
                     " and ".join(t.rsplit("/", 1)[-1] for t in topics), asks)
