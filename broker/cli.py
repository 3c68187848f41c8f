"""``fedmq broker``: run the embedded broker in the foreground; manage its password file."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from broker.config import BrokerSettings
from broker.embedded import serve
from fedmq.config import load_toml, reject_unknown, resolve, section
from protocol.errors import ConfigError
from protocol.topics import check_name

log = logging.getLogger(__name__)


def load_settings(path: str | Path) -> BrokerSettings:
    doc = load_toml(path)
    reject_unknown(doc, {"broker"}, "top level")
    table = dict(section(doc, "broker"))
    base = Path(path).resolve().parent
    for key in ("password_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        table[key] = resolve(base, table.get(key))
    return BrokerSettings.from_dict(table)


def run_broker(config_path: str) -> int:
    settings = load_settings(config_path)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    if settings.allow_anonymous and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("broker on %s accepts anonymous clients: set allow_anonymous = false and a "
                    "password_file on a real network", settings.host)
    asyncio.run(main())
    return 0


def add_user(password_file: Path, username: str, password: str) -> None:
    """Add or replace ``username`` with an Argon2 hash (the format amqtt verifies)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    check_name(username, "user name")
    if len(password) < 8:
        raise ConfigError("passwords must be at least 8 characters")
    hashed = PasswordHash((Argon2Hasher(),)).hash(password)
    lines = []
    if password_file.exists():
        lines = [ln for ln in password_file.read_text().splitlines()
                 if ln.split(":", 1)[0] != username]
    lines.append(f"{username}:{hashed}")
    tmp = password_file.with_name(password_file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, password_file)
