"""``fedmq bench-noniid``: non-IID fleets, the methods that help, measured in rounds to target.

Fleets of ``--devices`` devices (default 8) with pathological label skew (1-2 classes a
device), Dirichlet(0.1) and Dirichlet(0.5) label skew, feature skew (per-device gains
and offsets on the sensors) and quantity skew (benchmarks.noniid_data), on
scikit-learn's real data sets with RAW features and on the synthetic machine fleet.
Each method (benchmarks.noniid_methods: FedAvg, the server optimizers, FedProx, the
personal models, augmentation, distillation, local-only, centralized scikit-learn) runs
``--rounds`` rounds for ``--seeds`` seeds; reported: the global test score after
``--at`` rounds (mean ± sd over seeds), the rounds to reach centralized - 1 pp (R^2 -
0.02), and per device (own held-out rows) global vs personal vs local-only.

The rounds are simulated in plaintext with the fleet's real pure functions
(benchmarks.noniid_sim): fedmq init's defaults ([training], [codec], the statistics
round's pooled center/scale, the aggregator's [robust] groups and rule), the device's
local training, the codec's quantization of every delta, the aggregator's weighted
group means and server optimizer. The encrypted path decrypts exactly the same integer
sums, so this measures the fleet's learning dynamics without the cost of Paillier.
Written to ``--out``: noniid.md (tables), noniid.csv (every run's curve), noniid.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedmq.benchmarks import noniid_data as data
from fedmq.benchmarks import noniid_methods as methods
from fedmq.benchmarks import noniid_report as report
from fedmq.benchmarks import noniid_sim as sim
from fedmq.protocol.errors import ConfigError

DEFAULT_DATASETS = ("wine", "breast_cancer", "iris", "diabetes", "synthetic")
DEFAULT_SKEWS = ("pathological", "dirichlet0.1", "dirichlet0.5", "feature", "quantity")


@dataclass(frozen=True)
class Options:
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    skews: tuple[str, ...] = DEFAULT_SKEWS
    methods: tuple[str, ...] = methods.DEFAULT_METHODS
    seeds: int = 3
    rounds: int = 50
    at: int = 25
    devices: int = 8
    out: Path = Path("bench-noniid")


QUICK = Options(datasets=("wine", "synthetic"), skews=("pathological", "feature"),
                methods=("fedavg", "fedavgm", "intercept", "local", "central"), seeds=2,
                rounds=10, at=5)


@dataclass(frozen=True)
class Outcome:
    runs: list[sim.Run]
    seconds: float


def run(options: Options, progress: Callable[[str], None] = print) -> Outcome:
    parsed = [methods.parse_method(m) for m in options.methods]
    for name in options.datasets:
        if name not in data.DATASETS:
            raise ConfigError(f"unknown data set {name!r}; choose from "
                              f"{', '.join(data.DATASETS)}")
    base = methods.TrainingSettings()
    for m in parsed:  # a bad override is one line before any run, not a gap in the table
        if not m.baseline:
            m.training(base), m.server()
    runs: list[sim.Run] = []
    started = time.monotonic()
    for name in options.datasets:
        source = data.load(name, options.devices)
        for skew in options.skews:
            if skew == "natural" and name not in data.SYNTHETIC:
                continue
            t0 = time.monotonic()
            for seed in range(options.seeds):
                fleet = data.make_fleet(source, skew, devices=options.devices, seed=seed)
                central = sim.centralized(fleet)
                local, own = sim.local_only(fleet, base, options.rounds, seed)
                for m in parsed:
                    if m.preset == "central":
                        runs.append(sim.Run(name, skew, m.label, seed, fleet.metric, central,
                                            (central,)))
                        continue
                    if m.preset == "local":
                        runs.append(sim.Run(name, skew, m.label, seed, fleet.metric, central,
                                            (local,), device_local=own))
                        continue
                    if not m.applies(fleet.kind):
                        continue
                    runs.append(sim.simulate(fleet, m, rounds=options.rounds, seed=seed,
                                             central=central))
            progress(f"{name} / {skew}: {time.monotonic() - t0:.1f} s")
    return Outcome(runs, time.monotonic() - started)


def render(options: Options, outcome: Outcome) -> str:
    cells = report.group(outcome.runs)
    labels = list(options.methods)
    parts = [
        f"# fedmq bench-noniid: {options.devices} devices, {options.seeds} seeds, "
        f"{options.rounds} rounds ({outcome.seconds:.0f} s)",
        "Target: centralized scikit-learn (StandardScaler + LogisticRegression / "
        "LinearRegression on the pooled rows) minus 1 pp of accuracy (0.02 of R^2), on the "
        "held-out test set. fedmq init's [training], [codec] and [robust] defaults unless the "
        "method says otherwise.",
        f"## Rounds to target (mean over seeds; >{options.rounds} (k/n): k of n seeds "
        "reached it)", report.reach_table(cells, labels, options.rounds),
        f"## Global test score after {options.at} rounds (mean±sd over seeds)",
        report.score_table(cells, labels, options.at),
        "## Summary over fleets (points: accuracy pp, R^2 x 100; target 1 resp. 2)",
        report.summary_table(cells, labels, options.at, options.rounds),
        f"## Per device, own held-out rows, after {options.rounds} rounds",
        report.device_table(cells),
    ]
    detail = report.per_device_table(cells, "feature")
    if detail:
        parts += ["## Feature skew, device by device", detail]
    return "\n\n".join(parts) + "\n"


def write(options: Options, outcome: Outcome) -> tuple[Path, str]:
    options.out.mkdir(parents=True, exist_ok=True)
    text = render(options, outcome)
    (options.out / "noniid.md").write_text(text, encoding="utf-8")
    report.write_csv(options.out / "noniid.csv", outcome.runs)
    labels = list(options.methods)
    report.plot(options.out / "noniid.png", report.group(outcome.runs), labels)
    return options.out, text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", nargs="+", metavar="NAME",
                   help=f"data sets (default: {' '.join(DEFAULT_DATASETS)}; all: "
                   f"{', '.join(data.DATASETS)})")
    p.add_argument("--skews", nargs="+", choices=data.SKEWS, metavar="SKEW",
                   help=f"skews (default: {' '.join(DEFAULT_SKEWS)}; also iid, natural "
                   "for the synthetic fleet)")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="methods, each name[:key=value,...] (e.g. fedadam:server_lr=0.03); "
                   f"default: {' '.join(methods.DEFAULT_METHODS)}")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 3)")
    p.add_argument("--rounds", type=int, help="rounds budget (default 50)")
    p.add_argument("--at", type=int, help="the score column's round (default 25)")
    p.add_argument("--devices", type=int, help="devices (default 8)")
    p.add_argument("--out", type=Path, help="output directory (default ./bench-noniid)")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds: wine and synthetic, pathological and feature skew, "
                   "fedavg, fedavgm, intercept, local, central, 2 seeds, 10 rounds")


def options_from_args(args: argparse.Namespace) -> Options:
    base = QUICK if args.quick else Options()
    given: dict[str, Any] = {k: v for k, v in (
        ("datasets", args.datasets and tuple(args.datasets)),
        ("skews", args.skews and tuple(args.skews)),
        ("methods", args.methods and tuple(args.methods)), ("seeds", args.seeds),
        ("rounds", args.rounds), ("at", args.at), ("devices", args.devices),
        ("out", args.out)) if v is not None}
    options = replace(base, **given)
    if options.seeds < 1 or options.rounds < 1 or options.devices < 2:
        raise ConfigError("bench-noniid needs --seeds >= 1, --rounds >= 1, --devices >= 2")
    return replace(options, at=min(options.at, options.rounds))


def cmd_bench_noniid(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    outcome = run(options, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    out, text = write(options, outcome)
    print(text)
    print(f"written to {out}/ (noniid.md, noniid.csv, noniid.png)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-noniid", help=help_text, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_bench_noniid)


if __name__ == "__main__":  # python -m fedmq.benchmarks.noniid [options]
    parser = argparse.ArgumentParser(prog="python -m fedmq.benchmarks.noniid",
                                     description=__doc__)
    add_arguments(parser)
    sys.exit(cmd_bench_noniid(parser.parse_args()))
