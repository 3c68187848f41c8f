"""``fedmq simulate`` (a whole fleet on this machine) and ``fedmq sample-data``; the
simulation's flags for fleets that scale: workers, broker, connect spread, spare sensor
channels (a wider model)."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from fedmq.protocol.errors import ConfigError
from fedmq.simulation.privacy import add_privacy_arguments


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int,
                   help="worker processes the agents are sharded over (default: the number "
                   "of CPUs; 0: threads of this process)")
    p.add_argument("--broker",
                   help="embedded (fedmq's amqtt broker, default), mosquitto (started on a "
                   "free loopback port with a generated config) or HOST:PORT (running)")
    p.add_argument("--connect-spread", type=float, metavar="SECONDS",
                   help="the agents of each worker first connect over this many seconds "
                   "(default: 5 ms per agent)")
    p.add_argument("--spare-sensors", type=int, metavar="K",
                   help="K extra uninformative sensor channels per device (spare_00..): a "
                   "wider model, d = 5 + K for the fault task (default 0)")


def scale_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in {"workers": args.workers, "broker": args.broker,
                              "connect_spread": args.connect_spread,
                              "spare_sensors": args.spare_sensors}.items() if v is not None}


def interrupt_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: the run's Mosquitto, broker and worker processes are
    stopped by the ``with`` blocks that started them (killed, the run left Mosquitto
    running on its port)."""
    def handler(_sig: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedmq.simulation.privacy import privacy_overrides
    from fedmq.simulation.run import Simulation, options_from

    interrupt_on_sigterm()
    overrides = {
        "agents": args.agents, "rounds": args.rounds, "iid": args.iid or None,
        "task": args.task, "samples_per_device": args.samples, "key_bits": args.key_bits,
        "epochs": args.epochs, "learning_rate": args.lr, "round_timeout": args.round_timeout,
        "server_optimizer": args.server_optimizer, "server_lr": args.server_lr,
        "server_momentum": args.server_momentum,
        "personal": args.personal,
        "prox_mu": args.prox_mu, "augment": args.augment, "distill_weight": args.distill_weight,
        "quorum_fraction": args.quorum, "kill": args.kill,
        "kill_after_round": args.kill_after_round, "seed": args.seed, "out_dir": args.out,
        "plot": False if args.no_plot else None, "reuse_key": args.reuse_key or None,
        "scaling": args.scaling, "trustees": args.trustees, "threshold": args.threshold,
        "dashboard": args.dashboard, "stream": args.stream or None,
        "stream_rate": args.stream_rate,
        **scale_overrides(args), **privacy_overrides(args),
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
    if opts.dashboard is not None:
        print(f"the run's page, now it has ended: fedmq dashboard --run {where}")
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from fedmq.simulation import synthetic

    try:
        spec = synthetic.FleetSpec(n_devices=args.devices, samples_per_device=args.samples,
                                   iid=args.iid, seed=args.seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    for path in synthetic.write_fleet(spec, args.out):
        print(path)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument("--server-optimizer",
                   choices=["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"],
                   help="the aggregator's step on the fleet's average update, its [server] "
                   "optimizer (default fedavg)")
    p.add_argument("--server-lr", type=float, help="the server optimizer's step size, [server] "
                   "server_lr (default 1.0; 0.2 with fedadam, fedyogi, fedadagrad)")
    p.add_argument("--server-momentum", type=float, help="fedavgm's server momentum, [server] "
                   "momentum (default 0.9; fedmq init writes 0.7 for a regression)")
    p.add_argument("--personal", choices=["none", "finetune", "ditto", "intercept"],
                   help="personal models on the devices, reported beside the global model "
                   "(default none)")
    p.add_argument("--prox-mu", type=float,
                   help="FedProx: proximal term mu of local training (default 0: off)")
    p.add_argument("--augment", choices=["none", "oversample", "jitter", "oversample+jitter"],
                   help="on-device augmentation of the training rows (default none)")
    p.add_argument("--distill-weight", type=float,
                   help="federated distillation weight, classifiers only (default 0: off)")
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
    p.add_argument("--trustees", type=int, metavar="K", help="split the key among K trustees, "
                   "each its own process; every decryption needs --threshold of them")
    p.add_argument("--threshold", type=int, metavar="T", help="with --trustees: trustees "
                   "needed to decrypt (default: a majority)")
    p.add_argument("--stream", action="store_true",
                   help="the devices publish their readings over MQTT on their own local "
                        "topics; the agents store and train from them")
    p.add_argument("--stream-rate", type=float, metavar="R",
                   help="with --stream: readings per second per device (default 200)")
    p.add_argument("--dashboard", type=int, nargs="?", const=8780, metavar="PORT",
                   help="serve the fleet's live page on 127.0.0.1:PORT while it runs "
                   "(default 8780; 0: any free port) and print its URL")
    add_scale_arguments(p)
    add_privacy_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("sample-data", help="write synthetic sensor CSV files for devices",
                       description="Write one CSV of synthetic machine sensor readings per "
                       "device, as an agent's [data] path expects.")
    p.add_argument("--devices", type=int, default=3)
    p.add_argument("--samples", type=int, default=400, help="mean readings per device")
    p.add_argument("--iid", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="data", help="output directory (default: data)")
    p.set_defaults(func=cmd_sample_data)
