"""``fedmq`` command line: broker, aggregator, agent, simulate, bench, sample-data.

Every expected failure (bad config, missing file, unreachable broker) ends in
one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmq import extras
from fedmq.simulate_cli import add_scale_arguments
from fedmq.simulate_privacy import add_privacy_arguments
from protocol.errors import ConfigError, FedmqError
from runtime import __version__

EXIT_ERROR = 2

log = logging.getLogger("fedmq")


def _setup_logging(verbosity: int, *, quiet_default: bool = False) -> None:
    level = logging.INFO if verbosity == 0 else logging.DEBUG
    if quiet_default and verbosity == 0:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    # The simulation prints its own progress; amqtt's shutdown chatter is noise there.
    logging.getLogger("amqtt").setLevel(logging.ERROR if quiet_default else logging.WARNING)


def _stop_on_sigterm(stop: Any) -> None:
    def handler(_sig: int, _frame: Any) -> None:
        stop()
    signal.signal(signal.SIGTERM, handler)


def cmd_broker(args: argparse.Namespace) -> int:
    from broker.cli import add_user, mosquitto_config, run_broker

    if args.action == "add-user":
        return _add_user(args, add_user)
    if args.action == "mosquitto-config":
        print(mosquitto_config(
            args.out, args.fleet, prefix=args.prefix,
            aggregator_users=args.aggregator_user or ["aggregator"], agents=args.agent,
            agents_file=args.agents_file, host=args.host, port=args.port,
            max_payload_bytes=args.max_payload_bytes,
            memory_limit_bytes=args.memory_limit_bytes, tls_cert=args.tls_cert,
            tls_key=args.tls_key, tls_client_ca=args.tls_client_ca))
        return 0
    return run_broker(args.config)


def _add_user(args: argparse.Namespace, add_user: Any) -> int:
    from broker.passwords import new_password
    from runtime.files import write_text_atomic

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
    from aggregator.allowlist import enroll_many, read_key_file, revoke
    from aggregator.config import AggregatorConfig
    from aggregator.keys import load_aggregator_keys
    from protocol.paillier import fingerprint

    config = AggregatorConfig.from_file(args.config)
    if args.revoke:
        if not args.agent:
            raise ConfigError("enroll --revoke needs --agent ID")
        changed = revoke(config.allow_list_file, args.agent)
        print(f"{args.agent} {'revoked' if changed else 'was not enrolled'} "
              f"({config.allow_list_file})")
        return 0
    if args.from_file:
        if args.agent or args.public_key:
            raise ConfigError("enroll: use --from-file or --agent/--public-key, not both")
        pairs = read_key_file(args.from_file)  # every line checked before anything is written
    elif args.agent and args.public_key:
        pairs = [(args.agent, args.public_key)]
    else:
        raise ConfigError("enroll needs --agent ID --public-key HEX or --from-file keys.csv "
                          "(on the device: fedmq agent --config agent.toml --show-public-key "
                          "--csv)")
    # Keys first: a lost key must stop us before the allow-list changes.
    (public, _), signer = load_aggregator_keys(config, new_keys=args.new_keys)
    new = set(enroll_many(config.allow_list_file, pairs))
    for agent_id, _key in pairs:
        print(f"{agent_id} {'enrolled' if agent_id in new else 'already enrolled'} in "
              f"{config.allow_list_file}")
    print("pin these in the agent's config:\n[fleet]\n"
          f'key_fingerprint = "{fingerprint(public)}"\n'
          f'aggregator_signing_key = "{signer.public_hex}"')
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.crypto import BenchOptions, run
    from benchmarks.report import check_targets, tables, write_json

    if args.quick:
        args.bits, args.dims, args.agents, args.baseline_max = [1024], [100, 1000], [10, 100], 200
    if min(args.bits) < 1024 or min(args.dims) < 1 or min(args.agents) < 1:
        raise ConfigError("bench needs --bits >= 1024, --dims >= 1 and --agents >= 1")
    results = run(BenchOptions(
        bits=args.bits, dims=args.dims, agents=args.agents, baseline_max=args.baseline_max,
        repeats=args.repeats, progress=lambda msg: print(msg, file=sys.stderr, flush=True)))
    print(tables(results))
    checks = check_targets(results)
    if checks:
        print("\nTargets at 2048 bits, d = 1000:")
    for name, met, measured in checks:
        print(f"  [{'met ' if met else 'MISS'}] {name}: {measured}")
    write_json(results, Path(args.json))
    print(f"\nresults written to {args.json}")
    return 0


def cmd_aggregator(args: argparse.Namespace) -> int:
    from aggregator.config import AggregatorConfig
    from aggregator.keys import load_aggregator_keys
    from aggregator.service import Aggregator

    config = AggregatorConfig.from_file(args.config)
    keypair, signer = load_aggregator_keys(config, new_keys=args.new_keys)
    aggregator = Aggregator(config, keypair=keypair, signer=signer)
    if args.show_fingerprint:
        print(aggregator.fingerprint)
        return 0
    log.info("pin in every agent config: [fleet] key_fingerprint = %s, aggregator_signing_key "
             "= %s", aggregator.fingerprint, aggregator.signer.public_hex)
    _stop_on_sigterm(aggregator.stop)
    aggregator.run()
    if aggregator.ended == "stopped":
        log.warning("stopped before the broker answered: no round was run")
    elif aggregator.ended == "budget":
        log.info("run ended after %d of %d rounds (the privacy budget); final model in %s",
                 len(aggregator.results), config.policy.rounds, aggregator.store.model_path)
    else:
        log.info("all %d rounds done; final model in %s", config.policy.rounds,
                 aggregator.store.model_path)
    return 0


def show_public_key(key_file: str, node_id: str, *, csv: bool) -> int:
    """Print the Ed25519 public key (made on first use) of an agent or a relay; with
    ``csv`` the ``id,public_key`` line `fedmq enroll --from-file` (or enroll-relay) reads."""
    from runtime.files import load_or_create_signer

    public_hex = load_or_create_signer(key_file).public_hex
    print(f"{node_id},{public_hex}" if csv else public_hex)
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from edge_agent.agent import EdgeAgent
    from edge_agent.config import AgentConfig

    config = AgentConfig.from_file(args.config)
    if args.show_public_key:
        return show_public_key(config.signing_key_path, config.agent_id, csv=args.csv)
    agent = EdgeAgent(config)
    _stop_on_sigterm(agent.stop)
    agent.run()
    return 1 if agent.run_failed and config.exit_when_finished else 0  # it logged why


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedmq.simulate import Simulation, options_from
    from fedmq.simulate_cli import interrupt_on_sigterm, scale_overrides
    from fedmq.simulate_privacy import privacy_overrides

    interrupt_on_sigterm()
    overrides = {
        "agents": args.agents, "rounds": args.rounds, "iid": args.iid or None,
        "task": args.task, "samples_per_device": args.samples, "key_bits": args.key_bits,
        "epochs": args.epochs, "learning_rate": args.lr, "round_timeout": args.round_timeout,
        "quorum_fraction": args.quorum, "kill": args.kill,
        "kill_after_round": args.kill_after_round, "seed": args.seed, "out_dir": args.out,
        "plot": False if args.no_plot else None, "reuse_key": args.reuse_key or None,
        "scaling": args.scaling, **scale_overrides(args), **privacy_overrides(args),
    }
    opts = options_from(args.config, {k: v for k, v in overrides.items() if v is not None})
    report = Simulation(opts).run()
    gap = (f"{100 * report.gap:+.2f} pp" if report.metric == "accuracy"
           else f"{report.gap:+.4f}")
    print(f"final {report.metric}: federated {report.federated_score:.4f} | centralized "
          f"sklearn {report.central_score:.4f} | gap {gap}")
    where = report.latest or report.out_dir  # latest names this run's directory
    print(f"metrics: {where / 'metrics.csv'}"
          + (f", plot: {where / 'metrics.png'}" if opts.plot else "")
          + f" (run {report.run_id} in {report.out_dir})")
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from fedmq import synthetic

    try:
        spec = synthetic.FleetSpec(n_devices=args.devices, samples_per_device=args.samples,
                                   iid=args.iid, seed=args.seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    for path in synthetic.write_fleet(spec, args.out):
        print(path)
    return 0


# Benchmarks: name -> (the line `fedmq --help` shows, the module whose register() adds it).
BENCHES = {
    "bench-flood": ("aggregator memory and round times while an agent floods it with 4 MiB "
                    "payloads (real processes)", "benchmarks.flood"),
    "bench-realdata": ("real data sets, non-IID over devices, through the real CLI, against "
                       "centralized scikit-learn", "benchmarks.realdata"),
    "bench-scale": ("fleet size against broker: seconds per round, peak memory, dropped "
                    "deliveries", "benchmarks.scale"),
    "bench-flower": ("the same task in Flower (plaintext FedAvg, gRPC) and fedmq (encrypted, "
                     "MQTT): round time, bytes, CPU, accuracy", "benchmarks.flower"),
    "bench-inbound": ("aggregator inbound path: seconds per stage for one round of N updates",
                      "benchmarks.inbound"),
    "bench-privacy": ("privacy-utility table: accuracy at epsilon 1, 3, 8 and without DP, "
                      "synthetic fleet and a real data set", "benchmarks.privacy"),
    "bench-relay": ("the same fleet behind one gateway and behind two relays: round times, "
                    "bytes upstream, memory, exact equality", "benchmarks.relay"),
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
    g.add_argument("--host", default="0.0.0.0", help="listen address (default: 0.0.0.0)")
    g.add_argument("--port", type=int, help="listen port (default: 1883, 8883 with TLS)")
    g.add_argument("--max-payload-bytes", type=int, metavar="N",
                   help="largest PUBLISH payload (default: 4194304)")
    g.add_argument("--memory-limit-bytes", type=int, metavar="N",
                   help="Mosquitto's heap cap (default: 536870912)")
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

    p = sub.add_parser("simulate", help="simulate a whole fleet on this machine",
                       description="Start the embedded broker on a free port, the aggregator "
                       "and N agents with synthetic sensor data; print progress per round and "
                       "compare with a centralized scikit-learn baseline. Flags override "
                       "--config.")
    p.add_argument("--config", help="simulate TOML config ([simulate] table)")
    p.add_argument("--agents", type=int, help="number of agents (default 20)")
    p.add_argument("--rounds", type=int, help="number of rounds (default 10)")
    p.add_argument("--iid", action="store_true", help="IID data instead of non-IID devices")
    p.add_argument("--task", choices=["fault", "fault_type", "next_temperature"],
                   help="what to learn (default: binary fault detection)")
    p.add_argument("--samples", type=int, help="mean samples per device (default 400)")
    p.add_argument("--key-bits", type=int, help="Paillier key size (default 2048)")
    p.add_argument("--epochs", type=int, help="local epochs per round (default 2)")
    p.add_argument("--lr", type=float, help="local learning rate (default 0.1)")
    p.add_argument("--round-timeout", type=float, help="round deadline in seconds (default 20)")
    p.add_argument("--quorum", type=float, help="fraction of agents for quorum (default 0.5)")
    p.add_argument("--kill", type=int, help="agents to kill abruptly during the run")
    p.add_argument("--kill-after-round", type=int, help="kill them after this round (1)")
    p.add_argument("--seed", type=int, help="data and training seed (default 0)")
    p.add_argument("--out", help="parent of the run directories: each run writes data, "
                   "metrics and plot to OUT/<run_id>/, OUT/latest points to it (runs)")
    p.add_argument("--reuse-key", action="store_true", help="reuse the aggregator key of "
                   "OUT/latest instead of making a fresh one (saves key generation)")
    p.add_argument("--no-plot", action="store_true", help="do not write metrics.png")
    p.add_argument("--scaling", choices=["federated", "datasheet"],
                   help="feature center/scale from the statistics round over the devices' "
                   "encrypted sums (federated, default) or the sensors' datasheet values")
    add_scale_arguments(p)
    add_privacy_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("bench", help="benchmark encrypted updates: packed vs per-value codec",
                       description="Measure agent encryption time, bytes on the wire and "
                       "aggregator sum+decrypt for the packed codec with precomputed "
                       "obfuscators against one ciphertext per value, in one run. Prints a "
                       "table, checks the targets and writes JSON.")
    p.add_argument("--bits", type=int, nargs="+", default=[2048, 3072], help="key sizes")
    p.add_argument("--dims", type=int, nargs="+", default=[100, 1000, 10_000],
                   help="model sizes (parameters)")
    p.add_argument("--agents", type=int, nargs="+", default=[10, 100, 1000],
                   help="fleet sizes for the aggregator")
    p.add_argument("--baseline-max", type=int, default=1001,
                   help="per-value baseline: values encrypted for real; beyond, scaled linearly")
    p.add_argument("--repeats", type=int, default=5, help="online-time repetitions (median)")
    p.add_argument("--quick", action="store_true",
                   help="1024-bit key, d=100/1000, 10/100 agents: a smoke run in seconds")
    p.add_argument("--json", default="runs/bench/crypto.json", help="where to write results")
    p.set_defaults(func=cmd_bench)


    p = sub.add_parser("sample-data", help="write synthetic sensor CSV files for devices",
                       description="Write one CSV of synthetic machine sensor readings per "
                       "device, as an agent's [data] path expects.")
    p.add_argument("--devices", type=int, default=3)
    p.add_argument("--samples", type=int, default=400, help="mean readings per device")
    p.add_argument("--iid", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="data", help="output directory (default: data)")
    p.set_defaults(func=cmd_sample_data)
    from fedmq import model_cli, provision, relay_cli

    model_cli.register(sub)  # export, evaluate
    provision.register(sub)  # init gateway, init device
    relay_cli.register(sub)  # relay, enroll-relay
    for name, (help_text, module) in BENCHES.items():
        # A benchmark's module imports half the gateway (~4 MB of a device's RSS): its
        # arguments are built only when it is the command; otherwise only its help line.
        if name == command:
            importlib.import_module(module).register(sub, help_text)
        else:
            sub.add_parser(name, help=help_text)
    for each in sub.choices.values():  # `fedmq agent --config x -v` too, not only `fedmq -v`
        each.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                             help="more log output")
    return parser


def _command(argv: Sequence[str] | None) -> str | None:
    """The subcommand named in ``argv`` (the first word not an option), if any."""
    words = sys.argv[1:] if argv is None else argv
    return next((w for w in words if not w.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(_command(argv)).parse_args(argv)
    _setup_logging(args.verbose, quiet_default=args.command == "simulate")
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
