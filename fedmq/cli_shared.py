"""What several ``fedmq`` commands share: SIGTERM as a clean stop, a node's public key."""

from __future__ import annotations

import signal
from typing import Any


def stop_on_sigterm(stop: Any) -> None:
    """SIGTERM (systemctl stop, docker stop) calls the service's ``stop`` instead of killing it."""
    def handler(_sig: int, _frame: Any) -> None:
        stop()
    signal.signal(signal.SIGTERM, handler)


def show_public_key(key_file: str, node_id: str, *, csv: bool) -> int:
    """Print the Ed25519 public key (made on first use) of an agent or a relay; with
    ``csv`` the ``id,public_key`` line `fedmq enroll --from-file` (or enroll-relay) reads."""
    from fedmq.runtime.files import load_or_create_signer

    public_hex = load_or_create_signer(key_file).public_hex
    print(f"{node_id},{public_hex}" if csv else public_hex)
    return 0
