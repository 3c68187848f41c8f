"""``fedmq broker``: run the embedded broker in the foreground, manage its password file,
or write a Mosquitto configuration for a fleet."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

from fedmq.broker.acl import FleetAcl
from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import serve
from fedmq.broker.mosquitto import MosquittoSetup, write_files
from fedmq.broker.passwords import add_user
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics

log = logging.getLogger(__name__)
__all__ = ["add_user", "mosquitto_config", "run_broker"]  # add_user: broker.passwords


def load_settings(path: str | Path) -> BrokerSettings:
    """broker.toml -> settings; every path in it is relative to the file."""
    return BrokerSettings.from_file(path)


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


def read_agents_file(path: str) -> list[str]:
    """Agent ids, one a line; blank lines and ``#`` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read agents file {path}: {exc}") from exc
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def mosquitto_config(out_dir: str | None, fleet: str | None, *, prefix: str = "fedmq",
                     aggregator_users: Sequence[str] = ("aggregator",),
                     agents: Sequence[str] = (), agents_file: str | None = None,
                     trustee_users: Sequence[str] = (),
                     dashboard_users: Sequence[str] = (),
                     host: str = "0.0.0.0", port: int | None = None,
                     max_payload_bytes: int | None = None,
                     memory_limit_bytes: int | None = None, tls_cert: str | None = None,
                     tls_key: str | None = None, tls_client_ca: str | None = None,
                     max_connections: int | None = None) -> str:
    """Write a Mosquitto configuration for one fleet; return what to tell the operator."""
    if not out_dir or not fleet:
        raise ConfigError("mosquitto-config needs --out DIR and --fleet NAME")
    ids = [*agents, *(read_agents_file(agents_file) if agents_file else [])]
    acl = FleetAcl(Topics(fleet, prefix), tuple(aggregator_users), tuple(ids),
                   tuple(trustee_users), tuple(dashboard_users))
    extra = {k: v for k, v in (("max_payload_bytes", max_payload_bytes),
                               ("memory_limit_bytes", memory_limit_bytes),
                               ("max_connections", max_connections)) if v is not None}
    setup = MosquittoSetup(acl=acl, host=host, port=port, tls_cert_file=tls_cert,
                           tls_key_file=tls_key, tls_client_ca_file=tls_client_ca, **extra)
    written = write_files(Path(out_dir), setup)
    lines = [f"wrote {written.conf} with its password and ACL files "
             f"({len(setup.users())} users, listener {setup.host}:{setup.listen_port})",
             f"passwords: {written.credentials} (mode 0600); put each into its device's "
             f"[mqtt] password"]
    if written.new_users:
        lines.append(f"new users: {', '.join(written.new_users)}")
    if written.dropped_users:
        lines.append(f"removed users: {', '.join(written.dropped_users)}")
    lines.append(f"run: mosquitto -c {written.conf}  (started as root, Mosquitto reads the "
                 f"password file as user 'mosquitto': chown it to that user)")
    return "\n".join(lines)
