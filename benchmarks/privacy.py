"""``fedmq bench-privacy``: the privacy-utility table, measured on this machine.

For each device-level budget epsilon in {1, 3, 8, off}: the final accuracy (mean
and min-max over ``--repeats`` runs; every run draws fresh noise from OS entropy,
the data and the training seeds stay the same), the epsilon the run's ledger
actually spent (dp-accounting), the noise multiplier, clip and rounds. Two tasks:

- ``synthetic``: ``fedmq simulate``'s default fleet and task (20 agents, 10 rounds,
  quorum half the fleet, so the noise is calibrated for 10 devices and accounted
  with the 20 that report: the spent epsilon is below the target), datasheet
  scaling in every row (nothing exact leaves a device, off included);
- a real data set (benchmarks.privacy_real), statistics round outside the budget.

The table is printed (markdown) and written to ``privacy.md`` and ``privacy.csv``
in the bench's run directory under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedmq.aggregator.runs import new_run_id
from fedmq.benchmarks.privacy_real import RealRun, RealTask, baselines, real_split, run_real
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.quiet import quieted

EPSILONS: tuple[float | None, ...] = (1.0, 3.0, 8.0, None)  # None: no DP
DELTA = 1e-5
# Chosen by a sweep at epsilon 3 (docs/privacy.md, "Differential privacy"); kept for every epsilon.
SYNTHETIC_CLIP = 0.5
REAL_CLIP = 0.25


@dataclass(frozen=True)
class Cell:
    """One (task, epsilon) row: the repeats' results."""

    task: str
    epsilon: float | None
    clip: float | None
    runs: tuple[RealRun, ...]
    central: float
    majority: float
    note: str

    @property
    def scores(self) -> list[float]:
        return [r.score for r in self.runs]

    @property
    def spent(self) -> float | None:
        spent = [r.spent for r in self.runs if r.spent is not None]
        return max(spent) if spent else None

    def row(self, rounds: int) -> dict[str, str]:
        s = self.scores
        z = self.runs[0].noise_multiplier
        return {
            "task": self.task, "epsilon": "off" if self.epsilon is None else f"{self.epsilon:g}",
            "accuracy_mean": f"{sum(s) / len(s):.4f}", "accuracy_min": f"{min(s):.4f}",
            "accuracy_max": f"{max(s):.4f}", "repeats": str(len(s)),
            "epsilon_spent": "" if self.spent is None else f"{self.spent:.3f}",
            "delta": "" if self.epsilon is None else f"{DELTA:g}",
            "noise_multiplier": "" if z is None else f"{z:.3f}",
            "clip": "" if self.epsilon is None or self.clip is None else f"{self.clip:g}",
            "rounds": str(rounds),
            "rounds_run": "/".join(sorted({str(r.rounds_run) for r in self.runs})),
            "centralized": f"{self.central:.4f}", "majority_class": f"{self.majority:.4f}",
            "note": self.note}


COLUMNS = ("task", "epsilon", "accuracy_mean", "accuracy_min", "accuracy_max", "repeats",
           "epsilon_spent", "delta", "noise_multiplier", "clip", "rounds", "rounds_run",
           "centralized", "majority_class", "note")


@dataclass(frozen=True)
class Options:
    repeats: int = 3
    key_bits: int = 2048
    epsilons: tuple[float | None, ...] = EPSILONS
    tasks: tuple[str, ...] = ("synthetic", "real")
    synthetic_clip: float = SYNTHETIC_CLIP
    real_clip: float = REAL_CLIP
    real: RealTask = field(default_factory=RealTask)
    rounds: int = 10
    agents: int = 20
    quorum: float = 0.5  # of the synthetic fleet, as fedmq simulate's --quorum
    workers: int = os.cpu_count() or 1
    out: Path = Path("runs")

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.rounds < 1 or self.agents < 2:
            raise ConfigError("bench-privacy: --repeats and --rounds must be at least 1, "
                              "--agents at least 2")
        if not set(self.tasks) <= {"synthetic", "real"}:
            raise ConfigError("bench-privacy: --tasks takes synthetic and/or real")


