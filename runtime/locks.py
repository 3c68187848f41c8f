"""An exclusive lock around a read-modify-write of a shared gateway file.

Gateway-only: ``filelock`` comes with the ``gateway`` extra and is imported only
when a lock is taken (a test checks), so a device install never needs it, even
when the CLI's parser imports gateway modules.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedmq.protocol.errors import ConfigError

LOCK_TIMEOUT = 60.0  # seconds; an Argon2 hash per user keeps a batch add-user busy for a while


@contextmanager
def locked(path: str | os.PathLike[str], *, timeout: float = LOCK_TIMEOUT) -> Iterator[Path]:
    """Hold ``<dir>/.<name>.lock`` while the caller reads, changes and rewrites ``path``.

    Without it two ``fedmq enroll`` calls read the same list and the second rename
    drops the first one's entry (the issue saw 7 of 20 entries survive).
    """
    try:
        from filelock import FileLock, Timeout
    except ImportError:
        raise ConfigError("changing a shared gateway file needs the gateway extra: "
                          "pip install 'fedmq[gateway]'") from None
    p = Path(path)
    lock = FileLock(p.with_name(f".{p.name}.lock"), timeout=timeout)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"cannot make the folder {p.parent} for {p}: a file of that name is "
                          "in the way") from None
    except OSError as exc:
        raise ConfigError(f"cannot make the folder {p.parent} for {p}: {exc.strerror}") from None
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{p} is locked by another fedmq command (lock file {lock.lock_file}) "
                          f"for more than {timeout:g} s") from None
    except OSError as exc:  # a folder we may not write in
        raise ConfigError(f"cannot lock {p} (lock file {lock.lock_file}): "
                          f"{exc.strerror or exc}") from None
    try:
        yield p
    finally:
        lock.release()
