"""edge_agent.contract: a trusted announcement, and an update sealed under it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support import AGGREGATOR_SIGNER, agent_config, announcement

from fedmq.edge_agent.contract import FleetContract
from fedmq.edge_agent.obfuscator_pool import ObfuscatorPool
from fedmq.edge_agent.trust import TrustedKeys, UntrustedKey
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.obfuscation import make_obfuscators
from fedmq.protocol.crypto.paillier import decrypt_ints, fingerprint
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.messages import PubKeyMessage
from fedmq.protocol.wire import decode_update


def pubkey(public, signer: Signer = AGGREGATOR_SIGNER, fp: str | None = None) -> PubKeyMessage:
    return PubKeyMessage(fleet="f", n_hex=format(public.n, "x"),
                         fingerprint=fp or fingerprint(public), codec=CodecParams(),
                         signing_key=signer.public_hex)


def trusted(tmp_path: Path) -> TrustedKeys:
    return TrustedKeys(agent_config(1883, "pi-1", state_dir=str(tmp_path)))


def test_a_refused_announcement_leaves_no_trace(tmp_path: Path, keypair) -> None:
    public, _ = keypair
    keys = trusted(tmp_path)
    with pytest.raises(ProtocolError, match="fingerprint does not match"):
        FleetContract.accept(pubkey(public, fp="0" * 64), keys, None)
    assert not list(tmp_path.iterdir())
    first = FleetContract.accept(pubkey(public), keys, None)  # trusted on first use
    with pytest.raises(UntrustedKey):
        FleetContract.accept(pubkey(public, Signer.from_seed(b"forger")), keys, first)


def test_names_only_rounds_of_its_key_and_codec(tmp_path: Path, keypair) -> None:
    contract = FleetContract.accept(pubkey(keypair[0]), trusted(tmp_path), None)
    mine = dataclasses.replace(announcement(1), key_fingerprint=contract.announced.fingerprint,
                               codec_digest=contract.announced.contract_digest)
    assert contract.names(mine)
    assert not contract.names(dataclasses.replace(mine, codec_digest="e" * 32))
    assert not contract.names(dataclasses.replace(mine, key_fingerprint="0" * 64))


def test_a_sealed_update_decrypts_to_what_was_encoded(tmp_path: Path, keypair) -> None:
    public, private = keypair
    contract = FleetContract.accept(pubkey(public), trusted(tmp_path), None)
    msg = dataclasses.replace(announcement(1), key_fingerprint=contract.announced.fingerprint,
                              codec_digest=contract.announced.contract_digest)
    layout = contract.layout("training", msg.spec)
    parts = [[1] * s.n_values for s in layout.sections]  # every count within [1, max_count]
    pool = ObfuscatorPool(make_obfuscators("standard", public), target=0)
    signer = Signer.from_seed(b"pi-1")
    sealed = contract.seal(msg, "training", parts, pool, signer, "pi-1")
    update = decode_update(sealed.payload, public)
    update.verify(signer.public_key)
    assert (update.agent_id, update.round_id, update.n_values) == ("pi-1", 1, layout.n_values)
    assert sealed.n_ciphertexts == len(update.ciphertexts) == layout.plaintext_count()
    assert decrypt_ints(private, list(update.ciphertexts)) == layout.encode(parts)
    pool.close()
