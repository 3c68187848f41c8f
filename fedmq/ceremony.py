"""The key ceremony of ``fedmq init gateway --trustees K --threshold T``: this process deals.

It makes the Paillier key from two safe primes, splits its decryption exponent into
K Shamir shares (protocol.crypto.threshold) and writes one bundle per trustee
(its share, its own signing key and MQTT login, ``trustee.toml``; secrets 0600)
and, for the aggregator, only the public key with the trustees' verification
and signing keys (``state/trustees.json``). The whole private key exists only in
this process's memory while it deals and is never written anywhere. The dealer
assumption is exact: whoever runs this command could have kept the key, so it runs
on a machine the trustees trust to forget it (offline, then wiped or shut down).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fedmq.protocol.crypto.paillier import fingerprint
from fedmq.protocol.crypto.threshold import deal
from fedmq.runtime.files import (
    create_signer,
    load_or_create_signer,
    write_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    from fedmq.provision import Gateway

MIN_GROUP = 2  # the trustees' own floor; a DP fleet's announced quorum raises it


def deal_trustees(directory: Path, gateway: Gateway, *, bits: int, threshold: int
                  ) -> list[str]:
    """Deal the key to ``gateway.trustees``; return the lines to show the operator."""
    from fedmq.aggregator.trustees import TrusteeInfo, TrusteeSet
    from fedmq.broker.passwords import add_users, new_password
    from fedmq.provision import _template

    public, shares = deal(bits, len(gateway.trustees), threshold)
    # The aggregator's signing key now: each trustee pins it (it reads the DP terms).
    aggregator = load_or_create_signer(directory / "state" / "signing.key")
    ca = (directory / "tls" / "ca.crt").read_bytes()
    passwords = {t: new_password() for t in gateway.trustees}
    add_users(directory / "passwords.txt", passwords)
    infos = {}
    for trustee, share in zip(gateway.trustees, shares, strict=True):
        bundle = directory / "trustees" / trustee
        write_text_atomic(bundle / "share.json", json.dumps(share.to_dict()) + "\n",
                          private=True)
        signer = create_signer(bundle / "signing.key")
        infos[trustee] = TrusteeInfo(share.index, signer.public_key)
        write_atomic(bundle / "ca.crt", ca)
        write_text_atomic(bundle / "mqtt.password", passwords[trustee] + "\n", private=True)
        write_text_atomic(bundle / "trustee.toml", _template(
            "trustee.toml", id=trustee, fleet=gateway.fleet, threshold=threshold,
            min_group=MIN_GROUP, aggregator_signing_key=aggregator.public_hex,
            device_host=gateway.device_host, port=gateway.port))
    del shares  # nothing of the key stays referenced here once the bundles are written
    path = directory / "state" / "trustees.json"
    roster = json.dumps(TrusteeSet(public, infos).to_dict(), indent=1) + "\n"
    write_text_atomic(path, roster)
    for trustee in gateway.trustees:  # each checks the others' votes on the decryption log
        write_text_atomic(directory / "trustees" / trustee / "trustees.json", roster)
    return [f"key {fingerprint(public.public_key)[:16]} dealt {threshold}-of-"
            f"{len(gateway.trustees)}: the gateway holds no private key ({path}: public and "
            "verification keys only)",
            *(f"trustee {t}: login added to passwords.txt, bundle {directory / 'trustees' / t}"
              for t in gateway.trustees),
            f"move each trustees/<id>/ to its trustee's machine and delete it here: "
            f"{threshold} bundles together decrypt anything"]
