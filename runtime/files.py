"""Crash-safe file writes shared by the roles: write a temp file, fsync, rename (or link).

A power cut on a gateway or a device must leave either the old file or the new
one, never half of each; secrets are created with mode 0600 from the first byte.
A key is created with a link instead of a rename: a second writer fails rather
than replace a key someone already printed and pinned.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from numpy.typing import ArrayLike

from fedmq.models.io import dump_model
from fedmq.models.spec import ModelSpec
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.errors import ConfigError, ProtocolError

log = logging.getLogger(__name__)
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


def write_atomic(path: str | os.PathLike[str], data: bytes, *, private: bool = False) -> None:
    """Replace ``path`` with ``data`` in one step (the project's only atomic-write helper).

    ``private`` files (keys, passwords) are 0600 from their first byte; others 0644.
    A reader sees the old file or the new one; a crash leaves no half-written file.
    """
    _write_then(path, data, private=private, link=False)


def write_new(path: str | os.PathLike[str], data: bytes, *, private: bool = False) -> None:
    """Create ``path`` with ``data`` in one step; FileExistsError if it exists already.

    As ``write_atomic``, but the temp file is hard-linked into place, which fails when the
    name is taken: two processes creating the same key never both think theirs is on disk.
    """
    _write_then(path, data, private=private, link=True)


def _write_then(path: str | os.PathLike[str], data: bytes, *, private: bool,
                link: bool) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name: two writers (threads or processes) never share one.
    fd, tmp_name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600: a chmod to 0644 is safe, the reverse would leave a window.
        if not private:
            os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if link:
            _link(tmp, p)
        else:
            os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if link:  # the key now has two names: drop the temp one
        tmp.unlink(missing_ok=True)
    # The new name itself must reach the disk too, or a crash can resurrect the old file.
    dir_fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _link(tmp: Path, p: Path) -> None:
    try:
        os.link(tmp, p)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        # A filesystem without hard links (FAT on a USB stick, some network shares) has no
        # exclusive rename: checked, then renamed. The aggregator's keys are still made
        # once, under their lock (aggregator.keys); only lock-free callers lose the race.
        if p.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(p)) from None
        os.replace(tmp, p)


def write_text_atomic(path: str | Path, text: str, *, private: bool = False) -> None:
    write_atomic(path, text.encode("utf-8"), private=private)


def save_model(path: str | Path, spec: ModelSpec, params: ArrayLike, *,
               metadata: dict[str, Any] | None = None) -> None:
    """``models.dump_model`` written atomically (models/ stays free of file writes)."""
    p = Path(path)
    write_atomic(p, dump_model(spec, params, metadata=metadata, suffix=p.suffix))


def read_json(path: str | Path, what: str, *, secret: bool = False) -> Any:
    """The JSON document in ``path``; ConfigError "cannot read WHAT PATH: ..." otherwise.
    ``secret``: a key file, warned about when others can read it."""
    p = Path(path)
    try:
        if secret:
            warn_if_readable(p)
        return json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {p}: not a JSON file ({exc})") from None


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


def create_signer(path: str | Path, *, exclusive: bool = False) -> Signer:
    """A new Ed25519 signing key, written 0600; ``exclusive``: FileExistsError rather than
    replace a key already there."""
    p = Path(path)
    signer = Signer.generate()
    try:
        (write_new if exclusive else write_atomic)(p, signer.to_pem(), private=True)
    except FileExistsError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot write signing key {p}: {exc.strerror}") from exc
    log.info("generated Ed25519 signing key %s (public %s)", p, signer.public_hex)
    return signer


def load_or_create_signer(path: str | Path) -> Signer:
    """An Ed25519 signing key: loaded if present, else generated and written 0600.

    Two processes starting together (a device's agent and its --show-public-key) end with
    the same key: the one that loses the exclusive create loads the winner's.
    """
    if not Path(path).exists():
        try:
            return create_signer(path, exclusive=True)
        except FileExistsError:
            pass
    return load_signer(path)
