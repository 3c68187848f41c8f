"""The simulation's plot: what the fleet learned, against what it had to beat, and its cost.

Three panels: per round, the test score (pooled held-out rows) and the fleet
score (the aggregator's federated evaluation of the same model on the devices'
own rows) with the centralized baseline and the naive one (majority class, or the
mean predictor's R^2 = 0); both losses on a log scale; round time and bytes on
the wire. A round's point is the model it started from; the last point, at
round R + 1, is the final model (its evaluation round). Rounds that closed at the deadline
(an agent missing) are marked. The score axis is chosen so noise cannot pass
for a trend: accuracy spans from below the naive baseline to 1, R^2 is clipped
to [-1, 1] with clipped rounds drawn at the edge and labelled with their value.
The window arithmetic is pure (``score_window``); only ``render`` draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

ROUND_AXIS = "round (the model it started from)"
R2_FLOOR = -1.0  # below it an R^2 only says "worse than guessing the mean": clip it
MARGIN = 0.03


@dataclass(frozen=True)
class PlotRound:
    round_id: int
    score: float
    loss: float
    closed_by: str  # "all", "deadline", "rejected-sum"
    seconds: float
    update_bytes: int
    model_bytes: int
    fleet_score: float = math.nan  # federated evaluation; NaN when the round had none
    fleet_loss: float = math.nan
    final: bool = False  # the final model's evaluation round (R + 1)
    epsilon: float | None = None  # device-level DP: epsilon spent to release this model


@dataclass(frozen=True)
class PlotInput:
    task: str
    metric: str  # "accuracy" or "R^2"
    agents: int
    iid: bool
    key_bits: int
    codec: str
    central_score: float
    naive_score: float  # majority-class accuracy, or 0.0 (mean predictor's R^2)
    rounds: tuple[PlotRound, ...]

    @property
    def title(self) -> str:
        return (f"fedmq simulation: task {self.task!r}, {self.agents} agents "
                f"({'IID' if self.iid else 'non-IID'}), {self.key_bits}-bit Paillier, "
                f"codec {self.codec}")

    @property
    def naive_label(self) -> str:
        return ("majority class" if self.metric == "accuracy"
                else "mean predictor (R\u00b2 = 0)")


def naive_score(metric: str, y_test: ArrayLike) -> float:
    """What a model that learned nothing scores: the majority class's share, or R^2 = 0."""
    if metric != "accuracy":
        return 0.0
    labels = np.asarray(y_test).astype(np.int64)
    return float(np.bincount(labels).max() / labels.size)


@dataclass(frozen=True)
class Window:
    low: float
    high: float
    clipped: tuple[int, ...]  # indexes of scores outside the window (drawn at its edge)


def score_window(metric: str, scores: Sequence[float], baselines: Sequence[float]) -> Window:
    """The score axis: from below the lowest of scores and baselines to the best possible.

    Accuracy always reaches 1.0 so 0.92 vs 0.93 looks as small as it is, and starts
    a margin below the naive baseline so "better than guessing" is visible. R^2 tops
    at 1.0 and stops at -1: a round-1 R^2 of -16 would flatten every later round.
    """
    finite = [v for v in (*scores, *baselines) if math.isfinite(v)]
    if metric == "accuracy":
        low = max(0.0, min(finite, default=0.0) - MARGIN)
        return Window(low, 1.0 + MARGIN / 3, ())
    low = max(R2_FLOOR, min(finite, default=0.0)) - MARGIN
    clipped = tuple(i for i, s in enumerate(scores) if math.isfinite(s) and s < R2_FLOOR)
    return Window(low, 1.0 + MARGIN / 3, clipped)


