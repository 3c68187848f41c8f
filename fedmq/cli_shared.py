"""What several ``fedmq`` commands share: SIGTERM as a clean stop, a node's public key,
enrolling devices from --from-file or --agent/--public-key."""

from __future__ import annotations

import argparse
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


def key_pairs(args: argparse.Namespace, command: str, needs: str) -> list[tuple[str, str]]:
    """The (id, public key) pairs ``--from-file`` (every line checked before anything is
    written) or ``--agent``/``--public-key`` give; ``needs``: the line when neither does."""
    from fedmq.aggregator.allowlist import read_key_file
    from fedmq.protocol.errors import ConfigError

    if args.from_file:
        if args.agent or args.public_key:
            raise ConfigError(f"{command}: use --from-file or --agent/--public-key, not both")
        return read_key_file(args.from_file)
    if args.agent and args.public_key:
        return [(args.agent, args.public_key)]
    raise ConfigError(needs)


def enroll_and_say(allow_list: str, pairs: list[tuple[str, str]]) -> None:
    from fedmq.aggregator.allowlist import enroll_many

    new = set(enroll_many(allow_list, pairs))
    for agent_id, _key in pairs:
        print(f"{agent_id} {'enrolled' if agent_id in new else 'already enrolled'} in "
              f"{allow_list}")
