"""``fedmq bench-realdata``: real public data sets through the real CLI, against
centralized scikit-learn.

Each data set (scikit-learn's wine, breast_cancer, raw diabetes ...) is split with a
held-out test share and the rest non-IID over ``--devices`` devices with raw,
unscaled features (fedmq.simulation.datasets). A gateway is made with ``fedmq init gateway``,
every device enrolled, and ``fedmq broker`` (or Mosquitto), one ``fedmq agent`` per
device and ``fedmq aggregator`` run as separate processes on 127.0.0.1
(benchmarks.realdata_fleet). The saved global model is scored on the test rows and
compared with StandardScaler + LogisticRegression / LinearRegression fitted on the
pooled training rows. ``--scaling pooled`` gives the aggregator the pooled
StandardScaler values (the baseline that needs everybody's data); ``--scaling none``
gives it no [model] center/scale, as a new user's config.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedmq.protocol.errors import ConfigError
from fedmq.protocol.messages import TrainingSettings
from fedmq.simulation import datasets

TomlValue = str | int | float | bool | list[float] | list[str] | None


@dataclass(frozen=True)
class Training(TrainingSettings):
    """The [training] settings (their defaults are fedmq init's), plus the run's rounds
    and the [codec] clip the benchmark sets with them."""

    rounds: int = 10
    clip: float = 10.0


DEFAULT = Training()  # `fedmq init gateway`'s [training] and [codec] clip, 10 rounds
# Found with --scaling pooled on 8 devices, alpha 0.5, 1024-bit keys (seeds 0-2) before the
# label was standardised: smaller steps and batches, and a clip that let the regression
# intercept (the label in its own units, ~150) move more than 10 a round. With the label
# standardised, fedmq init's settings (DEFAULT) are within tolerance too: --tuned keeps
# these for comparison.
TUNED_ALL = Training(epochs=2, batch_size=8, learning_rate=0.05, clip=100.0, rounds=30)
TUNED: dict[str, Training] = {name: TUNED_ALL for name in datasets.DATASETS}


@dataclass(frozen=True)
class Options:
    datasets: tuple[str, ...] = datasets.DEFAULT_DATASETS
    broker: str = "embedded"  # or "mosquitto"
    devices: int = 8
    key_bits: int = 2048
    scaling: str = "none"  # or "pooled"
    tuned: bool = False
    rounds: int | None = None  # overrides the training settings' rounds
    alpha: float = 0.5
    test_share: float = 0.3
    seed: int = 0
    round_timeout: float = 30.0
    work_dir: Path | None = None  # default: a temporary directory, removed afterwards
    overrides: dict[str, float | int] = field(default_factory=dict)  # epochs=..., etc.
    rule: str | None = None  # [robust] rule; None: the aggregator's default

    def training(self, name: str) -> Training:
        t = TUNED.get(name, DEFAULT) if self.tuned else DEFAULT
        t = replace(t, **self.overrides)  # type: ignore[arg-type]
        return replace(t, rounds=self.rounds) if self.rounds is not None else t


@dataclass(frozen=True)
class Result:
    dataset: str
    scaling: str
    metric: str
    federated: float
    centralized: float
    rounds: int
    seconds: float
    training: Training
    round_log: list[dict[str, str]]  # rounds.csv of the aggregator's run directory

    @property
    def gap(self) -> float:
        return self.centralized - self.federated

    @property
    def round_seconds(self) -> float:
        times = [float(r["seconds"]) for r in self.round_log
                 if r.get("seconds") and r.get("phase", "training") == "training"]
        return sum(times) / len(times) if times else float("nan")

    @property
    def fleet(self) -> float:
        """The final model's metric as the gateway saw it: decrypted fleet totals over the
        devices' own rows (the final evaluation round), NaN without one."""
        final = [r for r in self.round_log if r.get("phase") == "evaluation"]
        value = final[-1].get(f"fleet_{self.metric}", "") if final else ""
        return float(value) if value else float("nan")


def aggregator_tables(sp: datasets.Split, options: Options,
                      t: Training) -> dict[str, dict[str, TomlValue]]:
    from fedmq.provision import SERVER_DEFAULTS

    ds = sp.dataset
    center, scale = datasets.pooled_scaling(sp) if options.scaling == "pooled" else (None, None)
    n = len(sp.devices)
    return {
        "model": {"kind": ds.kind, "features": list(ds.features), "n_classes": ds.n_classes,
                  "center": None if center is None else list(center),
                  "scale": None if scale is None else list(scale)},
        "training": t.to_dict(),
        "rounds": {"rounds": t.rounds, "round_timeout": options.round_timeout, "quorum": n,
                   "min_agents": n, "start_timeout": 120.0},
        "codec": {"clip": t.clip},
        # What `fedmq init gateway --data-sample` writes for this model kind.
        "server": dict(SERVER_DEFAULTS[ds.kind]),
        **({"robust": {"rule": options.rule}} if options.rule else {}),
    }


def run_one(name: str, options: Options, work: Path) -> Result:
    """One data set through the real CLI; the saved global model against scikit-learn."""
    from fedmq.benchmarks import realdata_fleet as fleet
    from fedmq.models.evaluation import evaluate
    from fedmq.models.factory import make_model
    from fedmq.models.io import load_model

    if options.scaling not in ("none", "pooled") or options.broker not in ("embedded",
                                                                           "mosquitto"):
        raise ConfigError("bench-realdata: --scaling none|pooled, --broker embedded|mosquitto")
    ds = datasets.load(name)
    sp = datasets.split(ds, devices=options.devices, test_share=options.test_share,
                        alpha=options.alpha, seed=options.seed)
    t = options.training(name)
    files = datasets.write_split(sp, work / "data")
    gw = fleet.make_gateway(
        work / "gw", files, bits=options.key_bits, rounds=t.rounds,
        aggregator=aggregator_tables(sp, options, t),
        agent_data={"path": "data.csv", "features": list(ds.features), "label": ds.label})
    with fleet.running_fleet(gw, options.broker) as procs:
        seconds = fleet.run_aggregator(
            gw, procs, timeout=120 + t.rounds * options.round_timeout)
    spec, params, _meta = load_model(gw.latest / "global_model.npz")
    X, y = sp.xy(sp.test)
    federated = evaluate(make_model(spec).set_params_vector(params), X, y).metrics[ds.metric]
    with (gw.latest / "rounds.csv").open(newline="", encoding="utf-8") as fh:
        round_log = list(csv.DictReader(fh))
    training = sum(r.get("phase", "training") == "training" for r in round_log)
    return Result(name, options.scaling, ds.metric, federated, datasets.centralized_score(sp),
                  training, seconds, t, round_log)


def run(options: Options, progress: Callable[[str], None] = print) -> list[Result]:
    results = []
    for name in options.datasets:
        started = time.monotonic()
        if options.work_dir is None:
            with tempfile.TemporaryDirectory(prefix=f"fedmq-realdata-{name}-") as tmp:
                results.append(run_one(name, options, Path(tmp)))
        else:
            results.append(run_one(name, options, options.work_dir / name))
        progress(f"{name}: done in {time.monotonic() - started:.1f} s")
    return results


def table(results: list[Result]) -> str:
    lines = [f"{'data set':<14} {'scaling':<7} {'metric':<8} {'federated':>9} "
             f"{'central':>8} {'gap':>7} {'fleet':>7} {'rounds':>6} {'s/round':>7} "
             f"{'seconds':>7}  training"]
    for r in results:
        t = r.training
        lines.append(
            f"{r.dataset:<14} {r.scaling:<7} {r.metric:<8} {r.federated:>9.4f} "
            f"{r.centralized:>8.4f} {r.gap:>+7.4f} {r.fleet:>7.4f} {r.rounds:>6} "
            f"{r.round_seconds:>7.2f} "
            f"{r.seconds:>7.1f}  epochs={t.epochs} batch={t.batch_size} "
            f"lr={t.learning_rate} clip={t.clip}")
    return "\n".join(lines)


SKIP_COLUMNS = ("run_id", "agents", "excluded")


def round_table(result: Result) -> str:
    if not result.round_log:
        return f"{result.dataset}: rounds.csv is empty"
    cols = [c for c in result.round_log[0] if c not in SKIP_COLUMNS]
    rows = [cols, *([r.get(c, "") for c in cols] for r in result.round_log)]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(cols))]
    return "\n".join([f"{result.dataset} ({result.scaling}) rounds.csv:", *(
        "  " + " ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True))
        for row in rows)])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", nargs="+", default=list(datasets.DEFAULT_DATASETS),
                   choices=list(datasets.DATASETS), metavar="NAME",
                   help=f"data sets (default: {' '.join(datasets.DEFAULT_DATASETS)}; "
                   f"also {', '.join(set(datasets.DATASETS) - set(datasets.DEFAULT_DATASETS))})")
    p.add_argument("--broker", choices=["embedded", "mosquitto"], default="embedded")
    p.add_argument("--devices", type=int, default=8, help="devices (default 8)")
    p.add_argument("--rounds", type=int, help="rounds (default: per data set)")
    p.add_argument("--key-bits", type=int, default=2048, help="Paillier key size (2048)")
    p.add_argument("--scaling", choices=["none", "pooled"], default="none",
                   help="none: no [model] center/scale (a new user's config); pooled: the "
                   "StandardScaler values of all devices' rows pooled (the baseline)")
    p.add_argument("--tuned", action="store_true",
                   help="30 rounds with smaller steps (epochs 2, batch 8, lr 0.05, clip 100) "
                   "instead of fedmq init's training settings and 10 rounds")
    for flag, kind in (("epochs", int), ("batch-size", int), ("learning-rate", float),
                       ("l2", float), ("clip", float)):
        p.add_argument(f"--{flag}", type=kind, help="override the training setting")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew (0.5)")
    p.add_argument("--seed", type=int, default=0, help="split seed (0)")
    p.add_argument("--round-timeout", type=float, default=30.0)
    p.add_argument("--work-dir", type=Path, help="keep gateways, logs and data here "
                   "(default: a temporary directory)")
    p.add_argument("--show-rounds", action="store_true", help="print each run's rounds.csv")
    p.add_argument("--rule", choices=["filtered-mean", "trimmed-mean", "median", "mean"],
                   help="the aggregator's [robust] rule (default: its default; mean: plain "
                   "FedAvg, the baseline the robust rules are measured against)")


def options_from_args(args: argparse.Namespace) -> Options:
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                   ("learning_rate", args.learning_rate), ("l2", args.l2),
                                   ("clip", args.clip)) if v is not None}
    return Options(datasets=tuple(args.datasets), broker=args.broker, devices=args.devices,
                   key_bits=args.key_bits, scaling=args.scaling, tuned=args.tuned,
                   rounds=args.rounds, alpha=args.alpha, seed=args.seed,
                   round_timeout=args.round_timeout, work_dir=args.work_dir,
                   overrides=overrides, rule=args.rule)


def cmd_bench_realdata(args: argparse.Namespace) -> int:
    results = run(options_from_args(args),
                  progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(table(results))
    if args.show_rounds:
        for r in results:
            print("\n" + round_table(r))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-realdata", help=help_text, description=__doc__)
    add_arguments(p)
    p.set_defaults(func=cmd_bench_realdata)


if __name__ == "__main__":  # python -m fedmq.benchmarks.realdata [options]
    parser = argparse.ArgumentParser(prog="python -m fedmq.benchmarks.realdata",
                                     description=__doc__)
    add_arguments(parser)
    sys.exit(cmd_bench_realdata(parser.parse_args()))
