"""Crash-safe file writes shared by the roles: write a temp file, fsync, rename.

A power cut on a gateway or a device must leave either the old file or the new
one, never half of each; secrets are created with mode 0600 from the first byte.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from protocol.errors import ConfigError, ProtocolError
from protocol.signing import Signer

log = logging.getLogger(__name__)


def write_atomic(path: str | Path, data: bytes, *, private: bool = False) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    # 0600 at creation: a chmod after writing would leave a window for readers.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # The rename itself must reach the disk too, or a crash can resurrect the old file.
    dir_fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def warn_if_readable(path: Path) -> None:
    """Log a warning when a private key file can be read by group or others."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("private key %s is readable by others (mode %o); chmod 600 it", path, mode)


def load_signer(path: str | Path) -> Signer:
    """An existing Ed25519 signing key (ConfigError naming the file if it is unusable)."""
    p = Path(path)
    try:
        warn_if_readable(p)
        return Signer.from_pem(p.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot load signing key {p}: {exc.strerror}") from exc
    except ProtocolError as exc:
        raise ConfigError(f"cannot load signing key {p}: {exc}") from exc


def create_signer(path: str | Path) -> Signer:
    """A new Ed25519 signing key, written 0600."""
    p = Path(path)
    signer = Signer.generate()
    try:
        write_atomic(p, signer.to_pem(), private=True)
    except OSError as exc:
        raise ConfigError(f"cannot write signing key {p}: {exc.strerror}") from exc
    log.info("generated Ed25519 signing key %s (public %s)", p, signer.public_hex)
    return signer


def load_or_create_signer(path: str | Path) -> Signer:
    """An Ed25519 signing key: loaded if present, else generated and written 0600."""
    return load_signer(path) if Path(path).exists() else create_signer(path)
