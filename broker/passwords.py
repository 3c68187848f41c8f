"""The embedded broker's password file: ``user:argon2-hash`` lines (what amqtt verifies).

Every change is a read-modify-write under a file lock and an atomic rename, so
parallel ``fedmq broker add-user`` calls keep every user (the issue saw 9 of 10).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import check_name
from fedmq.runtime.files import write_atomic
from fedmq.runtime.locks import locked

MIN_PASSWORD = 8


def new_password() -> str:
    """A random password: 24 URL-safe characters, 144 bits."""
    return secrets.token_urlsafe(18)


def _hash(password: str) -> str:
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    return PasswordHash((Argon2Hasher(),)).hash(password)


def add_users(password_file: str | Path, users: Mapping[str, str]) -> None:
    """Add or replace each ``user: password`` with an Argon2 hash, in one locked write."""
    for username, password in users.items():
        check_name(username, "user name")
        if len(password) < MIN_PASSWORD:
            raise ConfigError(f"the password of {username!r} is shorter than {MIN_PASSWORD} "
                              f"characters")
    # Hash before taking the lock: Argon2 is slow on purpose, the lock should be short.
    hashed = {user: _hash(password) for user, password in users.items()}
    path = Path(password_file)
    with locked(path):
        lines = []
        if path.exists():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read password file {path}: {exc}") from None
            lines = [ln for ln in text.splitlines() if ln.split(":", 1)[0] not in hashed]
        lines += [f"{user}:{h}" for user, h in hashed.items()]
        write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"), private=True)


def add_user(password_file: str | Path, username: str, password: str) -> None:
    """Add or replace ``username`` with an Argon2 hash."""
    add_users(password_file, {username: password})
