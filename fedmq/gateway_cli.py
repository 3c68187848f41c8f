"""``fedmq broker``, ``fedmq aggregator`` and ``fedmq enroll``: the gateway's commands."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import sys
from pathlib import Path
from typing import Any

from fedmq.cli_shared import stop_on_sigterm
from fedmq.protocol.errors import ConfigError

log = logging.getLogger("fedmq")


def cmd_broker(args: argparse.Namespace) -> int:
    from fedmq.broker.cli import add_user, mosquitto_config, run_broker

    if args.action == "add-user":
        return _add_user(args, add_user)
    if args.action == "mosquitto-config":
        print(mosquitto_config(
            args.out, args.fleet, prefix=args.prefix,
            aggregator_users=args.aggregator_user or ["aggregator"], agents=args.agent,
            agents_file=args.agents_file, host=args.host, port=args.port,
            max_payload_bytes=args.max_payload_bytes,
            memory_limit_bytes=args.memory_limit_bytes, tls_cert=args.tls_cert,
            tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
            trustee_users=args.trustee, dashboard_users=args.dashboard,
            max_connections=args.max_connections))
        return 0
    return run_broker(args.config)


def _add_user(args: argparse.Namespace, add_user: Any) -> int:
    from fedmq.broker.passwords import new_password
    from fedmq.runtime.files import write_text_atomic

    if args.generate:
        password = new_password()
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.username}: ")
    else:
        raise ConfigError("add-user: no terminal to ask for the password: pass "
                          "--password-stdin (and pipe it in) or --generate")
    add_user(Path(args.password_file), args.username, password)
    print(f"user {args.username!r} written to {args.password_file}")
    if args.generate and args.password_out:
        write_text_atomic(args.password_out, password + "\n", private=True)
        print(f"its password is in {args.password_out} (mode 0600): the [mqtt] password_file")
    elif args.generate:
        print(f"password (shown once): {password}")
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from fedmq.aggregator.allowlist import revoke
    from fedmq.aggregator.config import AggregatorConfig
    from fedmq.aggregator.keys import load_aggregator_keys
    from fedmq.cli_shared import enroll_and_say, key_pairs
    from fedmq.protocol.crypto.paillier import fingerprint

    config = AggregatorConfig.from_file(args.config)
    if args.revoke:
        if not args.agent:
            raise ConfigError("enroll --revoke needs --agent ID")
        changed = revoke(config.allow_list_file, args.agent)
        print(f"{args.agent} {'revoked' if changed else 'was not enrolled'} "
              f"({config.allow_list_file})")
        return 0
    pairs = key_pairs(args, "enroll", "enroll needs --agent ID --public-key HEX or --from-file "
                      "keys.csv (on the device: fedmq agent --config agent.toml "
                      "--show-public-key --csv)")
    # Keys first: a lost key must stop us before the allow-list changes.
    (public, _), signer = load_aggregator_keys(config, new_keys=args.new_keys)
    enroll_and_say(config.allow_list_file, pairs)
    print("pin these in the agent's config:\n[fleet]\n"
          f'key_fingerprint = "{fingerprint(public)}"\n'
          f'aggregator_signing_key = "{signer.public_hex}"')
    return 0


def cmd_aggregator(args: argparse.Namespace) -> int:
    from fedmq.aggregator.config import AggregatorConfig
    from fedmq.aggregator.keys import load_aggregator_keys
    from fedmq.aggregator.service import Aggregator

    config = AggregatorConfig.from_file(args.config)
    keypair, signer = load_aggregator_keys(config, new_keys=args.new_keys)
    view = None
    if config.metrics_port and not args.show_fingerprint:
        from fedmq.dashboard.view import FleetView

        # The aggregator's own messages, folded as a dashboard folds them from the broker.
        view = FleetView.for_fleet(config.topics, signer.public_hex, connected=True)
    aggregator = Aggregator(config, keypair=keypair, signer=signer,
                            tap=None if view is None else view.observe)
    if args.show_fingerprint:
        print(aggregator.fingerprint)
        return 0
    log.info("pin in every agent config: [fleet] key_fingerprint = %s, aggregator_signing_key "
             "= %s", aggregator.fingerprint, aggregator.signer.public_hex)
    stop_on_sigterm(aggregator.stop)
    with contextlib.ExitStack() as stack:
        if view is not None:
            from fedmq.dashboard.server import DashboardServer

            folded = view
            server = DashboardServer(
                lambda: {**folded.state(), "connected": aggregator.connected},
                bind=config.metrics_bind, port=config.metrics_port).start()
            stack.callback(server.close)
            log.info("metrics of this aggregator on %smetrics (the page: %s)", server.url,
                     server.url)
        aggregator.run()
    if aggregator.ended == "stopped":
        log.warning("stopped before the broker answered: no round was run")
    elif aggregator.ended == "between runs":
        log.info("stopped between runs; the next start keeps the schedule (%s)",
                 config.schedule.describe())
    elif aggregator.ended == "budget":
        log.info("run ended after %d of %d rounds (the privacy budget); final model in %s",
                 len(aggregator.results), config.policy.rounds, aggregator.store.model_path)
    else:
        log.info("all %d rounds done; final model in %s", config.policy.rounds,
                 aggregator.store.model_path)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="run the embedded MQTT broker (gateway)",
                       description="Run the embedded amqtt broker, manage its password file, "
                       "or write the configuration of a Mosquitto 2.x broker for a fleet.")
    p.add_argument("action", nargs="?", choices=["run", "add-user", "mosquitto-config"],
                   default="run")
    p.add_argument("--config", default="configs/broker.toml", help="broker TOML config")
    p.add_argument("--password-file", help="password file for add-user")
    p.add_argument("--username", help="user name for add-user")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--generate", action="store_true",
                   help="add-user: make a random password and print it once (or --password-out)")
    p.add_argument("--password-out", metavar="FILE",
                   help="with --generate: write the password to FILE (mode 0600) instead")
    g = p.add_argument_group(
        "mosquitto-config", "write mosquitto.conf, passwords, acl and credentials.txt "
        "(generated passwords, mode 0600; kept on re-runs) into --out")
    g.add_argument("--out", metavar="DIR", help="output directory")
    g.add_argument("--fleet", metavar="NAME", help="the fleet's [fleet] name")
    g.add_argument("--prefix", default="fedmq", help="topic prefix (default: fedmq)")
    g.add_argument("--aggregator-user", action="append", metavar="USER",
                   help="aggregator user name, repeatable (default: aggregator)")
    g.add_argument("--agent", action="append", default=[], metavar="ID",
                   help="agent id = its MQTT user name, repeatable")
    g.add_argument("--agents-file", metavar="FILE", help="agent ids, one a line")
    g.add_argument("--trustee", action="append", default=[], metavar="NAME",
                   help="trustee user name (fedmq init gateway --trustees), repeatable: it "
                   "reads updates and requests and writes only its own reply topic")
    g.add_argument("--dashboard", action="append", default=[], metavar="NAME",
                   help="read-only dashboard user name (fedmq dashboard), repeatable: it reads "
                   "pubkey, round, metrics, progress and status/+ and publishes nothing")
    g.add_argument("--host", default="0.0.0.0", help="listen address (default: 0.0.0.0)")
    g.add_argument("--port", type=int, help="listen port (default: 1883, 8883 with TLS)")
    g.add_argument("--max-payload-bytes", type=int, metavar="N",
                   help="largest PUBLISH payload (default: 4194304)")
    g.add_argument("--memory-limit-bytes", type=int, metavar="N",
                   help="Mosquitto's heap cap (default: 536870912)")
    g.add_argument("--max-connections", type=int, metavar="N",
                   help="sockets at once, CONNECT done or not (default: no cap; "
                   "miscounted before Mosquitto 2.0.12)")
    g.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM)")
    g.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    g.add_argument("--tls-client-ca", metavar="FILE",
                   help="require client certificates signed by this CA")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("aggregator", help="run the aggregator (gateway, holds the private key)",
                       description="Publish the public key, run rounds, add encrypted updates "
                       "and publish each new global model.")
    p.add_argument("--config", default="configs/aggregator.toml", help="aggregator TOML config")
    p.add_argument("--show-fingerprint", action="store_true",
                   help="create or load the key, print its fingerprint and exit")
    p.add_argument("--new-keys", action="store_true",
                   help="create a missing Paillier or signing key even though run state or "
                   "the other key exists (never needed on first use); every agent must then "
                   "re-pin key_fingerprint and aggregator_signing_key")
    p.set_defaults(func=cmd_aggregator)

    p = sub.add_parser("enroll", help="allow an agent's signing key (gateway)",
                       description="Add agents' Ed25519 public keys to the aggregator's "
                       "allow-list (or --revoke one) and print the keys the agent must pin.")
    p.add_argument("--config", default="configs/aggregator.toml", help="aggregator TOML config")
    p.add_argument("--agent", help="agent id")
    p.add_argument("--public-key", help="the agent's key: fedmq agent --show-public-key")
    p.add_argument("--from-file", metavar="CSV",
                   help="enroll many agents: id,public_key lines (fedmq agent --show-public-key "
                   "--csv prints one); nothing is written if any line is bad")
    p.add_argument("--revoke", action="store_true", help="remove the agent from the allow-list")
    p.add_argument("--new-keys", action="store_true",
                   help="create a missing Paillier or signing key even though run state or "
                   "the other key exists (never needed on first use); every agent must then "
                   "re-pin key_fingerprint and aggregator_signing_key")
    p.set_defaults(func=cmd_enroll)
