"""``fedmq`` command line. The gateway's commands are in fedmq.gateway_cli, the
simulation's in fedmq.simulate_cli, models' in fedmq.model_cli, provisioning in
fedmq.provision, the relay's in fedmq.relay_cli and each benchmark in its own module.

Every expected failure (bad config, missing file, unreachable broker) ends in
one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fedmq import extras
from fedmq.cli_shared import show_public_key, stop_on_sigterm
from fedmq.protocol.errors import FedmqError
from fedmq.runtime import __version__

EXIT_ERROR = 2


def _setup_logging(verbosity: int, *, quiet_default: bool = False) -> None:
    level = logging.INFO if verbosity == 0 else logging.DEBUG
    if quiet_default and verbosity == 0:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    # The simulation prints its own progress; amqtt's shutdown chatter is noise there.
    logging.getLogger("amqtt").setLevel(logging.ERROR if quiet_default else logging.WARNING)


def cmd_agent(args: argparse.Namespace) -> int:
    # phe's package imports its command-line tool, and that imports click wherever click
    # is installed (a development venv; not a device): ~1 MB of RSS the agent never uses.
    sys.modules.setdefault("phe.command_line", None)  # type: ignore[arg-type]
    from fedmq.edge_agent.agent import EdgeAgent
    from fedmq.edge_agent.config import AgentConfig

    config = AgentConfig.from_file(args.config)
    if args.show_public_key:
        return show_public_key(config.signing_key_path, config.agent_id, csv=args.csv)
    agent = EdgeAgent(config)
    stop_on_sigterm(agent.stop)
    agent.run()
    return 1 if agent.run_failed and config.exit_when_finished else 0  # it logged why


# Benchmarks: name -> (the line `fedmq --help` shows, the module whose register() adds it).
BENCHES = {
    "bench": ("benchmark encrypted updates: packed vs per-value codec", "fedmq.benchmarks.crypto"),
    "bench-flood": ("aggregator memory and round times while an agent floods it with 4 MiB "
                    "payloads (real processes)", "fedmq.benchmarks.flood"),
    "bench-noniid": ("non-IID fleets (label, feature and quantity skew): FedAvg, server "
                     "optimizers, FedProx, personal models against centralized, in rounds "
                     "to target", "fedmq.benchmarks.noniid"),
    "bench-realdata": ("real data sets, non-IID over devices, through the real CLI, against "
                       "centralized scikit-learn", "fedmq.benchmarks.realdata"),
    "bench-scale": ("fleet size against broker: seconds per round, peak memory, dropped "
                    "deliveries", "fedmq.benchmarks.scale"),
    "bench-flower": ("the same task in Flower (plaintext FedAvg, gRPC) and fedmq (encrypted, "
                     "MQTT): round time, bytes, CPU, accuracy", "fedmq.benchmarks.flower"),
    "bench-inbound": ("aggregator inbound path: seconds per stage for one round of N updates",
                      "fedmq.benchmarks.inbound"),
    "bench-round": ("one round of N devices (default 10,000) on real MQTT: pre-signed updates "
                    "from one connection per device, round time, memory, dropped deliveries",
                    "fedmq.benchmarks.fleet_round"),
    "bench-privacy": ("privacy-utility table: accuracy at epsilon 1, 3, 8 and without DP, "
                      "synthetic fleet and a real data set", "fedmq.benchmarks.privacy"),
    "bench-relay": ("the same fleet behind one gateway and behind two relays: round times, "
                    "bytes upstream, memory, exact equality", "fedmq.benchmarks.relay"),
    "bench-storm": ("embedded broker memory before, during and after a storm of idle and "
                    "half-open TLS connections", "fedmq.benchmarks.storm"),
    "bench-ingest": ("one agent storing 100 sensor readings/s from MQTT while rounds run: its "
                     "peak RSS against the 60 MB budget and a CSV agent's",
                     "fedmq.benchmarks.ingest"),
    "bench-trustees": ("threshold decryption's cost per round: trustees' and aggregator's CPU, "
                       "messages, key generation", "fedmq.benchmarks.trustees"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI; ``command``: the subcommand about to run (a benchmark's arguments
    are only built when it is that one)."""
    parser = argparse.ArgumentParser(
        prog="fedmq", description="Federated learning for IoT fleets over MQTT, with "
        "Paillier-encrypted model updates.")
    parser.add_argument("--version", action="version", version=f"fedmq {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command == "agent":
        # The device's command builds only its own parser: the other commands' modules
        # (simulation, gateway, dashboard, trustees) are ~1.4 MB of a 60 MB RSS budget.
        _add_agent(sub)
    else:
        _add_all(sub, command)
    for each in sub.choices.values():  # `fedmq agent --config x -v` too, not only `fedmq -v`
        each.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                             help="more log output")
    return parser


def _add_agent(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run an edge agent (device)",
                       description="Train on local CSV data each round and publish encrypted "
                       "updates. Raw data never leaves the device.")
    p.add_argument("--config", default="configs/agent.toml", help="agent TOML config")
    p.add_argument("--show-public-key", action="store_true",
                   help="print this agent's Ed25519 public key (created if missing) and exit; "
                   "enroll it on the gateway")
    p.add_argument("--csv", action="store_true",
                   help="with --show-public-key: print id,public_key for fedmq enroll --from-file")
    p.set_defaults(func=cmd_agent)


def _add_all(sub: argparse._SubParsersAction[argparse.ArgumentParser], command: str | None
             ) -> None:
    from fedmq import (
        dashboard_cli,
        gateway_cli,
        model_cli,
        provision,
        relay_cli,
        simulate_cli,
        trustee_cli,
    )

    gateway_cli.register(sub)  # broker, aggregator, enroll
    _add_agent(sub)
    simulate_cli.register(sub)  # simulate, sample-data
    model_cli.register(sub)  # export, evaluate, predict
    provision.register(sub)  # init gateway, init device
    relay_cli.register(sub)  # relay, enroll-relay
    trustee_cli.register(sub)  # trustee, trustee enroll
    dashboard_cli.register(sub)  # dashboard, status
    for name, (help_text, module) in BENCHES.items():
        # A benchmark's module imports half the gateway (~4 MB of a device's RSS): its
        # arguments are built only when it is the command; otherwise only its help line.
        if name == command:
            importlib.import_module(module).register(sub, help_text)
        else:
            sub.add_parser(name, help=help_text)


def _command(argv: Sequence[str] | None) -> str | None:
    """The subcommand named in ``argv`` (the first word not an option), if any."""
    words = sys.argv[1:] if argv is None else argv
    return next((w for w in words if not w.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(_command(argv)).parse_args(argv)
    # simulate prints its own progress, status its answer: their INFO lines are noise.
    _setup_logging(args.verbose, quiet_default=args.command in ("simulate", "status"))
    if args.command == "broker" and args.action == "add-user" and not (
            args.password_file and args.username):
        print("fedmq: error: add-user needs --password-file and --username", file=sys.stderr)
        return EXIT_ERROR
    try:
        extras.check(args.command, getattr(args, "action", None))
        return int(args.func(args))
    except ModuleNotFoundError as exc:  # an optional dependency (extra) not installed here
        missing = extras.explain(args.command, exc)
        if missing is None:
            raise
        print(f"fedmq: error: {missing}", file=sys.stderr)
        return EXIT_ERROR
    except FedmqError as exc:
        print(f"fedmq: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fedmq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