def render(data: PlotInput, path: Path) -> None:
    """Write the figure to ``path`` (PNG); needs matplotlib (the gateway extra)."""
    import matplotlib.pyplot as plt

    fig = figure(data)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def figure(data: PlotInput) -> Any:
    """The matplotlib figure (Agg backend: no display needed); close it when done."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = data.rounds
    x = [r.round_id for r in rows]
    scores = [r.score for r in rows]
    late = [i for i, r in enumerate(rows) if r.closed_by != "all"]
    fig, (ax_s, ax_l, ax_c) = plt.subplots(1, 3, figsize=(15, 4.6))
    fig.suptitle(data.title)

    fleet = [r.fleet_score for r in rows]
    win = score_window(data.metric, scores, (data.central_score, data.naive_score, *fleet))
    shown = [max(s, win.low + MARGIN / 2) if i in win.clipped else s
             for i, s in enumerate(scores)]
    ax_s.plot(x, shown, marker="o", label="federated model, pooled test rows")
    ax_s.plot(x, [max(f, win.low + MARGIN / 2) if math.isfinite(f) else f for f in fleet],
              marker="s", linestyle="--", color="tab:purple", markerfacecolor="none",
              label="same model, fleet's own rows (encrypted sums)")
    ax_s.axhline(data.central_score, color="tab:green", linestyle="--",
                 label=f"centralized scikit-learn ({data.central_score:.3f})")
    ax_s.axhline(data.naive_score, color="gray", linestyle=":",
                 label=f"{data.naive_label} ({data.naive_score:.3f})")
    for i in win.clipped:
        ax_s.plot(x[i], shown[i], marker="v", color="tab:red", linestyle="none")
        ax_s.annotate(f"{scores[i]:.1f}", (x[i], shown[i]), textcoords="offset points",
                      xytext=(4, 4), fontsize=8, color="tab:red")
    if win.clipped:
        ax_s.plot([], [], marker="v", color="tab:red", linestyle="none",
                  label=f"below {R2_FLOOR:g} (value shown)")
    _mark_late(ax_s, x, shown, late)
    ax_s.set_ylim(win.low, win.high)
    ax_s.set_xlabel(ROUND_AXIS)
    ax_s.set_ylabel(data.metric.replace("R^2", "R\u00b2"))
    ax_s.legend(fontsize=8, loc="best")

    losses = [r.loss for r in rows]
    ax_l.plot(x, losses, marker="o", color="tab:red", label="pooled test rows")
    ax_l.plot(x, [r.fleet_loss for r in rows], marker="s", linestyle="--", color="tab:purple",
              markerfacecolor="none", label="fleet's own rows")
    _mark_late(ax_l, x, losses, late)
    ax_l.set_yscale("log")
    ax_l.set_xlabel(ROUND_AXIS)
    ax_l.set_ylabel("loss (log scale)")
    spent = [(r.round_id, r.epsilon) for r in rows if r.epsilon is not None]
    if spent:  # the privacy budget, on the loss panel's right axis
        ax_e = ax_l.twinx()
        ax_e.plot([p[0] for p in spent], [p[1] for p in spent], marker="^", color="tab:green",
                  label="epsilon spent (device-level DP)")
        ax_e.set_ylabel("epsilon spent")
        ax_e.set_ylim(0, max(p[1] for p in spent) * 1.3 or 1)
        lines, labels = ax_l.get_legend_handles_labels()
        more = ax_e.get_legend_handles_labels()
        ax_l.legend(lines + more[0], labels + more[1], fontsize=8)
    else:
        ax_l.legend(fontsize=8)

    kib_in = [r.update_bytes / 1024 for r in rows]
    kib_out = [r.model_bytes / 1024 for r in rows]
    ax_c.bar(x, kib_in, color="tab:blue", alpha=0.6, label="encrypted updates received")
    ax_c.bar(x, kib_out, bottom=kib_in, color="tab:orange", alpha=0.6,
             label="model published (sent on to each agent)")
    ax_c.set_xlabel("round")
    ax_c.set_ylabel("KiB on the wire")
    ax_c.set_ylim(0, max([a + b for a, b in zip(kib_in, kib_out, strict=True)], default=1) * 1.3
                  or 1)
    ax_t = ax_c.twinx()
    ax_t.plot(x, [r.seconds for r in rows], marker="o", color="black", label="round time")
    ax_t.set_ylabel("round time (s)")
    ax_t.set_ylim(0, max([r.seconds for r in rows], default=1) * 1.3 or 1)
    handles = ax_c.get_legend_handles_labels()
    twin = ax_t.get_legend_handles_labels()
    ax_c.legend(handles[0] + twin[0], handles[1] + twin[1], fontsize=8, loc="upper left")
    for ax in (ax_s, ax_l, ax_c):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for r in rows:
        if r.final:
            for ax in (ax_s, ax_l):
                ax.axvline(r.round_id, color="gray", linewidth=0.5)
                ax.annotate("final", (r.round_id, 1), xycoords=("data", "axes fraction"),
                            xytext=(-2, -10), textcoords="offset points", ha="right",
                            fontsize=8, color="gray")
    fig.tight_layout()
    return fig


def _mark_late(ax: Any, x: list[int], y: list[float], late: list[int]) -> None:
    if late:
        ax.plot([x[i] for i in late], [y[i] for i in late], marker="o",
                markersize=12, markerfacecolor="none", markeredgecolor="tab:red",
                linestyle="none", label="closed at the deadline")
