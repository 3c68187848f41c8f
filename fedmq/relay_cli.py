"""``fedmq relay`` (an intermediate gateway, no private key) and ``fedmq enroll-relay``."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_relay(args: argparse.Namespace) -> int:
    from fedmq.cli_shared import show_public_key, stop_on_sigterm
    from fedmq.relay.config import RelayConfig
    from fedmq.relay.service import Relay

    config = RelayConfig.from_file(args.config)
    if args.show_public_key:
        return show_public_key(config.signing_key_file, config.relay_id, csv=args.csv)
    relay = Relay(config)

    stop_on_sigterm(relay.stop)
    relay.run()
    return 0


def cmd_enroll_relay(args: argparse.Namespace) -> int:
    from fedmq.aggregator.allowlist import enroll_relay
    from fedmq.aggregator.config import AggregatorConfig
    from fedmq.protocol.errors import ConfigError

    config = AggregatorConfig.from_file(args.config)
    if args.from_file:
        if args.relay or args.public_key:
            raise ConfigError("enroll-relay: use --from-file or --relay/--public-key, not both")
        try:
            with open(args.from_file, encoding="utf-8") as fh:
                text = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {args.from_file}: {exc}") from None
        relay_id, _, public_hex = text.partition(",")
    elif args.relay and args.public_key:
        relay_id, public_hex = args.relay, args.public_key
    else:
        raise ConfigError("enroll-relay needs --relay ID --public-key HEX or --from-file "
                          "relay.csv (on the relay: fedmq relay --config relay.toml "
                          "--show-public-key --csv)")
    devices = _devices(args)
    changed = enroll_relay(config.allow_list_file, relay_id.strip(), public_hex.strip(),
                           devices, clear_devices=args.clear_devices)
    serves = "" if devices is None else f", serving {len(devices)} device(s)"
    print(f"relay {relay_id} {'enrolled' if changed else 'already enrolled'} in "
          f"{config.allow_list_file}{serves}")
    return 0


def _devices(args: argparse.Namespace) -> list[str] | None:
    """The assignment --devices or --devices-file gives (ids split on commas, blanks and
    lines; # comments), or None: keep the relay's assignment as it is."""
    from fedmq.protocol.errors import ConfigError

    given = [o for o in ("--devices", "--devices-file", "--clear-devices")
             if getattr(args, o[2:].replace("-", "_")) not in (None, False)]
    if len(given) > 1:
        raise ConfigError(f"enroll-relay: {' and '.join(given)} exclude each other")
    if args.devices is not None:
        text, source = args.devices, "--devices"
    elif args.devices_file is not None:
        try:
            with open(args.devices_file, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {args.devices_file}: {exc}") from None
        source = args.devices_file
    else:
        return None
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    devices = [d for line in lines for d in line.replace(",", " ").split()]
    if not devices:
        raise ConfigError(f"enroll-relay: {source} names no device")
    return devices


def register(sub: Any) -> None:
    p = sub.add_parser("relay", help="run an intermediate gateway: sums its devices' updates "
                       "under encryption and forwards one signed partial sum upstream")
    p.add_argument("--config", default="configs/relay.toml", help="relay TOML config")
    p.add_argument("--show-public-key", action="store_true",
                   help="print the relay's signing key (created if missing) and exit")
    p.add_argument("--csv", action="store_true",
                   help="with --show-public-key: print id,public_key for enroll-relay")
    p.set_defaults(func=cmd_relay)
    p = sub.add_parser("enroll-relay", help="allow a relay's signing key (top gateway)")
    p.add_argument("--config", default="configs/aggregator.toml",
                   help="the top aggregator's TOML config (its allow_list_file)")
    p.add_argument("--relay", help="relay id")
    p.add_argument("--public-key", help="the relay's Ed25519 public key (hex)")
    p.add_argument("--from-file", help="a file with one id,public_key line")
    p.add_argument("--devices", help="the device ids it serves, comma-separated: the top "
                   "aggregator then refuses its partial sums naming any other device")
    p.add_argument("--devices-file", help="as --devices, from a file (ids on lines or "
                   "comma-separated, # comments)")
    p.add_argument("--clear-devices", action="store_true",
                   help="drop its device assignment (without --devices the one it has is kept)")
    p.set_defaults(func=cmd_enroll_relay)
