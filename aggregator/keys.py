"""Keys on disk: the aggregator's Paillier keypair and Ed25519 signing key (mode 0600).

Agents pin both (key fingerprint, signing key), so a key is created only on true
first use (neither key nor any run state exists yet) or when the operator asks
for new keys: silently replacing a lost key would make every pinned agent refuse
the aggregator, and a new Paillier key cannot decrypt the open round.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fedmq.protocol.crypto.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    fingerprint,
    generate_keypair,
    private_key_from_dict,
    private_key_to_dict,
)
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.runtime.files import create_signer, load_signer, warn_if_readable, write_new
from fedmq.runtime.locks import locked

if TYPE_CHECKING:
    from fedmq.aggregator.config import AggregatorConfig

log = logging.getLogger(__name__)
Keypair = tuple[PaillierPublicKey, PaillierPrivateKey | None]
# Run state in state_dir (runs/ and latest; directly in it before run directories).
RUN_STATE_FILES = ("runs", "latest", "run.json", "global_model.npz", "rounds.csv", "open_round")
# Waiting for another command's key generation: 8192-bit keys take minutes on a Pi.
KEYGEN_LOCK_TIMEOUT = 900.0
REPIN = ("every agent must then re-pin [fleet] key_fingerprint and aggregator_signing_key "
         "(fedmq enroll prints them)")


def load_aggregator_keys(config: AggregatorConfig, *,
                         new_keys: bool = False) -> tuple[Keypair, Signer]:
    """Both keys of the aggregator; a missing one is created only on first use or on request.

    With trustees (``[keys] trustees_file``) there is no private key: the public key comes
    from the trustees file and the private half is None.
    """
    if config.trustees_file:
        return _threshold_keys(config)
    paillier, signing = Path(config.key_file), Path(config.signing_key_file)
    if not paillier.exists() or not signing.exists():
        _create_missing(config, paillier, signing, new_keys=new_keys)
    return load_keypair(paillier, config.key_bits), load_signer(signing)


def _create_missing(config: AggregatorConfig, paillier: Path, signing: Path, *,
                    new_keys: bool) -> None:
    """Create the missing key(s) under one lock, so that enroll, init and the aggregator
    started together on a fresh gateway make one pair, not one each (issue 24)."""
    with locked(paillier, timeout=KEYGEN_LOCK_TIMEOUT):
        # Again under the lock: a process we waited for may have made both meanwhile, and
        # a half-made pair (one file linked, the other not yet) is only ever seen out here.
        missing = [p for p in (paillier, signing) if not p.exists()]
        if not missing:
            return
        if not new_keys:
            # An allow-list means `fedmq enroll` already printed keys for agents to pin.
            evidence = [p for p in (paillier, signing, Path(config.allow_list_file))
                        if p.exists()]
            evidence += [p for p in (Path(config.state_dir) / f for f in RUN_STATE_FILES)
                         if p.exists()]
            if evidence:
                raise ConfigError(
                    f"{missing[0]} is missing but {evidence[0]} exists, so this is not a "
                    "first start: restore the key, or pass --new-keys to create a new one ("
                    + REPIN + ")")
        for path in missing:
            try:
                if path == paillier:
                    create_keypair(paillier, config.key_bits)
                else:
                    create_signer(signing, exclusive=True)
            except FileExistsError:
                # Only a writer that ignores the lock gets here (an older fedmq): theirs
                # stays, and is the one we load and print.
                log.info("%s was created meanwhile by another process: loading it", path)
        if new_keys:
            log.warning("created new key(s) %s: %s", ", ".join(map(str, missing)), REPIN)


def _threshold_keys(config: AggregatorConfig) -> tuple[Keypair, Signer]:
    from fedmq.aggregator.trustees import TrusteeSet

    trustees = TrusteeSet.load(config.trustees_file or "")
    signing = Path(config.signing_key_file)
    if not signing.exists():
        raise ConfigError(f"{signing} is missing: a gateway with trustees gets its signing key "
                          "from fedmq init gateway --trustees")
    return (trustees.public.public_key, None), load_signer(signing)


def load_keypair(path: Path, bits: int | None = None) -> tuple[PaillierPublicKey,
                                                               PaillierPrivateKey]:
    try:
        warn_if_readable(path)
        text = path.read_bytes().decode()
    except OSError as exc:
        raise ConfigError(f"cannot load private key {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot load private key {path}: not a UTF-8 JSON file") from exc
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ProtocolError("not a fedmq Paillier private key file")
        private = private_key_from_dict(doc)
    except (ValueError, ProtocolError) as exc:
        raise ConfigError(f"cannot load private key {path}: {exc}") from exc
    bits_found = private.public_key.n.bit_length()
    if bits is not None and abs(bits_found - bits) > 8:
        log.warning("key %s has %d bits, config asks %d: keeping the existing key", path,
                    bits_found, bits)
    log.info("loaded Paillier key %s (fingerprint %s)", path,
             fingerprint(private.public_key)[:16])
    return private.public_key, private


def create_keypair(path: Path, bits: int) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """A new keypair written 0600 to ``path``; FileExistsError if a key is there already
    (never replaced: agents may have pinned it)."""
    public, private = generate_keypair(bits)
    try:
        write_new(path, json.dumps(private_key_to_dict(private)).encode(), private=True)
    except FileExistsError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot write private key {path}: {exc.strerror}") from exc
    log.info("generated %d-bit Paillier key %s (fingerprint %s)", bits, path, fingerprint(public))
    return public, private


def load_or_create_keypair(path: str | Path, bits: int) -> tuple[PaillierPublicKey,
                                                                 PaillierPrivateKey]:
    """Load the keypair at ``path``, or create it there (no first-use check: tools, tests)."""
    p = Path(path)
    if not p.exists():
        try:
            return create_keypair(p, bits)
        except FileExistsError:
            pass  # a process starting beside us won: its key is the one on disk
    return load_keypair(p, bits)