def synthetic_run(opts: Options, epsilon: float | None, clip: float,
                  out: Path) -> tuple[RealRun, float, float]:
    """One ``fedmq simulate`` run in-process; (run, centralized, majority share)."""
    import json

    from fedmq.aggregator.privacy import LEDGER_FILE
    from fedmq.protocol.privacy.accounting import PrivacyLedger
    from fedmq.simulation.run import Simulation, SimulationOptions

    sim = Simulation(SimulationOptions(
        agents=opts.agents, rounds=opts.rounds, key_bits=opts.key_bits, dp_epsilon=epsilon,
        quorum_fraction=opts.quorum, dp_delta=DELTA, dp_clip=clip, scaling="datasheet",
        workers=opts.workers, out_dir=str(out), plot=False), progress=lambda _line: None)
    report = sim.run()
    assert sim.aggregator is not None
    ledger = sim.aggregator.store.run_dir / LEDGER_FILE
    spent = (PrivacyLedger.from_dict(json.loads(ledger.read_bytes())).epsilon()
             if ledger.exists() else None)
    device = sim.aggregator.config.privacy.device
    trained = sum(r.phase == "training" for r in sim.aggregator.results)
    run = RealRun(report.federated_score, spent,
                  None if device is None else device.noise_multiplier, trained)
    return run, report.central_score, report.naive_score


def measure(opts: Options, progress: Callable[[str], None] = print) -> tuple[Path, list[Cell]]:
    """Every (task, epsilon) cell; the bench's directory and the cells."""
    bench_dir = opts.out / f"bench-privacy-{new_run_id()}"
    bench_dir.mkdir(parents=True)
    cells = []
    for task in opts.tasks:
        sp = real_split(opts.real) if task == "real" else None
        central, majority = baselines(sp) if sp is not None else (float("nan"), float("nan"))
        for eps in opts.epsilons:
            runs = []
            clip = opts.synthetic_clip if task == "synthetic" else opts.real_clip
            for rep in range(opts.repeats):
                started = time.monotonic()
                where = bench_dir / task / f"eps-{eps or 'off'}"
                if sp is None:
                    run, central, majority = synthetic_run(opts, eps, clip, where)
                else:
                    run = run_real(opts.real, sp, epsilon=eps, clip=clip, delta=DELTA,
                                   key_bits=opts.key_bits, workers=opts.workers, out=where)
                runs.append(run)
                progress(f"{task} epsilon {eps or 'off'} run {rep + 1}/{opts.repeats}: "
                         f"accuracy {run.score:.4f}, spent "
                         f"{'-' if run.spent is None else f'{run.spent:.3f}'} "
                         f"({time.monotonic() - started:.1f} s)")
            cells.append(Cell(task_name(task, opts), eps, clip, tuple(runs), central,
                              majority, task_note(task, opts)))
    return bench_dir, cells


def task_name(task: str, opts: Options) -> str:
    if task == "synthetic":
        return f"synthetic fault ({opts.agents} devices)"
    return f"{opts.real.dataset} ({opts.real.devices} devices)"


def task_note(task: str, opts: Options) -> str:
    if task == "synthetic":
        quorum = max(1, math.ceil(opts.quorum * opts.agents))
        return (f"quorum {quorum}; datasheet scaling: nothing exact "
                "is released")
    return ("statistics round (exact feature totals) outside the budget; "
            f"quorum {opts.real.devices}")


def rows(cells: Sequence[Cell], opts: Options) -> list[dict[str, str]]:
    return [c.row(opts.real.rounds if c.task.startswith(opts.real.dataset) else opts.rounds)
            for c in cells]


