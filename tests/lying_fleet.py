"""A real ``fedmq init`` fleet on real data with one lying device, scored on a ninth device.

The fleet is benchmarks.realdata_fleet's (``fedmq init gateway --loopback``: TLS with
its own CA, a login per device, the topic ACL, every device enrolled with ``fedmq
enroll``), on 127.0.0.1 only: ``fedmq broker`` (the embedded amqtt broker), ``fedmq
aggregator`` and one ``fedmq agent`` process per device, except the liar, which runs
tests/lying_agent.py (the same agent code with a lying phase computation). A data set
of simulation.datasets is split non-IID (Dirichlet label skew, alpha 0.5) over NINE
devices; eight form the fleet and the ninth device's rows are the held-out test set,
which the published global_model.npz is scored on. Every process is stopped, by its
own pid, when the run ends, also on failure.

    python tests/lying_fleet.py --lie weight            # one line: the run's numbers
    python tests/lying_fleet.py --lie none --dataset digits --show-rounds
    python tests/lying_fleet.py --lie all --work-dir /tmp/lying --show-log

The honest part is deterministic: the split is seeded, each agent has ``[agent] seed``
(its minibatch order), every device is selected in every round and the sums are exact
integers, so a clean run's model is the same on every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and Path(sys.path[0] or ".").resolve() == Path(__file__).parent.resolve():
    # Run as a script, tests/ comes first on sys.path, and its fedmq/ folder (the CLI's
    # tests, no __init__.py) would shadow the installed fedmq as a namespace package.
    del sys.path[0]
    import fedmq  # noqa: F401  (the installed one, before tests/ is back for lying_agent)

    sys.path.append(str(Path(__file__).parent))

import argparse
import contextlib
import csv
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from lying_agent import LIES, parse_lies

from fedmq.benchmarks import realdata
from fedmq.benchmarks import realdata_fleet as fleet
from fedmq.broker.embedded import wait_listening
from fedmq.models.evaluation import evaluate
from fedmq.models.factory import make_model
from fedmq.models.io import load_model
from fedmq.protocol.errors import ConfigError
from fedmq.simulation import datasets

LYING_AGENT = Path(__file__).resolve().parent / "lying_agent.py"
# The split seed per data set, chosen so that the ninth device (the test set) holds
# enough rows of every class to measure a few points of accuracy: Dirichlet(0.5) often
# leaves a device with 5 rows or one class. breast_cancer 19: 139 test rows, 51/88 (the
# data set's own 37/63); digits 1: 115 test rows, the fleet of the table
# (total_weight 1,682 for eight devices).
SEEDS = {"breast_cancer": 19, "digits": 1, "wine": 1, "iris": 0, "diabetes": 0}
LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL)\s")


@dataclass(frozen=True)
class FleetOptions:
    dataset: str = "breast_cancer"
    lies: frozenset[str] = frozenset()  # empty: every device is honest
    liar: int = 7  # the index of the lying device (dev-007: the last one)
    devices: int = 8
    rounds: int = 5
    key_bits: int = 1024
    seed: int | None = None  # the split's; None: SEEDS[dataset]
    alpha: float = 0.5
    # Short: an honest round takes ~0.1 s on loopback. A defence that rejects the liar's
    # update on arrival leaves 7 of 8, so the round closes at this deadline.
    round_timeout: float = 10.0
    rule: str | None = None  # [robust] rule; None: the aggregator's default
    # Devices (ids) that are never started: the reference "the fleet without the liar's
    # group" (robust aggregation leaves a lying device's whole group out).
    absent: frozenset[str] = frozenset()

    @property
    def split_seed(self) -> int:
        return self.seed if self.seed is not None else SEEDS.get(self.dataset, 0)

    @property
    def liar_id(self) -> str | None:
        return datasets.device_ids(self.devices)[self.liar] if self.lies else None

    @property
    def label(self) -> str:
        return ",".join(sorted(self.lies)) or "none"


@dataclass(frozen=True)
class FleetResult:
    options: FleetOptions
    metric: str  # "accuracy" or "r2"
    held_out: float  # the published model's metric on the ninth device's rows
    held_out_rows: int
    # The published model's metric on the eight devices' own rows: what the gateway's
    # final evaluation round reports when every device tells the truth (holdout 0).
    on_devices: float
    scale: tuple[float, ...]  # the run's feature scale (from the statistics round)
    rounds: list[dict[str, str]]  # rounds.csv of the aggregator's run directory
    warnings: list[str]  # the aggregator log's WARNING / ERROR lines
    lies_told: list[str]  # the liar's "LIE round ..." lines
    seconds: float
    work: Path
    logs: dict[str, str] = field(default_factory=dict, repr=False)

    def phase_rows(self, phase: str) -> list[dict[str, str]]:
        return [r for r in self.rounds if r.get("phase") == phase]

    def fleet_metric(self) -> dict[int, float]:
        """Round -> the gateway's fleet metric (of the model that round started from; the
        "evaluation" round's is the final model's), from rounds.csv."""
        out = {}
        for r in self.rounds:
            value = r.get(f"fleet_{self.metric}", "")
            if value:
                out[int(r["round"])] = float(value)
        return out

    @property
    def final_fleet_metric(self) -> float:
        final = self.fleet_metric()
        return final[max(final)] if final else float("nan")

    def total_weight(self) -> dict[int, int]:
        return {int(r["round"]): int(float(r["total_weight"]))
                for r in self.phase_rows("training")}

    def warned(self, round_id: int, *words: str) -> list[str]:
        """Aggregator WARNING/ERROR lines naming ``round <round_id>`` and every word."""
        pattern = re.compile(rf"\bround {round_id}\b")
        return [line for line in self.warnings
                if pattern.search(line) and all(w in line for w in words)]

    def line(self) -> str:
        weights = sorted(set(self.total_weight().values()))
        scale = f"{min(self.scale):.4g}..{max(self.scale):.4g}" if self.scale else "-"
        return (f"{self.options.dataset} lie={self.options.label} "
                f"liar={self.options.liar_id or '-'}: held-out {self.metric} "
                f"{self.held_out:.4f} ({self.held_out_rows} rows) | fleet {self.metric} "
                f"final {self.final_fleet_metric:.4f} (true {self.on_devices:.4f}) | total_weight "
                f"{'/'.join(map(str, weights))} | scale {scale} | "
                f"{len(self.warnings)} warnings, {len(self.lies_told)} lies | "
                f"{self.seconds:.1f} s")


def ninth_device_split(name: str, options: FleetOptions) -> datasets.Split:
    """``options.devices`` + 1 non-IID shards; the last is the test set.

    split() holds out a stratified share first; a test_share this small rounds to no
    row of any class, so every row goes to a device (and the test set is a device's).
    """
    ds = datasets.load(name)
    sp = datasets.split(ds, devices=options.devices + 1, test_share=1e-9,
                        alpha=options.alpha, seed=options.split_seed)
    if sp.test.size:  # pragma: no cover - a data set of a billion rows
        raise ConfigError("the tiny test share held out rows")
    return datasets.Split(ds, test=sp.devices[-1], devices=sp.devices[:-1])


def aggregator_tables(sp: datasets.Split, options: FleetOptions
                      ) -> dict[str, dict[str, realdata.TomlValue]]:
    """realdata's tables (fedmq init's training settings, no [model] center/scale: a
    statistics round derives them), keeping fedmq init's own quorum.

    realdata asks for every device (quorum = devices); a defence that leaves out the
    liar's group (2-3 devices: no smaller sum is ever decrypted) must be able to close the
    round with the rest, as in a fleet made by fedmq init (quorum: half the devices).
    """
    bench = realdata.Options(devices=options.devices, key_bits=options.key_bits,
                             rounds=options.rounds, round_timeout=options.round_timeout)
    tables = realdata.aggregator_tables(sp, bench, bench.training(sp.dataset.name))
    del tables["rounds"]["quorum"]  # a key left out keeps init's line
    tables["rounds"].update(min_agents=options.devices - len(options.absent),
                            start_timeout=60.0)
    if options.rule is not None:
        tables["robust"] = {"rule": options.rule}
    return tables


@contextlib.contextmanager
def running(gw: fleet.Gateway, options: FleetOptions) -> Iterator[fleet.Processes]:
    """The embedded broker and one agent process per device (the liar's lying)."""
    procs = fleet.Processes(gw.root / "logs")
    try:
        broker = procs.fedmq("broker", "broker", "--config", str(gw.root / "broker.toml"))
        if not wait_listening(gw.port, 15.0, lambda: broker.poll() is None):
            raise ConfigError(f"the broker is not listening on 127.0.0.1:{gw.port}:\n"
                              + procs.log_tail("broker"))
        for device in gw.devices:
            if device in options.absent:
                continue
            config = str(gw.agent_toml(device))
            if device == options.liar_id:
                procs.start(device, [sys.executable, str(LYING_AGENT), "--lie",
                                     ",".join(sorted(options.lies)), "--config", config])
            else:
                procs.fedmq(device, "agent", "--config", config)
        yield procs
    finally:
        procs.stop_all()


def run_fleet(options: FleetOptions, work: Path) -> FleetResult:
    """One run in ``work`` (gateway, data, logs are kept there)."""
    unknown = set(options.lies) - set(LIES)
    if unknown or not 0 <= options.liar < options.devices:
        raise ConfigError(f"lies are {', '.join(LIES)}; liar an index below {options.devices}")
    started = time.monotonic()
    sp = ninth_device_split(options.dataset, options)
    ds = sp.dataset
    files = datasets.write_split(sp, work / "data")
    gw = fleet.make_gateway(
        work / "gw", files, bits=options.key_bits, rounds=options.rounds,
        aggregator=aggregator_tables(sp, options),
        agent_data={"path": "data.csv", "features": list(ds.features), "label": ds.label})
    for i, device in enumerate(gw.devices):
        # Each device's own minibatch order, the same on every run: a stable baseline.
        fleet.edit_toml(gw.agent_toml(device), {"agent": {"seed": i}})
    with running(gw, options) as procs:
        fleet.run_aggregator(gw, procs, timeout=60 + 2 * (options.rounds + 2)
                             * options.round_timeout)
    logs = {name: (procs.logs / f"{name}.log").read_text(errors="replace")
            for name in procs.started}
    spec, params, _meta = load_model(gw.latest / "global_model.npz")
    model = make_model(spec).set_params_vector(params)
    held_out = evaluate(model, *sp.xy(sp.test)).metrics[ds.metric]
    on_devices = evaluate(model, *sp.xy(sp.train)).metrics[ds.metric]
    with (gw.latest / "rounds.csv").open(newline="", encoding="utf-8") as fh:
        rounds = list(csv.DictReader(fh))
    liar_log = logs.get(options.liar_id or "", "")
    return FleetResult(
        options=options, metric=ds.metric, held_out=float(held_out),
        held_out_rows=int(sp.test.size), on_devices=float(on_devices),
        scale=tuple(spec.scale or ()), rounds=rounds,
        warnings=[ln for ln in logs["aggregator"].splitlines() if LOG_LINE.match(ln)],
        lies_told=[ln for ln in liar_log.splitlines() if " LIE round " in ln],
        seconds=time.monotonic() - started, work=work, logs=logs)


def run_in_temp(options: FleetOptions) -> FleetResult:
    """One run in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"fedmq-lying-{options.label}-") as tmp:
        return run_fleet(options, Path(tmp))


def round_table(result: FleetResult) -> str:
    cols = ["round", "phase", "reported", "rejected", "total_weight", "update_norm",
            "eval_rows", f"fleet_{result.metric}", "excluded"]
    rows = [cols, *([r.get(c, "") for c in cols] for r in result.rounds)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  " + " ".join(v.rjust(w) for v, w in zip(row, widths, strict=True))
                     for row in rows)


def lies_option(text: str) -> frozenset[str]:
    """--lie: ``none`` (a clean fleet) or what lying_agent --lie takes."""
    return frozenset() if text == "none" else parse_lies(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/lying_fleet.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("--lie", type=lies_option, default=frozenset(),
                   help=f"none (default), all (the issue's three), or a comma-separated "
                   f"subset of {', '.join(LIES)}")
    p.add_argument("--dataset", default="breast_cancer", choices=list(datasets.DATASETS))
    p.add_argument("--liar", type=int, default=7, help="index of the lying device (7)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rule", help="[robust] rule of the aggregator (default: its default)")
    p.add_argument("--key-bits", type=int, default=1024)
    p.add_argument("--seed", type=int, help="split seed (default: per data set)")
    p.add_argument("--repeat", type=int, default=1, help="runs, one after the other")
    p.add_argument("--work-dir", type=Path, help="keep everything here (default: a "
                   "temporary directory, removed)")
    p.add_argument("--show-rounds", action="store_true", help="print rounds.csv")
    p.add_argument("--show-log", action="store_true",
                   help="print the aggregator's WARNING/ERROR lines and the liar's lies")
    args = p.parse_args(argv)
    options = FleetOptions(dataset=args.dataset, lies=args.lie, liar=args.liar,
                           rounds=args.rounds, key_bits=args.key_bits, seed=args.seed,
                           rule=args.rule)
    for i in range(args.repeat):
        if args.work_dir is None:
            result = run_in_temp(options)
        else:
            result = run_fleet(options, args.work_dir / f"{options.label}-{i}")
        print(result.line(), flush=True)
        if args.show_rounds:
            print(round_table(result))
        if args.show_log:
            print("\n".join(["  " + ln for ln in [*result.lies_told, *result.warnings]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
