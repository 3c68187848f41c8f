"""trustee.holdings: a trustee keeps only updates it verified against its OWN allow-list."""

from __future__ import annotations

from typing import Any

import pytest
from support import PARTIAL_DEVICES as DEVICES
from support import PARTIAL_KEYS as KEYS
from support import PARTIAL_RELAY as RELAY
from support import make_partial

from fedmq.protocol.crypto.paillier import encrypt_ints, fingerprint
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.partial import encode_partial
from fedmq.protocol.wire import UpdateMessage, encode_update
from fedmq.trustee.holdings import MAX_VERSIONS, Enrolled, Holdings

ENROLLED = Enrolled(agents=KEYS, relays={"relay-a": RELAY.public_key}, relay_devices={})


def update(pub: Any, agent: str = "d1", *, values: tuple[int, ...] = (1, 2, 3),
           signer: Signer | None = None, fleet: str = "f", round_id: int = 4) -> bytes:
    msg = UpdateMessage(fleet=fleet, run_id="r1", round_id=round_id, agent_id=agent,
                        key_fingerprint=fingerprint(pub), codec_digest="c" * 32, n_values=3,
                        ciphertexts=tuple(encrypt_ints(pub, list(values))))
    return encode_update(msg, pub, signer or DEVICES[agent])


def test_a_verified_update_is_kept_under_its_signed_hash(keypair: Any) -> None:
    pub, _ = keypair
    held = Holdings("f", pub)
    found = held.offer(update(pub), ENROLLED, "d1")
    assert found.devices == ("d1",)
    assert held.get("r1", 4, "d1", found.signed_hash) == found
    assert held.get("r1", 4, "d1", "0" * 64) is None


@pytest.mark.parametrize("case, says", [
    ("unenrolled", "not on this trustee's allow-list"),
    ("forged", "signature"),
    ("other topic", "came on 'd2''s topic"),
    ("other fleet", "for fleet 'g'"),
])
def test_what_the_trustee_cannot_verify_is_not_kept(keypair: Any, case: str, says: str) -> None:
    pub, _ = keypair
    payload, topic = {
        "unenrolled": (update(pub, "d9", signer=Signer.from_seed(b"d9")), "d9"),
        "forged": (update(pub, "d1", signer=DEVICES["d2"]), "d1"),
        "other topic": (update(pub, "d1"), "d2"),
        "other fleet": (update(pub, "d1", fleet="g"), "d1"),
    }[case]
    held = Holdings("f", pub)
    with pytest.raises(ProtocolError, match=says):
        held.offer(payload, ENROLLED, topic)


def test_a_relays_partial_counts_its_attested_devices_only(keypair: Any) -> None:
    pub, _ = keypair
    held = Holdings("f", pub)
    found = held.offer(encode_partial(make_partial(pub), pub, RELAY), ENROLLED, "relay-a")
    assert found.devices == ("d1", "d2") and found.member == "relay-a"
    foreign = make_partial(pub, signers={**DEVICES, "d2": RELAY})  # the relay signed for d2
    with pytest.raises(ProtocolError, match="without their valid attestation"):
        held.offer(encode_partial(foreign, pub, RELAY), ENROLLED, "relay-a")
    assigned = Enrolled(KEYS, {"relay-a": RELAY.public_key}, {"relay-a": frozenset({"d1"})})
    with pytest.raises(ProtocolError, match="does not serve: d2"):
        held.offer(encode_partial(make_partial(pub), pub, RELAY), assigned, "relay-a")


def test_a_liar_cannot_fill_the_trustees_memory(keypair: Any) -> None:
    pub, _ = keypair
    held = Holdings("f", pub, keep_rounds=2)
    for i in range(MAX_VERSIONS):
        held.offer(update(pub, values=(i, 0, 0)), ENROLLED, "d1")
    with pytest.raises(ProtocolError, match="more than 4 different updates"):
        held.offer(update(pub, values=(9, 0, 0)), ENROLLED, "d1")
    for round_id in (5, 6):  # only the newest keep_rounds rounds stay
        held.offer(update(pub, round_id=round_id), ENROLLED, "d1")
    assert len(held._rounds) == 2 and ("r1", 4) not in held._rounds
