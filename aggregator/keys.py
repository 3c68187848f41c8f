"""The aggregator's Paillier keypair on disk: created once, private part mode 0600."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

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
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            log.warning("private key %s is readable by others (mode %o); chmod 600 it", p, mode)
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
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    # Created 0600 from the first byte: a chmod after writing would leave a window.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(private_key_to_dict(private), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)
    log.info("generated %d-bit Paillier key %s (fingerprint %s)", bits, p, fingerprint(public))
    return public, private
