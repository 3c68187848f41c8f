"""Keys on disk: the aggregator's Paillier keypair and Ed25519 signing keys (mode 0600)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fedmq.files import warn_if_readable, write_atomic
from protocol.errors import ConfigError, ProtocolError
from protocol.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    fingerprint,
    generate_keypair,
    private_key_from_dict,
    private_key_to_dict,
)

log = logging.getLogger(__name__)


def load_or_create_keypair(
    path: str | Path, bits: int
) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    p = Path(path)
    if p.exists():
        warn_if_readable(p)
        try:
            private = private_key_from_dict(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError, ProtocolError) as exc:
            raise ConfigError(f"cannot load private key {p}: {exc}") from exc
        bits_found = private.public_key.n.bit_length()
        if abs(bits_found - bits) > 8:
            log.warning("key %s has %d bits, config asks %d: keeping the existing key", p,
                        bits_found, bits)
        log.info("loaded Paillier key %s (fingerprint %s)", p, fingerprint(private.public_key)[:16])
        return private.public_key, private
    public, private = generate_keypair(bits)
    write_atomic(p, json.dumps(private_key_to_dict(private)).encode(), private=True)
    log.info("generated %d-bit Paillier key %s (fingerprint %s)", bits, p, fingerprint(public))
    return public, private

