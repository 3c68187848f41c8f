"""``fedmq bench-noniid``'s tables and plot from the runs: means and spreads over seeds."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmq.benchmarks.noniid_sim import Run, rounds_to_target, tolerance


@dataclass(frozen=True)
class Cell:
    """One (data set, skew, method): its runs over the seeds."""

    dataset: str
    skew: str
    method: str
    runs: tuple[Run, ...]

    @property
    def metric(self) -> str:
        return self.runs[0].metric

    @property
    def federated(self) -> bool:
        return len(self.runs[0].curve) > 1

    def reached(self) -> list[int | None]:
        return [rounds_to_target(r.curve, r.central - tolerance(r.metric)) for r in self.runs]

    def at(self, rounds: int) -> list[float]:
        return [r.at(rounds) for r in self.runs]

    def gap(self, rounds: int) -> list[float]:
        """Centralized minus this method, per seed (positive: short of centralized)."""
        return [r.central - r.at(rounds) for r in self.runs]

    def devices(self, which: str) -> list[float]:
        return [v for r in self.runs for v in getattr(r, f"device_{which}")
                if not math.isnan(v)]


def group(runs: Sequence[Run]) -> list[Cell]:
    keys: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        keys.setdefault((r.dataset, r.skew, r.method), []).append(r)
    return [Cell(*k, tuple(v)) for k, v in keys.items()]


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "-"
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return f"{np.mean(vals):.{digits}f}±{sd:.{digits}f}"


def reach_text(reached: Sequence[int | None], rounds: int) -> str:
    """Mean rounds over the seeds; ">R (k/n)" when some seed never reached the target."""
    hit = [r for r in reached if r is not None]
    if len(hit) == len(reached):
        return f"{np.mean(hit):.0f}" if len(set(hit)) == 1 else \
            f"{np.mean(hit):.0f} ({min(hit)}-{max(hit)})"
    return f">{rounds} ({len(hit)}/{len(reached)})"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) + " |"
            for row in rows]
    return "\n".join([line, rule, *body])


def _pivot(cells: Sequence[Cell], methods: Sequence[str], text: object) -> str:
    table: dict[tuple[str, str], dict[str, str]] = {}
    for c in cells:
        table.setdefault((c.dataset, c.skew), {})[c.method] = text(c)  # type: ignore[operator]
    rows = [[d, s, *(v.get(m, "n/a") for m in methods)] for (d, s), v in table.items()]
    return _markdown(["data set", "skew", *methods], rows)


def reach_table(cells: Sequence[Cell], methods: Sequence[str], rounds: int) -> str:
    fed = [m for m in methods if any(c.method == m and c.federated for c in cells)]
    return _pivot([c for c in cells if c.federated], fed,
                  lambda c: reach_text(c.reached(), rounds))


def score_table(cells: Sequence[Cell], methods: Sequence[str], at: int) -> str:
    central = {(c.dataset, c.skew): mean_sd([r.central for r in c.runs]) for c in cells}
    body = _pivot(cells, methods, lambda c: mean_sd(c.at(at)))
    if "central" in methods:
        return body
    lines = body.splitlines()
    # the centralized score after the skew, for reading the gaps
    head = lines[0] + " central |"
    out = [head, lines[1] + "---------|"]
    for line in lines[2:]:
        parts = [p.strip() for p in line.strip("|").split("|")]
        out.append(line + f" {central.get((parts[0], parts[1]), '-')} |")
    return "\n".join(out)


def summary_table(cells: Sequence[Cell], methods: Sequence[str], at: int,
                  rounds: int) -> str:
    """Per method over every (data set, skew), classification and regression apart: how
    far from centralized at ``at`` rounds (mean and worst over fleets, in points: accuracy
    pp, or R^2 x 100), and the fleets within target (every seed) by ``at`` and ``rounds``."""
    rows = []
    for metric in ("accuracy", "r2"):
        for m in methods:
            mine = [c for c in cells if c.method == m and c.metric == metric]
            if not mine:
                continue
            gaps = [100 * float(np.mean(c.gap(at))) for c in mine]
            reached = [c.reached() for c in mine]
            by_at = sum(all(r is not None and r <= at for r in rs) for rs in reached)
            by_end = sum(all(r is not None for r in rs) for rs in reached)
            fed = mine[0].federated
            rows.append([metric, m, f"{np.mean(gaps):+.1f}", f"{max(gaps):+.1f}",
                         f"{by_at}/{len(mine)}" if fed else "-",
                         f"{by_end}/{len(mine)}" if fed else "-"])
    return _markdown(["metric", "method", f"mean gap @{at}", f"worst gap @{at}",
                      f"within target by {at}", f"by {rounds}"], rows)


def device_table(cells: Sequence[Cell]) -> str:
    """Per (data set, skew, method with a personal model): the mean over devices and seeds
    of the global, personal and local-only scores on each device's own held-out rows, and
    the devices (all seeds) where the personal model beats both."""
    local = {(c.dataset, c.skew): c for c in cells if c.method == "local"}
    rows = []
    for c in cells:
        if not c.runs[0].device_personal:
            continue
        base = local.get((c.dataset, c.skew))
        beats = ties = total = 0
        for i, r in enumerate(c.runs):
            own_local = base.runs[i].device_local if base and i < len(base.runs) else ()
            for k, p in enumerate(r.device_personal):
                best = max(r.device_global[k], own_local[k] if k < len(own_local) else -1e9)
                total += 1
                beats += p > best
                ties += p >= best
        rows.append([c.dataset, c.skew, c.method, mean_sd(c.devices("global")),
                     mean_sd(c.devices("personal")),
                     mean_sd(base.devices("local")) if base else "-", f"{beats}/{total}",
                     f"{ties}/{total}"])
    if not rows:
        return "(no method with a personal model ran)"
    return _markdown(["data set", "skew", "method", "global (own rows)", "personal",
                      "local-only", "personal > both", "personal >= both"], rows)


def per_device_table(cells: Sequence[Cell], skew: str = "feature") -> str:
    """Device by device (seed means) under ``skew``: global, each personal mode, local-only."""
    out = []
    for (dataset, sk) in dict.fromkeys((c.dataset, c.skew) for c in cells if c.skew == skew):
        mine = [c for c in cells if c.dataset == dataset and c.skew == sk]
        cols: dict[str, list[float]] = {}
        for c in mine:
            attr = ("device_local" if c.method == "local" else "device_personal"
                    if c.runs[0].device_personal else None)
            if c.method == "fedavg":
                cols["global (fedavg)"] = list(np.mean([r.device_global for r in c.runs], 0))
            if attr:
                vectors = [getattr(r, attr) for r in c.runs if getattr(r, attr)]
                if vectors:
                    cols[c.method] = list(np.nanmean(np.asarray(vectors, dtype=float), 0))
        if not cols:
            continue
        n = max(len(v) for v in cols.values())
        rows = [[f"dev-{k:03d}", *(f"{v[k]:.3f}" if k < len(v) else "-"
                                   for v in cols.values())] for k in range(n)]
        out.append(f"{dataset}, {sk} skew (own held-out rows, mean of seeds):\n\n"
                   + _markdown(["device", *cols], rows))
    return "\n\n".join(out)


def write_csv(path: Path, runs: Sequence[Run]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "skew", "method", "seed", "metric", "central", "final",
                    "rounds_to_target", "left_out_groups", "curve"])
        for r in runs:
            reach = rounds_to_target(r.curve, r.central - tolerance(r.metric)) \
                if len(r.curve) > 1 else ""
            w.writerow([r.dataset, r.skew, r.method, r.seed, r.metric, f"{r.central:.4f}",
                        f"{r.final:.4f}", "" if reach is None else reach, r.left_out,
                        " ".join(f"{v:.4f}" for v in r.curve)])


def plot(path: Path, cells: Sequence[Cell], methods: Sequence[str]) -> Path | None:
    """Mean test score per round for each method, one panel per (data set, skew)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - the gateway extra brings it
        return None
    panels = list(dict.fromkeys((c.dataset, c.skew) for c in cells))
    datasets = list(dict.fromkeys(d for d, _ in panels))
    skews = list(dict.fromkeys(s for _, s in panels))
    fig, axes = plt.subplots(len(datasets), len(skews), squeeze=False,
                             figsize=(3.2 * len(skews), 2.6 * len(datasets)))
    colors = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    for c in cells:
        ax = axes[datasets.index(c.dataset)][skews.index(c.skew)]
        if c.federated:
            curve = np.mean([r.curve for r in c.runs], axis=0)
            ax.plot(range(len(curve)), curve, color=colors.get(c.method), linewidth=1,
                    label=c.method)
        elif c.method == "local":
            ax.axhline(float(np.mean(c.at(0))), color="gray", linestyle=":", label="local")
        central = float(np.mean([r.central for r in c.runs]))
        ax.axhline(central, color="black", linewidth=0.8)
        ax.axhline(central - tolerance(c.metric), color="black", linestyle="--",
                   linewidth=0.6)
        ax.set_title(f"{c.dataset} / {c.skew}", fontsize=8)
        ax.set_ylim(max(0.0, central - 0.3), min(1.0, central + 0.1) if c.metric ==
                    "accuracy" else central + 0.1)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels) or 1),
               fontsize=7)
    fig.suptitle("fedmq bench-noniid: global test score per round (black: centralized, "
                 "dashed: target)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
