"""The simulation's round table: one row per training round and one for the final model.

A training round's row holds two measures of the SAME model, the one the round
started from (model version r - 1; zeros in round 1): the fleet metric the
aggregator decrypted from the devices' encrypted evaluation sums on their own
rows, and the test metric on the pooled held-out rows (possible only in a
simulation). Side by side they show whether the number a real fleet sees can be
trusted. The final row (round R + 1, as in the aggregator's rounds.csv) holds
the final model's fleet metric from the evaluation round and its test metric.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedmq.protocol.sums.evaluation import FleetEvaluation
from fedmq.protocol.sums.statistics import FleetStatistics

# metrics.csv, with {metric} = accuracy or R^2. phase is "training" (rounds 1..R) or
# "evaluation" (the final model, round R + 1). closed_by is "all" (every expected agent
# reported), "deadline" (closed at the deadline without some) or "rejected-sum".
METRICS_COLUMNS = ("round", "phase", "reported", "expected", "closed_by", "test_loss",
                   "test_{metric}", "fleet_loss", "fleet_{metric}", "seconds", "update_bytes",
                   "model_bytes", "clipped_values", "skipped", "epsilon",
                   "personal_{metric}")  # the devices' personal models, fleet totals


def metrics_header(metric: str) -> list[str]:
    return [c.format(metric=metric) for c in METRICS_COLUMNS]


@dataclass(frozen=True)
class RoundRow:
    round_id: int
    reported: int
    expected: int
    closed_by: str
    loss: float  # test loss of the model the row is about
    score: float  # its test accuracy or R^2
    seconds: float
    update_bytes: int = 0
    model_bytes: int = 0
    clipped: int = 0  # delta coordinates the agents clipped to the codec's bound
    phase: str = "training"  # or "evaluation": the final model
    fleet_loss: float = math.nan  # from the decrypted fleet totals; NaN when rejected
    fleet_score: float = math.nan
    fleet_rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # skip code -> devices
    # Device-level DP: the run's epsilon spent to release the model the row is about.
    epsilon: float | None = None
    # [training] personal: the fleet metric of the devices' personal models on the same rows.
    personal_score: float = math.nan

    @property
    def final(self) -> bool:
        return self.phase == "evaluation"


def fleet_metrics(evaluation: FleetEvaluation | None) -> tuple[float, float, int]:
    """(loss, accuracy or R^2, rows) of the fleet evaluation; NaN when there is none."""
    if evaluation is None:
        return math.nan, math.nan, 0
    name = "accuracy" if evaluation.kind == "logistic" else "r2"
    return evaluation.loss, evaluation.metrics[name], evaluation.n


def row_line(row: RoundRow, rounds: int, metric: str) -> str:
    """The round's line: agents, the test metric and the fleet metric of one model."""
    width = len(f"round {rounds:3d}/{rounds}")
    what = "final" if row.final else f"round {row.round_id:3d}/{rounds}"
    fleet = ("fleet      n/a       " if math.isnan(row.fleet_score)
             else f"fleet {row.fleet_loss:8.4f} {row.fleet_score:7.4f}")
    late = "" if row.closed_by == "all" else f" ({row.closed_by})"
    eps = "" if row.epsilon is None else f" | epsilon {row.epsilon:6.3f}"
    if not math.isnan(row.personal_score):
        fleet += f" (personal {row.personal_score:7.4f})"
    return (f"{what:<{width}s} | agents {row.reported:3d}/{row.expected:<3d} | test loss "
            f"{row.loss:8.4f} {metric} {row.score:7.4f} | {fleet}{eps} | "
            f"{row.seconds:6.2f} s{late}")


def table_header(rounds: int, metric: str, *, personal: str = "none") -> str:
    mine = "" if personal == "none" else (
        f"; personal = the devices' {personal} models derived from that model, on the same "
        "rows (decrypted totals only)")
    return (f"each row: the model the round started from (round 1: zeros; final: after round "
            f"{rounds}); test = pooled held-out rows, fleet = the devices' own rows (decrypted "
            f"totals only); loss, {metric}{mine}")


def skipped_line(row: RoundRow) -> str | None:
    if not row.skipped:
        return None
    return f"round {row.round_id}: devices skipped: {_skips(row.skipped)}"


def statistics_lines(stats: FleetStatistics | None, devices: int, derived: str,
                     warnings: Sequence[str], skipped: dict[str, int]) -> list[str]:
    """What the statistics round derived (``derived``: "center/scale of 4 features"...),
    printed before round 1."""
    if stats is None:
        return ["statistics round: the decrypted sums were rejected"]
    lines = [f"statistics round: {stats.n} rows on {devices} devices; {derived} from the "
             "fleet's encrypted sums"]
    if skipped:
        lines.append("  devices skipped: " + _skips(skipped))
    return lines + [f"  warning: {w}" for w in warnings]


def _skips(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {code}" for code, n in sorted(skipped.items()))


def write_metrics(path: Path, rows: Sequence[RoundRow], metric: str) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(metrics_header(metric))
        for r in rows:
            skipped = ";".join(f"{code}={n}" for code, n in sorted(r.skipped.items()))
            writer.writerow([r.round_id, r.phase, r.reported, r.expected, r.closed_by,
                             f"{r.loss:.6f}", f"{r.score:.6f}", _num(r.fleet_loss),
                             _num(r.fleet_score), f"{r.seconds:.3f}", r.update_bytes,
                             r.model_bytes, r.clipped, skipped,
                             "" if r.epsilon is None else f"{r.epsilon:.6f}",
                             _num(r.personal_score)])


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"