def markdown(table: Sequence[dict[str, str]]) -> str:
    head = ("| task | epsilon (target) | accuracy mean (min-max) | epsilon spent | "
            "noise multiplier z | clip | rounds (run) | centralized | majority class |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in table:
        lines.append(
            f"| {r['task']} | {r['epsilon']} | {r['accuracy_mean']} ({r['accuracy_min']}-"
            f"{r['accuracy_max']}, n={r['repeats']}) | {r['epsilon_spent'] or '-'} | "
            f"{r['noise_multiplier'] or '-'} | {r['clip'] or '-'} | {r['rounds']} "
            f"({r['rounds_run']}) | {r['centralized']} | {r['majority_class']} |")
    notes = sorted({f"{r['task']}: {r['note']}" for r in table})
    return "\n".join(lines + [""] + [f"- {n}" for n in notes] +
                     [f"- delta {DELTA:g}; epsilon spent: the largest over the repeats, from "
                      "the run's ledger (privacy.json, dp-accounting RDP)"])


def write(bench_dir: Path, table: Sequence[dict[str, str]], text: str) -> None:
    with (bench_dir / "privacy.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    (bench_dir / "privacy.md").write_text(text + "\n", encoding="utf-8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=3, help="runs per cell (3)")
    p.add_argument("--key-bits", type=int, default=2048, help="Paillier key size (2048)")
    p.add_argument("--quick", action="store_true",
                   help="1024-bit keys, 1 repeat, 3 rounds: a check that it works, not numbers")
    p.add_argument("--tasks", nargs="+", default=["synthetic", "real"],
                   choices=["synthetic", "real"])
    p.add_argument("--epsilons", nargs="+", metavar="EPS", default=["1", "3", "8", "off"],
                   help="device-level budgets; 'off' is a run without DP (1 3 8 off)")
    p.add_argument("--synthetic-clip", type=float, default=SYNTHETIC_CLIP)
    p.add_argument("--real-clip", type=float, default=REAL_CLIP)
    p.add_argument("--dataset", default=RealTask.dataset, help="real data set (breast_cancer)")
    p.add_argument("--devices", type=int, default=RealTask.devices,
                   help=f"devices of the real data set ({RealTask.devices})")
    p.add_argument("--synthetic-quorum", type=float, default=0.5, metavar="FRACTION",
                   help="the synthetic fleet's quorum, the devices the noise is calibrated "
                   "for (0.5, fedmq simulate's default)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=Path("runs"),
                   help="the bench's directory goes under it (runs)")


def _epsilon(text: str) -> float | None:
    if text == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--epsilons: {text!r} is neither a number nor 'off'") from None
    if not value > 0:
        raise ConfigError(f"--epsilons: {text!r} must be positive")
    return value


def options_from_args(args: argparse.Namespace) -> Options:
    rounds = 3 if args.quick else 10
    return Options(repeats=1 if args.quick else args.repeats,
                   key_bits=1024 if args.quick else args.key_bits,
                   epsilons=tuple(_epsilon(e) for e in args.epsilons), tasks=tuple(args.tasks),
                   synthetic_clip=args.synthetic_clip, real_clip=args.real_clip,
                   real=RealTask(dataset=args.dataset, devices=args.devices, rounds=rounds),
                   rounds=rounds, quorum=args.synthetic_quorum, workers=args.workers,
                   out=args.out)


def cmd_bench_privacy(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    # Dozens of runs: their INFO and health notes hidden (the root logger's level comes
    # back afterwards, for in-process callers such as tests).
    hush = contextlib.nullcontext() if getattr(args, "verbose", 0) else quieted("")
    with hush:
        bench_dir, cells = measure(opts,
                                   progress=lambda m: print(m, file=sys.stderr, flush=True))
    table = rows(cells, opts)
    text = markdown(table)
    write(bench_dir, table, text)
    print(text)
    print(f"\ntable: {bench_dir / 'privacy.md'} and privacy.csv")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-privacy", help=help_text, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_bench_privacy)
