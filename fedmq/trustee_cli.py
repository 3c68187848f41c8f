"""``fedmq trustee`` (a key-share holder) and ``fedmq trustee enroll`` (its own allow-list)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_trustee(args: argparse.Namespace) -> int:
    from fedmq.trustee.config import TrusteeConfig

    config = TrusteeConfig.from_file(args.config)
    if args.what == "enroll":
        return _enroll(args, config.allow_list_file)
    from fedmq.cli_shared import stop_on_sigterm
    from fedmq.trustee.service import Trustee

    trustee = Trustee(config)
    stop_on_sigterm(trustee.stop)
    trustee.run()
    return 0


def _enroll(args: argparse.Namespace, allow_list: str) -> int:
    from fedmq.aggregator.allowlist import enroll_relay, revoke
    from fedmq.cli_shared import enroll_and_say, key_pairs
    from fedmq.protocol.errors import ConfigError

    if args.revoke:
        if not args.agent:
            raise ConfigError("trustee enroll --revoke needs --agent ID")
        changed = revoke(allow_list, args.agent)
        print(f"{args.agent} {'revoked' if changed else 'was not enrolled'} ({allow_list})")
        return 0
    if args.relay:
        if not args.public_key:
            raise ConfigError("trustee enroll --relay ID needs --public-key HEX")
        devices = args.devices.replace(",", " ").split() if args.devices else None
        changed = enroll_relay(allow_list, args.relay, args.public_key, devices)
        print(f"relay {args.relay} {'enrolled' if changed else 'already enrolled'} in "
              f"{allow_list}")
        return 0
    pairs = key_pairs(args, "trustee enroll", "trustee enroll needs --from-file keys.csv (the "
                      "id,public_key lines the devices print), --agent ID --public-key HEX, "
                      "or --relay ID --public-key HEX")
    enroll_and_say(allow_list, pairs)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("trustee", help="hold one share of the fleet's key: decrypt only sums "
                       "of devices on its own allow-list (or: trustee enroll)")
    p.add_argument("what", nargs="?", choices=["run", "enroll"], default="run",
                   help="run (default), or enroll devices/relays in its own allow-list")
    p.add_argument("--config", default="trustee.toml", help="trustee TOML config")
    g = p.add_argument_group("trustee enroll")
    g.add_argument("--from-file", metavar="keys.csv", help="id,public_key lines, as the "
                   "devices print them (fedmq agent --show-public-key --csv)")
    g.add_argument("--agent", metavar="ID", help="one device id")
    g.add_argument("--public-key", metavar="HEX", help="its (or the relay's) Ed25519 key")
    g.add_argument("--relay", metavar="ID", help="enroll a relay instead of a device")
    g.add_argument("--devices", metavar="ID,ID,...", help="with --relay: the devices it serves")
    g.add_argument("--revoke", action="store_true", help="with --agent: remove the device")
    p.set_defaults(func=cmd_trustee)
