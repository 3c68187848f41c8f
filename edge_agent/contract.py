"""The fleet contract this agent serves: the aggregator's trusted announcement, and the
update sealed under it (encoded in the phase's layout, encrypted, signed).

A ``pubkey`` announcement names the Paillier key, the aggregator's signing key, the
fixed-point codec, the statistics contract and the privacy terms. The agent works under one
contract at a time; a round that names another key or codec is not this contract's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedmq.edge_agent.obfuscator_pool import ObfuscatorPool
from fedmq.edge_agent.trust import TrustedKeys
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import Codec, make_codec
from fedmq.protocol.crypto.paillier import PaillierPublicKey, encrypt_ints, public_key_from_hex
from fedmq.protocol.crypto.paillier import fingerprint as key_fingerprint
from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer
from fedmq.protocol.crypto.signing import public_key_from_hex as signing_key_from_hex
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.layout import UpdateLayout, layout_for
from fedmq.protocol.messages import PubKeyMessage, RoundMessage
from fedmq.protocol.wire import UpdateMessage, encode_update


@dataclass(frozen=True)
class Sealed:
    payload: bytes  # the signed binary frame for update/<agent id>
    n_values: int
    n_ciphertexts: int


@dataclass(frozen=True)
class FleetContract:
    announced: PubKeyMessage
    key: PaillierPublicKey
    aggregator_key: Ed25519PublicKey  # verifies rounds and notices
    codec: Codec

    @classmethod
    def accept(cls, msg: PubKeyMessage, trusted: TrustedKeys,
               current: FleetContract | None) -> FleetContract:
        """Check ``msg`` against the keys this agent trusts; raise ProtocolError or
        UntrustedKey, remembering nothing, when it is refused."""
        key = public_key_from_hex(msg.n_hex)
        fp = key_fingerprint(key)
        if fp != msg.fingerprint:
            raise ProtocolError("announced fingerprint does not match the announced key")
        # Decide on both keys before remembering either: a refused announcement
        # leaves no trace, so the genuine key is accepted when it comes back.
        trusted.remember(trusted.check(fp, msg.signing_key,
                                       current.announced if current else None))
        return cls(announced=msg, key=key, aggregator_key=signing_key_from_hex(msg.signing_key),
                   codec=make_codec(msg.codec, key.n))

    def names(self, msg: RoundMessage) -> bool:
        """Whether round ``msg`` was announced under this key and codec."""
        return (msg.key_fingerprint == self.announced.fingerprint
                and msg.codec_digest == self.announced.contract_digest)

    def layout(self, phase: str, spec: ModelSpec, *, distill: bool = False) -> UpdateLayout:
        a = self.announced
        return layout_for(phase, spec, a.codec, a.statistics, self.key.n, a.privacy,
                          distill=distill)

    def seal(self, msg: RoundMessage, phase: str, parts: Sequence[Sequence[int]],
             pool: ObfuscatorPool, signer: Signer, agent_id: str) -> Sealed:
        """Encode ``parts`` in the phase's layout, encrypt them with obfuscators from
        ``pool`` (each used once) and sign the frame that answers ``msg``."""
        layout = self.layout(phase, msg.spec, distill=msg.settings.distills)
        plaintexts = layout.encode(parts)
        ciphertexts = encrypt_ints(self.key, plaintexts, pool.take(len(plaintexts)))
        payload = encode_update(UpdateMessage(
            fleet=msg.fleet, run_id=msg.run_id, round_id=msg.round_id, agent_id=agent_id,
            key_fingerprint=msg.key_fingerprint, codec_digest=msg.codec_digest,
            n_values=layout.n_values, ciphertexts=tuple(ciphertexts)), self.key, signer)
        return Sealed(payload, layout.n_values, len(ciphertexts))
