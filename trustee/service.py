"""The trustee process: verify the fleet's updates, and partially decrypt only sums it verified.

It reads the fleet's update topics (and the aggregator's signed pubkey, for the
DP terms the devices sized their noise for) and the aggregator's decryption
requests; it writes only its own reply topic. For each request it recomputes the
product of the named members' updates from what it verified itself, checks the
decryption policy (protocol.disclosure over its ledger), records the device set,
and only then publishes its partial decryption with the proof that it is correct.
The MQTT callback only queues; one thread acts.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedmq.aggregator.allowlist import AllowListFile
from fedmq.aggregator.trustees import TrusteeSet
from fedmq.protocol.crypto.paillier import add_ciphertexts, fingerprint
from fedmq.protocol.crypto.signing import (
    Ed25519PublicKey,
    Signer,
    public_key_from_hex,
    public_key_hex,
)
from fedmq.protocol.crypto.threshold import KeyShare, partial_decrypt
from fedmq.protocol.decryption import DecryptReply, DecryptRequest
from fedmq.protocol.decryption_log import (
    STATISTICS,
    LogEntry,
    certified,
    chain_of,
    hashes,
    vote,
)
from fedmq.protocol.disclosure import refusal
from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.protocol.messages import PubKeyMessage
from fedmq.runtime.droplog import DropLog
from fedmq.runtime.files import load_signer, read_json
from fedmq.runtime.transport import Inbox, MqttLink
from fedmq.trustee.config import TrusteeConfig
from fedmq.trustee.holdings import Enrolled, Holdings, Verified
from fedmq.trustee.ledger import Ledger

log = logging.getLogger(__name__)
CACHED_REPLIES = 256
NO_TERMS = ("no signed pubkey announcement of the updates' contract seen: the trustee cannot "
            "tell the DP quorum the devices sized noise for")


def load_share(path: str | Path) -> KeyShare:
    doc = read_json(path, "key share", secret=True)
    try:
        return KeyShare.from_dict(doc)
    except ProtocolError as exc:
        raise ConfigError(f"cannot read key share {path}: {exc}") from None


class Trustee:
    def __init__(self, config: TrusteeConfig, *, share: KeyShare | None = None,
                 signer: Signer | None = None,
                 allow_list: Mapping[str, Ed25519PublicKey] | None = None,
                 relays: Mapping[str, Ed25519PublicKey] | None = None,
                 roster: TrusteeSet | None = None) -> None:
        """``allow_list``/``relays``: instead of the allow-list file's (tests, simulations);
        ``roster``: instead of ``[trustee] trustees_file``."""
        self.config = config
        self.share = share or load_share(config.share_file)
        self.signer = signer or load_signer(config.signing_key_file)
        self.public = self.share.public
        self.roster = roster or TrusteeSet.load(config.trustees_file)
        self._keys = {t: i.signing_key for t, i in self.roster.trustees.items()}
        self._check_roster()
        self.enrolled = AllowListFile(config.allow_list_file, agents=allow_list, relays=relays)
        self.holdings = Holdings(config.topics.fleet, self.public.public_key,
                                 config.keep_rounds)
        self.ledger = Ledger(config.ledger_file)
        self._aggregator_key = public_key_from_hex(config.aggregator_signing_key)
        self._dp_quorum: dict[str, int] = {}  # contract digest -> quorum its DP shares assume
        self._replies: OrderedDict[str, bytes] = OrderedDict()
        # Bounded: a flood from a device fills it and is dropped by the broker client,
        # never the trustee's memory (its own share of a round is a few MB at 1,000 devices).
        self._inbox = Inbox(maxsize=100_000, max_bytes=256 << 20)
        self._ignored = DropLog(log, level=logging.INFO)
        self._stop = threading.Event()
        self.served = 0  # partial decryptions published (tests, operators)
        self.refused = 0
        topics = config.topics
        self._link = MqttLink(
            config.mqtt, client_id=config.client_id, on_message=self._inbox.put,
            subscriptions=[(topics.updates_filter, 1), (topics.trustee_request, 1),
                           (topics.pubkey, 1)], clean_session=True)

    def _check_roster(self) -> None:
        """The share, this trustee's key and the others' must be of one ceremony."""
        me, where = self.roster.trustees.get(self.config.trustee_id), \
            self.config.trustees_file or "the trustees file"
        if self.roster.public.n != self.public.n:
            raise ConfigError(f"{where} is for another key than {self.config.share_file}")
        if me is None or me.index != self.share.index:
            raise ConfigError(f"{self.config.share_file} holds share {self.share.index}, but "
                              f"{where} gives trustee {self.config.trustee_id!r} "
                              f"{'no share' if me is None else f'share {me.index}'}")
        if public_key_hex(me.signing_key) != self.signer.public_hex:
            raise ConfigError(f"{self.config.signing_key_file} is not the signing key {where} "
                              f"names for {self.config.trustee_id!r}")
        if 2 * self.public.threshold <= self.public.trustees:
            raise ConfigError(f"a {self.public.threshold}-of-{self.public.trustees} key: the "
                              "threshold must be a majority, or two disjoint groups of "
                              "trustees could each decrypt what the other refuses")

    def stop(self) -> None:
        self._stop.set()
        self._inbox.wake()

    def run(self) -> None:
        """Serve until stop(); a broker that is down is retried, never fatal."""
        enrolled = self._enrolled()
        if not enrolled.agents and not enrolled.relays:
            log.warning("no device or relay is on this trustee's allow-list (%s): it decrypts "
                        "nothing until they are enrolled (fedmq trustee enroll --config ... "
                        "--from-file keys.csv)", self.config.allow_list_file)
        log.info("trustee %s holds share %d of a %d-of-%d key (fingerprint %s); %d devices "
                 "and %d relays on its allow-list; min_group %d", self.config.trustee_id,
                 self.share.index, self.public.threshold, self.public.trustees,
                 fingerprint(self.public.public_key)[:16], len(enrolled.agents),
                 len(enrolled.relays), self.config.min_group)
        if not self._link.connect_retrying(self._stop):
            return
        try:
            while not self._stop.is_set():
                item = self._inbox.get(0.5)
                if item is not None:
                    self.handle(*item)
        finally:
            self._link.close()

    def _enrolled(self) -> Enrolled:
        return Enrolled(self.enrolled.agents(), self.enrolled.relays(),
                        self.enrolled.relay_devices())

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from the broker; nothing here raises into the loop."""
        topics = self.config.topics
        try:
            if topic == topics.trustee_request:
                self._request(DecryptRequest.from_bytes(payload))
            elif topic == topics.pubkey:
                self._pubkey(payload)
            elif (member := topics.agent_of(topic, "update")) is not None:
                self.holdings.offer(payload, self._enrolled(), member)
        except ProtocolError as exc:  # at most one line per topic every 5 s: no log flood
            self._ignored.drop(topic, f"ignored message on {topic}: {exc}")
        except ConfigError as exc:  # the allow-list file broke under us: said, retried
            log.error("%s", exc)

    def _pubkey(self, payload: bytes) -> None:
        msg = PubKeyMessage.from_bytes(payload)
        if msg.signing_key != self.config.aggregator_signing_key:
            raise ProtocolError("pubkey announcement not signed by the pinned aggregator key")
        if msg.fingerprint != fingerprint(self.public.public_key):
            raise ProtocolError("pubkey announcement is for another Paillier key")
        device = msg.privacy.device
        self._dp_quorum[msg.contract_digest] = 1 if device is None else device.quorum

    def _request(self, req: DecryptRequest) -> None:
        if req.fleet != self.config.topics.fleet:
            raise ProtocolError(f"request for fleet {req.fleet!r}")
        if (cached := self._replies.get(req.request_id)) is not None:
            self._publish(cached)
            return
        enrolled = self._enrolled()
        for payload in req.supply:
            try:
                self.holdings.offer(payload, enrolled)
            except ProtocolError as exc:
                log.warning("supplied update for request %s not kept: %s", req.request_id, exc)
        found: list[Verified] = []
        missing: list[str] = []
        for member, signed_hash in sorted(req.members.items()):
            v = self.holdings.get(req.run_id, req.round_id, member, signed_hash)
            if v is None:
                missing.append(member)
            else:
                found.append(v)
        if missing:
            self._reply(req, "missing", missing=tuple(missing), cache=False)
            return
        devices, why, min_group = self._policy(req, found)
        if why is None:
            self._log_step(req, found, devices, min_group)
        else:
            self._refuse(req, why, cache=why != NO_TERMS)

    def _refuse(self, req: DecryptRequest, why: str, *, cache: bool = True) -> None:
        self.refused += 1
        log.warning("refused to decrypt %d member(s) of run %s round %d: %s", len(req.members),
                    req.run_id, req.round_id, why)
        # Not knowing the contract yet passes once the announcement arrives: the
        # aggregator's re-sent request must be judged again, not answered from the cache.
        self._reply(req, "refused", reason=why, cache=cache)

    def _log_step(self, req: DecryptRequest, found: Sequence[Verified],
                  devices: frozenset[str], min_group: int) -> None:
        """Check the request's log against what this trustee knows; then vote for the new
        entry (phase "vote") or release the partial decryption of a certified one."""
        fleet, chain = req.fleet, chain_of(req.run_id, req.round_id)
        try:
            shown = certified(req.log, fleet=fleet, chain=chain, keys=self._keys,
                              threshold=self.public.threshold)
        except ProtocolError as exc:
            self._refuse(req, f"the request's log is not certified: {exc}")
            return
        known = self.ledger.log(fleet, chain)
        if any(a != b for a, b in zip(shown, hashes(known, fleet=fleet, chain=chain),
                                      strict=False)):
            self._refuse(req, f"the request's {chain} log differs from the one this trustee "
                         "knows: the certified log is one sequence, never forked")
            return
        self.ledger.adopt(fleet, chain, list(req.log))
        known = self.ledger.log(fleet, chain)
        if req.phase == "decrypt":
            self._decrypt_step(req, found, devices)
            return
        position = len(req.log)
        entry = LogEntry(tuple(sorted(devices)), dict(req.members), {})
        digest = entry.digest(fleet, chain, position, shown[-1] if shown else b"")
        if len(known) > position:  # the aggregator is behind: the entries it lacks
            self._reply(req, "log", log=tuple(known), cache=False)
            return
        why = refusal([frozenset(e.devices) for e in known], devices, min_group)
        if why is not None:
            if chain == STATISTICS and len(devices) >= min_group:
                why += "; the statistics round is compared across all runs of the fleet"
            self._refuse(req, why)
            return
        log.info("approved the sum of %d devices as entry %d of the %s log", len(devices),
                 position, chain)
        self._reply(req, "vote", vote=vote(self.signer, digest))

    def _decrypt_step(self, req: DecryptRequest, found: Sequence[Verified],
                      devices: frozenset[str]) -> None:
        """The partial decryption of the log's last entry: certified by T trustees (each
        judged it against every set before it), and naming exactly these updates."""
        entry = req.log[-1]
        if dict(entry.members) != dict(req.members) or frozenset(entry.devices) != devices:
            self._refuse(req, "a partial decryption is released only for the updates and "
                         "devices the certified entry names")
            return
        product = list(found[0].ciphertexts)
        for v in found[1:]:
            product = add_ciphertexts(self.public.public_key, product, v.ciphertexts)
        partial = partial_decrypt(self.share, product, context=req.context())
        self.served += 1
        log.info("partially decrypted the sum of %d devices of run %s round %d (entry %d of "
                 "its log)", len(devices), req.run_id, req.round_id, len(req.log) - 1)
        self._reply(req, "ok", partial=partial)

    def _policy(self, req: DecryptRequest, found: Sequence[Verified]
                ) -> tuple[frozenset[str], str | None, int]:
        """The device set, why it must not be decrypted whatever was before (None: it
        may), and the fewest devices a sum may span (min_group, or the DP quorum)."""
        devices = [d for v in found for d in v.devices]
        every = frozenset(devices)
        min_group = self.config.min_group
        if len(every) != len(devices):
            return every, "a device is counted twice (directly and in a relay's partial " \
                "sum)", min_group
        if len({(v.codec_digest, v.n_values, len(v.ciphertexts)) for v in found}) != 1:
            return every, "the members' updates are made for different contracts or " \
                "layouts", min_group
        if found[0].codec_digest not in self._dp_quorum:
            return every, NO_TERMS, min_group
        min_group = max(min_group, self._dp_quorum[found[0].codec_digest])
        if len(every) < min_group:
            return every, (f"the set has {len(every)} device(s), fewer than min_group = "
                           f"{min_group} (rule: every decrypted sum spans at least min_group "
                           "devices)"), min_group
        return every, None, min_group

    def _reply(self, req: DecryptRequest, status: str, *, cache: bool = True,
               **fields: object) -> None:
        payload = DecryptReply(fleet=req.fleet, request_id=req.request_id,
                               trustee=self.config.trustee_id, status=status,
                               **fields).to_bytes(self.signer)  # type: ignore[arg-type]
        if cache:
            self._replies[req.request_id] = payload
            while len(self._replies) > CACHED_REPLIES:
                self._replies.popitem(last=False)
        self._publish(payload)

    def _publish(self, payload: bytes) -> None:
        self._link.publish(self.config.topics.trustee_reply(self.config.trustee_id), payload,
                           qos=1, wait=False)
