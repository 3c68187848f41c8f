"""``fedmq bench-relay``: two relays x 500 agents against the single gateway, exactly.

The same fleet (same data, seeds, agent keys, aggregator keys) runs twice on this
machine: (a) every agent on one broker with one aggregator; (b) the agents split
over relays (``fedmq relay``: no private key), each relay and its agents on a
broker of their own, the relays forwarding one signed partial sum each to the top
aggregator's broker; the top aggregator decrypts only the grand total.

Paillier sums compose and the codec is exact integer arithmetic, so the decrypted
totals, and with them every round's new model, must be equal BIT FOR BIT. The
table gives per round the time from announcement to new model and the bytes the
(top) aggregator received, the peak RSS of each setup's processes, and the check.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the setups import the whole gateway: not when `fedmq` builds its parser
    from fedmq.benchmarks.relay_setups import Plan, RoundRecord, SetupResult
from fedmq.protocol.errors import ConfigError
from fedmq.simulation.rundirs import start_run

MB = 1024 * 1024
TABLE_FILE, JSON_FILE = "relay_bench.md", "relay_bench.json"


@dataclass(frozen=True)
class Comparison:
    single: SetupResult
    relayed: SetupResult

    def pairs(self) -> list[tuple[RoundRecord, RoundRecord | None]]:
        theirs = {(r.phase, r.round_id): r for r in self.relayed.rounds}
        return [(r, theirs.get((r.phase, r.round_id))) for r in self.single.rounds]

    @property
    def rounds_equal(self) -> bool:
        return len(self.single.rounds) == len(self.relayed.rounds) and all(
            b is not None and a.params == b.params and a.digest == b.digest
            for a, b in self.pairs())

    @property
    def final_equal(self) -> bool:
        return self.single.final == self.relayed.final

    @property
    def equal(self) -> bool:
        return self.rounds_equal and self.final_equal

    def max_difference(self) -> float:
        a, b = (np.frombuffer(s.final, dtype=np.float64) for s in (self.single, self.relayed))
        return float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else float("inf")

    def table(self, plan: Plan) -> str:
        s, r = self.single, self.relayed
        lines = [
            f"fleet: {plan.agents} agents = {len(plan.relays)} relays x {plan.per_relay}, "
            f"task {plan.task!r}, {plan.rounds} rounds, {plan.key_bits}-bit Paillier, "
            f"{plan.broker} brokers, agents in {plan.workers} worker processes",
            "",
            "| phase | round | s single | s relayed | bytes up single | bytes up relayed "
            "| devices single/relayed | bit-equal |",
            "|---|---|---|---|---|---|---|---|"]
        for a, b in self.pairs():
            same = b is not None and a.params == b.params and a.digest == b.digest
            lines.append(
                f"| {a.phase} | {a.round_id} | {a.seconds:.2f} | "
                f"{b.seconds if b else float('nan'):.2f} | {a.update_bytes} | "
                f"{b.update_bytes if b else 0} | {a.reported}/{b.reported if b else 0} | "
                f"{'yes' if same else 'NO'} |")
        lines += ["", "| peak RSS MB | single | relayed |", "|---|---|---|"]
        for kind in ("aggregator", "brokers", "relays", "agent workers"):
            lines.append(f"| {kind} | {s.rss.get(kind, 0) / MB:.0f} | "
                         f"{r.rss.get(kind, 0) / MB:.0f} |")
        lines.append(f"| total | {sum(s.rss.values()) / MB:.0f} | "
                     f"{sum(r.rss.values()) / MB:.0f} |")
        verdict = ("EXACTLY equal (bit for bit)" if self.equal else
                   f"DIFFERENT (max |difference| {self.max_difference():.3g})")
        lines += ["", f"final global parameters: {verdict}",
                  f"relays forwarded {r.relay_partials} partial sums; broker complaints "
                  f"(PUBACK timeouts, warnings): single {s.broker_complaints}, relayed "
                  f"{r.broker_complaints}; wall s: single {s.wall_seconds:.0f}, relayed "
                  f"{r.wall_seconds:.0f}"]
        return "\n".join(lines)


def plan_from(args: argparse.Namespace, run_dir: Path) -> Plan:
    from fedmq.benchmarks.relay_setups import Plan

    per_relay = args.per_relay if args.per_relay is not None else (10 if args.quick else 500)
    bits = args.key_bits if args.key_bits is not None else (1024 if args.quick else 2048)
    if per_relay < 1 or args.relays < 1 or args.rounds < 1:
        raise ConfigError("bench-relay: --relays, --per-relay and --rounds must be at least 1")
    if bits < 1024:
        raise ConfigError("bench-relay: --key-bits must be at least 1024")
    broker = args.broker
    if broker == "auto":
        from fedmq.simulation.broker import mosquitto_binary

        try:
            mosquitto_binary()
            broker = "mosquitto"
        except ConfigError:
            broker = "embedded"
    relays = tuple(f"relay-{chr(ord('a') + i)}" if i < 26 else f"relay-{i}"
                   for i in range(args.relays))
    return Plan(run_dir=str(run_dir), relays=relays, per_relay=per_relay, rounds=args.rounds,
                key_bits=bits, task=args.task, broker=broker, workers=args.workers,
                seed=args.seed)


def run(plan: Plan, *, timeout: float) -> Comparison | str:
    from fedmq.benchmarks.relay_setups import prepare, run_setup

    prepare(plan)
    results = []
    for name in ("single", "relayed"):
        print(f"bench-relay: {name} ...", flush=True)
        result = run_setup(name, plan, timeout)
        if isinstance(result, str):
            return result
        results.append(result)
    return Comparison(*results)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--relays", type=int, default=2)
    p.add_argument("--per-relay", type=int, help="agents behind each relay (default 500; "
                   "10 with --quick)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--key-bits", type=int, help="Paillier key (default 2048; 1024 with --quick)")
    p.add_argument("--task", default="fault")
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                   help="every broker of both setups (auto: Mosquitto when installed)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="agent worker processes per setup")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2 x 10 agents, 1024-bit keys")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per setup at most")
    p.add_argument("--out", default="runs/bench-relay",
                   help="run directories go here (the table too); OUT/latest is the last")


def cmd_bench_relay(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError("bench-relay: --workers must be at least 1")
    run_, _note = start_run(Path(args.out))
    plan = plan_from(args, run_.run_dir)
    outcome = run(plan, timeout=args.timeout)
    if isinstance(outcome, str):
        print(f"bench-relay failed: {outcome}")
        return 1
    table = outcome.table(plan)
    print(table)
    (run_.run_dir / TABLE_FILE).write_text(table + "\n")
    doc = {"plan": asdict(plan), "equal": outcome.equal,
           **{s.setup: asdict(replace(s, final=b"", rounds=tuple(
               replace(r, params=b"") for r in s.rounds)))
              for s in (outcome.single, outcome.relayed)}}
    (run_.run_dir / JSON_FILE).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"table written to {run_.run_dir / TABLE_FILE}")
    return 0 if outcome.equal else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-relay", help=help_text, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_bench_relay)
