"""``fedmq bench-scale``: how many agents a broker sustains on this machine.

Runs ``fedmq simulate --agents N --rounds R`` for each fleet size and broker as a
separate process (so every run's peak memory is its own) and prints one table row
each: seconds per training round (announce to new model, as the aggregator
measures it), the peak RSS of every process of the run summed (main with the
aggregator, broker, agent workers), the delivery timeouts amqtt gave up on
(``Timeout waiting for PUBACK``), other broker warnings, agents that gave up
connecting, and whether the run completed. The agents' Paillier keys are 2048
bits unless ``--key-bits`` says otherwise; the model is the default task's (d = 5
parameters) unless ``--spare-sensors K`` widens it to d = 5 + K.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

GAVE_UP = ("no answer within", "cannot reach MQTT broker", "refused the connection")


@dataclass(frozen=True)
class ScaleRow:
    agents: int
    broker: str
    workers: int
    d: int  # model parameters (the update's length), as the run said; 0: it did not say
    ok: bool
    round_seconds: tuple[float, ...]  # training rounds
    total_rss_mb: float
    puback_timeouts: int
    broker_warnings: int
    gave_up: int  # agent log lines saying they could not connect
    wall_seconds: float

    def line(self) -> str:
        mean = (sum(self.round_seconds) / len(self.round_seconds)
                if self.round_seconds else float("nan"))
        rounds = " ".join(f"{s:.2f}" for s in self.round_seconds) or "-"
        return (f"| {self.agents:6d} | {self.d:4d} | {self.broker:9s} | {self.workers:7d} | "
                f"{mean:7.2f} ({rounds}) | {self.total_rss_mb:8.0f} | {self.puback_timeouts:6d} "
                f"| {self.broker_warnings:5d} | {self.gave_up:7d} | "
                f"{'yes' if self.ok else 'NO'} | {self.wall_seconds:6.0f} |")


HEADER = ("| agents |    d | broker    | workers | s/round (each)  | peak RSS MB (sum) | PUBACK "
          "timeouts | broker warnings | agents gave up | completed | wall s |")


def measure(agents: int, broker: str, *, workers: int, rounds: int, key_bits: int,
            out: Path, timeout: float, spare_sensors: int = 0) -> ScaleRow:
    argv = [sys.executable, "-m", "fedmq", "simulate", "--agents", str(agents), "--rounds",
            str(rounds), "--broker", broker, "--workers", str(workers), "--key-bits",
            str(key_bits), "--out", str(out), "--no-plot", "--spare-sensors", str(spare_sensors)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        ok, text = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        ok = False
        text = str(exc.stdout or "") + str(exc.stderr or "")
    wall = time.perf_counter() - start
    gave_up = sum(any(g in ln for g in GAVE_UP) for ln in text.splitlines())
    latest = out / "latest"
    seconds: tuple[float, ...] = ()
    resources: dict[str, object] = {}
    if (latest / "metrics.csv").exists():
        with (latest / "metrics.csv").open() as fh:
            seconds = tuple(float(r["seconds"]) for r in csv.DictReader(fh)
                            if r["phase"] == "training")
    if (latest / "resources.json").exists():
        resources = json.loads((latest / "resources.json").read_text())
    if not ok:
        print(text[-2000:], file=sys.stderr)
    said = re.search(r"\(d = (\d+)\)", text)  # the run's "fleet: ..." line
    d = int(said.group(1)) if said else 0
    return ScaleRow(agents=agents, broker=broker, workers=workers, d=d, ok=ok,
                    round_seconds=seconds,
                    total_rss_mb=float(resources.get("total_rss", 0)) / 2**20,  # type: ignore[arg-type]
                    puback_timeouts=int(resources.get("puback_timeouts", 0)),  # type: ignore[call-overload]
                    broker_warnings=int(resources.get("broker_warnings", 0)),  # type: ignore[call-overload]
                    gave_up=gave_up, wall_seconds=wall)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--brokers", nargs="+", default=["embedded", "mosquitto"])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--key-bits", type=int, default=2048)
    p.add_argument("--spare-sensors", type=int, default=0, metavar="K",
                   help="K uninformative extra channels per device: d = 5 + K (95: d = 100)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run at most")
    p.add_argument("--json", help="also write the rows to this JSON file")


def cmd_bench_scale(args: argparse.Namespace) -> int:
    rows = []
    print(HEADER, flush=True)
    for agents in args.agents:
        for broker in args.brokers:
            with tempfile.TemporaryDirectory(prefix="fedmq-scale-") as tmp:
                row = measure(agents, broker, workers=args.workers, rounds=args.rounds,
                              key_bits=args.key_bits, out=Path(tmp), timeout=args.timeout,
                              spare_sensors=args.spare_sensors)
            rows.append(row)
            print(row.line(), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0 if all(r.ok for r in rows) else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-scale", help=help_text, description=__doc__)
    add_arguments(p)
    p.set_defaults(func=cmd_bench_scale)
