"""Checks on the group sums a round decrypts anyway: which group's totals cannot be honest.

A device that lies within the codec's bounds passes every bounds check, but its
group's decrypted totals still have to agree with what honest devices can send:

- rows: an honest device evaluates on at most as many rows as it trains on (the
  held-out share is at most one half, or evaluation uses the training rows), so a
  group whose weight is below ``max_weight`` (no device in it was capped) cannot
  report more evaluation rows than its weight;
- growth: a group's training weight against the rows the same group (the same
  devices: groups are a function of the device set) reported in the statistics round;
- influence: leaving one group out must not change the pooled center/scale by a
  factor, nor (for a group holding many times the median group's rows) the fleet
  metric by more than a tolerance; one group of ``min_group`` devices that does is
  either lying or so unlike the rest that an operator wants to hear about it.

Pure: sums in, the groups to leave out and one line per reason out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedmq.models import ModelSpec
from fedmq.protocol.errors import CodecError
from fedmq.protocol.sums.evaluation import FleetEvaluation, primary_metric
from fedmq.protocol.sums.statistics import FleetStatistics, StatsParams

Group = frozenset[str]
ONE_FEATURE = 100.0  # how far one feature alone must move (in its spread) to count
SPREAD = 1000  # ... when the other groups' spread of it is this many resolutions


@dataclass(frozen=True)
class Tolerances:
    """How far one group may move what the fleet's totals say before it is flagged."""

    scale_factor: float = 3.0  # pooled std over the std without the group, per feature
    metric: float = 0.05  # the fleet's primary metric (accuracy or R^2), absolute
    growth: float = 4.0  # a group's training weight over its statistics-round rows
    rows: float = 10.0  # a group's evaluation rows over the median group's
    trim: int = 1  # groups one check may leave out


def named(group: Group, devices: Mapping[str, Sequence[str]] | None = None) -> str:
    """'{a, b}' (a relay's partial shows as relay[members])."""
    if devices is None:
        return "{" + ", ".join(sorted(group)) + "}"
    parts = [m if tuple(devices.get(m, (m,))) == (m,) else
             f"{m}[{', '.join(devices[m])}]" for m in sorted(group)]
    return "{" + ", ".join(parts) + "}"


def _total(sums: Mapping[Group, Sequence[int]], leave: Sequence[Group] = ()) -> list[int]:
    kept = [s for g, s in sums.items() if g not in leave]
    return [sum(column) for column in zip(*kept, strict=True)]


def _stats(sums: Sequence[int], spec: ModelSpec, params: StatsParams) -> FleetStatistics | None:
    try:
        return FleetStatistics.from_sums(sums, spec, params)
    except CodecError:
        return None


def _spread(stats: FleetStatistics) -> tuple[np.ndarray, np.ndarray]:
    """(centers, stds) of the features and, for regression, the label."""
    centers, stds = list(stats.mean), list(stats.std)
    if stats.label_mean is not None and stats.label_std is not None:
        centers.append(stats.label_mean)
        stds.append(stats.label_std)
    return np.asarray(centers), np.asarray(stds)


def statistics_invalid(sums: Mapping[Group, Sequence[int]], spec: ModelSpec,
                       params: StatsParams) -> list[tuple[Group, str]]:
    """Groups whose statistics cannot be used: sums that do not decode (class counts that
    do not add up, squares below the square of sums), or values clipped at +-max_abs, which
    make a pooled mean and std wrong (an honest fleet whose data is that large needs a
    larger max_abs: the caller leaves only a few groups out, never most of the fleet)."""
    flagged = []
    for group, values in sums.items():
        try:
            stats = FleetStatistics.from_sums(values, spec, params)
        except CodecError as exc:
            flagged.append((group, f"its sums are impossible ({exc})"))
            continue
        clipped = sum(stats.clipped) + stats.clipped_label
        if clipped:
            flagged.append((group, f"it reports {clipped} values beyond +-{params.max_abs:g} "
                            "(if its data is honest, raise [statistics] max_abs)"))
    return flagged


def statistics_outliers(sums: Mapping[Group, Sequence[int]], spec: ModelSpec,
                        params: StatsParams, tol: Tolerances) -> list[tuple[Group, str]]:
    """Groups whose rows move the pooled center or scale of the median feature by more than
    ``scale_factor`` (in the other groups' spread), or one feature by ONE_FEATURE times,
    most influential first."""
    flagged: list[tuple[Group, str]] = []
    floor = params.resolution
    while len(flagged) < tol.trim and len(sums) - len(flagged) >= 3:
        left = [g for g, _ in flagged]
        whole = _stats(_total(sums, left), spec, params)
        if whole is None:
            break
        c_all, s_all = _spread(whole)
        worst: tuple[float, Group, str] | None = None
        for group in sums:
            if group in left:
                continue
            rest = _stats(_total(sums, [*left, group]), spec, params)
            if rest is None:
                continue
            c_rest, s_rest = _spread(rest)
            base = np.maximum(s_rest, floor)
            moved = np.maximum(np.maximum(s_all, floor) / base, np.abs(c_all - c_rest) / base)
            # Most features moved (a rare feature that only this group has moves alone: it
            # is honest data), or one feature with a real spread elsewhere moved by orders
            # of magnitude.
            spread = s_rest > SPREAD * floor
            score = max(float(np.median(moved)),
                        float(moved[spread].max()) / ONE_FEATURE * tol.scale_factor
                        if spread.any() else 0.0)
            if score > tol.scale_factor and (worst is None or score > worst[0]):
                j = int(np.argmax(moved))
                what = spec.features[j] if j < len(spec.features) else "the label"
                worst = (score, group, f"with it the pooled scale of {what!r} is "
                         f"{s_all[j]:.4g} and its center {c_all[j]:.4g}; without it "
                         f"{s_rest[j]:.4g} and {c_rest[j]:.4g} ({whole.n} rows against "
                         f"{rest.n}), and the median feature's scale or center moves "
                         f"{float(np.median(moved)):.3g} times its spread")
        if worst is None:
            break
        flagged.append((worst[1], worst[2]))
    return flagged


def _metric(sums: Sequence[int], spec: ModelSpec, params: StatsParams) -> float | None:
    try:
        return FleetEvaluation.from_sums(sums, spec, params).metrics[primary_metric(spec)]
    except CodecError:
        return None


def evaluation_outliers(sums: Mapping[Group, Sequence[int]], spec: ModelSpec,
                        params: StatsParams, tol: Tolerances,
                        impossible: Sequence[tuple[Group, str]] = ()) -> list[tuple[Group, str]]:
    """``impossible`` (from ``rows_check``) first, then groups that hold ``tol.rows`` times
    the median group's rows AND alone move the fleet's primary metric by more than
    ``tol.metric``, most influential first. Honest groups differ in their metric (non-IID
    data) and in their rows (uneven devices), but rarely in both by that much at once."""
    flagged = [(g, why) for g, why in impossible if g in sums]
    name = primary_metric(spec)
    typical = float(np.median([s[-1] for s in sums.values()]))
    while len(flagged) < tol.trim + len(impossible) and len(sums) - len(flagged) >= 3:
        left = [g for g, _ in flagged]
        whole = _metric(_total(sums, left), spec, params)
        if whole is None:
            break
        worst: tuple[float, Group, str] | None = None
        for group in sums:
            if group in left:
                continue
            if sums[group][-1] <= tol.rows * typical:
                continue
            rest = _metric(_total(sums, [*left, group]), spec, params)
            if rest is not None and abs(whole - rest) > tol.metric and \
                    (worst is None or abs(whole - rest) > worst[0]):
                rows = int(sums[group][-1])
                worst = (abs(whole - rest), group, f"with its {rows} rows the fleet {name} is "
                         f"{whole:.4f}, without them {rest:.4f}")
        if worst is None:
            break
        flagged.append((worst[1], worst[2]))
    return flagged


def rows_check(weight: int, eval_rows: int, max_weight: int, devices: int = 1) -> str | None:
    """Why a training round's group totals are impossible for honest devices, or None.

    Only where no device in the group can have been capped at ``max_weight``: then each
    device's weight is its training row count, and its evaluation rows are at most that.
    """
    # + 1 per device: holdout = 0.5 of an odd row count rounds to the larger half.
    if weight < max_weight and eval_rows > weight + devices:
        return (f"it reports {eval_rows} evaluation rows but trained on {weight} rows; an "
                "honest device evaluates on at most one row more than it trains on")
    return None


def growth_check(weight: int, statistics_rows: int | None, tol: Tolerances) -> str | None:
    """A group whose training weight outgrew its statistics-round rows by ``tol.growth``."""
    if statistics_rows is None or weight <= tol.growth * statistics_rows:
        return None
    return (f"its training weight {weight} is more than {tol.growth:g} times the "
            f"{statistics_rows} rows the same devices reported in the statistics round")


def step_outliers(means: Mapping[Group, np.ndarray], step: np.ndarray,
                  factor: float = 10.0) -> list[tuple[Group, str]]:
    """Groups whose mean update lies ``factor`` times further from the robust step than
    the median group's: the robust rule already outvoted them; the operator hears of it."""
    if len(means) < 3:
        return []
    dist = {g: float(np.linalg.norm(m - step)) for g, m in means.items()}
    typical = float(np.median(list(dist.values())))
    if typical <= 0:
        return []
    return [(g, f"its mean update lies {d / typical:.0f} times further from the robust step "
             "than the median group's") for g, d in dist.items() if d > factor * typical]


def datasheet_check(spec: ModelSpec, derived: ModelSpec,
                    ranges: Sequence[tuple[float, float]]) -> tuple[ModelSpec, list[str]]:
    """``derived`` (the statistics round's spec) with each feature whose derived center
    lies outside its datasheet range [lo, hi], or whose scale exceeds (hi - lo) / 2 (the
    largest standard deviation values inside [lo, hi] can have), replaced by the range's
    own (middle, (hi - lo) / 4), and one line for each. Features ``spec`` (the config)
    gives center/scale for are not derived and not checked."""
    if spec.center is not None and spec.scale is not None:
        return derived, []
    assert derived.center is not None and derived.scale is not None
    center, scale = list(derived.center), list(derived.scale)
    lines = []
    for j, (name, (lo, hi)) in enumerate(zip(spec.features, ranges, strict=True)):
        if lo <= center[j] <= hi and scale[j] <= (hi - lo) / 2:
            continue
        lines.append(f"feature {name!r}: the fleet's center {center[j]:.4g} and scale "
                     f"{scale[j]:.4g} cannot come from values inside its datasheet range "
                     f"[{lo:g}, {hi:g}]; using center {(lo + hi) / 2:g} and scale "
                     f"{(hi - lo) / 4:g} from the range instead")
        center[j], scale[j] = (lo + hi) / 2, (hi - lo) / 4
    if not lines:
        return derived, []
    return ModelSpec.from_dict({**derived.to_dict(), "center": center, "scale": scale}), lines
