"""Federated feature statistics: exact integer sums of local data, and the pooled scaler.

Before round 1 each device sends, encrypted, its row count and per-feature sums
and sums of squares (and the label's, or its class counts). The aggregator
decrypts only the fleet totals and derives the pooled mean and standard
deviation: exactly what ``StandardScaler`` fitted on everybody's rows would
give, without anybody's rows leaving their device.

The fixed-point contract (``StatsParams``, announced with the key): a value v
becomes q = round(clip(v, -max_abs, max_abs) * 2^fraction_bits). Sums of q and
q^2 are exact integers (no float rounding on the device, none in the sum), so
the pooled mean and standard deviation are exact functions of the quantized
data. Quantizing moves each value by at most 2^-(fraction_bits+1); the mean
moves by at most that, and so does the standard deviation (centering is a
projection, so the rms change of the centered data is at most the rms change
of the data). That is ``resolution``, in the data's own units. Values beyond
``max_abs`` are clipped and counted, so a too-small range is reported, never
silent.

The same contract carries the sums of federated evaluation (protocol.sums.evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.models import ModelSpec, make_model
from fedmq.protocol.errors import CodecError, ProtocolError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# |q| <= 2^53: below that, v * 2^f is rounded exactly in float64, so each value moves by at
# most half a step and the resolution below holds.
_MAX_Q_BITS = 53
_LIMB = 18  # q = a * 2^36 + b * 2^18 + c: every limb product stays below 2^36
_CHUNK = 1 << 24  # rows per int64 partial sum: 2^24 * 2^36 < 2^63


@dataclass(frozen=True)
class StatsParams:
    """Fleet-wide fixed point for sums of data; announced next to the public key."""

    fraction_bits: int = 24
    max_abs: float = 1_000_000.0
    max_samples: int = 1 << 20
    max_agents: int = 1_000

    def __post_init__(self) -> None:
        if not 8 <= self.fraction_bits <= 32:
            raise CodecError("statistics fraction_bits must be between 8 and 32")
        if not (math.isfinite(self.max_abs) and self.max_abs >= 1):
            raise CodecError("statistics max_abs must be a finite number >= 1")
        if self.q_max.bit_length() > _MAX_Q_BITS:
            raise CodecError(f"statistics max_abs * 2^fraction_bits must stay below "
                             f"2^{_MAX_Q_BITS} (max_abs up to {self.max_abs_limit:.3g} with "
                             f"fraction_bits {self.fraction_bits}); lower fraction_bits to "
                             "raise max_abs further")
        if not 1 <= self.max_samples <= 1 << 24 or not 1 <= self.max_agents <= 1 << 24:
            raise CodecError("statistics max_samples and max_agents must be in 1..2^24")

    @property
    def max_abs_limit(self) -> float:
        """The largest max_abs these fraction_bits allow."""
        return float(2 ** (_MAX_Q_BITS - 1 - self.fraction_bits))

    @property
    def q_max(self) -> int:
        """The largest |q| one value quantizes to."""
        return math.ceil(self.max_abs * 2**self.fraction_bits)

    @property
    def bound_int(self) -> int:
        """The largest |integer| one device puts in one slot: a sum of squares of max_samples."""
        return self.max_samples * self.q_max * self.q_max

    @property
    def resolution(self) -> float:
        """Worst-case error of a pooled mean or standard deviation, in data units."""
        return 2.0 ** -(self.fraction_bits + 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> StatsParams:
        if not isinstance(data, dict):
            raise ProtocolError("statistics parameters must be an object")
        try:
            return cls(fraction_bits=int(data["fraction_bits"]),
                       max_abs=float(data["max_abs"]),
                       max_samples=int(data["max_samples"]),
                       max_agents=int(data["max_agents"]))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"bad statistics parameters: {exc}") from exc


def quantize(values: FloatArray, params: StatsParams) -> tuple[IntArray, int]:
    """q = round(clip(v) * 2^f) as int64, and how many values clipping changed."""
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise CodecError("statistics take finite values only")
    clipped = np.clip(v, -params.max_abs, params.max_abs)
    n_clipped = int(np.count_nonzero(clipped != v))
    return np.rint(clipped * 2.0**params.fraction_bits).astype(np.int64), n_clipped


def exact_sums(q: IntArray) -> tuple[list[int], list[int]]:
    """Column sums of q and of q^2 as exact Python ints, at numpy speed.

    q^2 reaches 2^106 and sums of q beyond 2^63, so q is split into three limbs,
    q = a * 2^36 + b * 2^18 + c (0 <= b, c < 2^18, |a| <= 2^17): every limb product is
    below 2^36, an int64 sum of 2^24 rows of them cannot overflow, and the limb sums
    are combined in Python ints.
    """
    q = np.atleast_2d(np.asarray(q, dtype=np.int64))
    if q.size and int(np.abs(q).max()).bit_length() > _MAX_Q_BITS:
        raise CodecError(f"quantized values must stay below 2^{_MAX_Q_BITS}")
    mask = (1 << _LIMB) - 1
    limbs = (q >> (2 * _LIMB), (q >> _LIMB) & mask, q & mask)  # a, b, c
    d = q.shape[1]
    # Sums of each limb, and of each product of two limbs (i <= j).
    singles = [[0] * d for _ in range(3)]
    pairs = {(i, j): [0] * d for i in range(3) for j in range(i, 3)}
    for start in range(0, q.shape[0], _CHUNK):
        rows = slice(start, start + _CHUNK)
        parts = [limb[rows] for limb in limbs]
        for i in range(3):
            _add(singles[i], parts[i].sum(axis=0))
        for (i, j), acc in pairs.items():
            _add(acc, (parts[i] * parts[j]).sum(axis=0))
    # Limb i has weight 2^(18 * (2 - i)).
    weight = [2 * _LIMB, _LIMB, 0]
    sums = [sum(singles[i][k] << weight[i] for i in range(3)) for k in range(d)]
    squares = [sum((pairs[i, j][k] << (weight[i] + weight[j])) * (1 if i == j else 2)
                   for (i, j) in pairs) for k in range(d)]
    return sums, squares


def _add(acc: list[int], column_sums: IntArray) -> None:
    for k, value in enumerate(column_sums.tolist()):
        acc[k] += int(value)


class StatisticsRangeError(ProtocolError):
    """Data beyond the contract's range: the pooled mean and std would be wrong."""


def stats_length(spec: ModelSpec) -> int:
    """Values in a statistics update: [sum q (d), sum q^2 (d), label part, clipped per
    feature (d), clipped labels, n]; the label part is [sum q_y, sum q_y^2] for regression
    and the class counts for classification."""
    label = 2 if spec.kind == "linear" else spec.n_classes
    return 3 * spec.n_features + label + 2


@dataclass(frozen=True)
class LocalSums:
    """What one device encrypts in the statistics round; never leaves it in clear."""

    values: list[int]
    clipped: int  # values clipped to +-max_abs
    rows: int  # rows used (at most max_samples)


def local_statistics(X: FloatArray, y: FloatArray, spec: ModelSpec,
                     params: StatsParams) -> LocalSums:
    """Sums of the first ``max_samples`` rows; class labels checked against the spec."""
    X = np.asarray(X, dtype=np.float64)[: params.max_samples]
    y = np.asarray(y, dtype=np.float64)[: params.max_samples]
    if X.ndim != 2 or X.shape[1] != spec.n_features or X.shape[0] != y.shape[0] or not len(y):
        raise CodecError(f"statistics need rows of {spec.n_features} features and one label")
    if not np.all(np.isfinite(X)):
        raise CodecError("statistics take finite values only")
    # Per feature, so the gateway can name the column that does not fit the range.
    clipped_x = np.count_nonzero(np.abs(X) > params.max_abs, axis=0).tolist()
    qx, _ = quantize(X, params)
    sums, squares = exact_sums(qx)
    clipped_y = 0
    if spec.kind == "linear":
        qy, clipped_y = quantize(y, params)
        label_sums, label_squares = exact_sums(qy[:, None])
        label = [label_sums[0], label_squares[0]]
    else:
        # The model's own label check: the same reasons (and error codes) as in training.
        labels = make_model(spec)._check_targets(y, y.shape[0])
        label = np.bincount(labels, minlength=spec.n_classes).tolist()
    return LocalSums(values=[*sums, *squares, *label, *clipped_x, clipped_y, int(y.shape[0])],
                     clipped=sum(clipped_x) + clipped_y, rows=int(y.shape[0]))


@dataclass(frozen=True)
class FleetStatistics:
    """Pooled statistics of every contributing device's rows (population std, as sklearn)."""

    n: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    clipped: tuple[int, ...]  # values beyond +-max_abs, per feature
    label_mean: float | None = None
    label_std: float | None = None
    class_counts: tuple[int, ...] = ()
    clipped_label: int = 0

    @classmethod
    def from_sums(cls, sums: Sequence[int], spec: ModelSpec,
                  params: StatsParams) -> FleetStatistics:
        if len(sums) != stats_length(spec):
            raise CodecError(f"statistics sums have {len(sums)} values, the model needs "
                             f"{stats_length(spec)}")
        d, n = spec.n_features, int(sums[-1])
        if n < 1:
            raise CodecError(f"decoded statistics count {n} is not positive")
        clipped = tuple(int(c) for c in sums[-2 - d:-2])
        clipped_label = int(sums[-2])
        if min(*clipped, clipped_label) < 0 or max(*clipped, clipped_label) > n:
            raise CodecError("decoded clipped counts are not between 0 and the row count")
        mean, std = zip(*(_moments(sums[j], sums[d + j], n, params) for j in range(d)),
                        strict=True)
        label = sums[2 * d:-2 - d]
        if spec.kind == "linear":
            label_mean, label_std = _moments(label[0], label[1], n, params)
            return cls(n, mean, std, clipped, label_mean=label_mean, label_std=label_std,
                       clipped_label=clipped_label)
        counts = tuple(int(c) for c in label)
        if sum(counts) != n or min(counts) < 0:
            raise CodecError("decoded class counts do not add up to the row count")
        return cls(n, mean, std, clipped, class_counts=counts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _moments(s1: int, s2: int, n: int, params: StatsParams) -> tuple[float, float]:
    """Mean and population std from exact sums; the variance numerator is an exact int."""
    unit = 1 << params.fraction_bits
    numerator = n * s2 - s1 * s1  # = n^2 * var * 2^(2f), never negative for honest sums
    if numerator < 0:
        raise CodecError("decoded sums of squares are smaller than the square of the sums")
    return s1 / (n * unit), math.sqrt(numerator / (n * n * unit * unit))


def scaled_spec(spec: ModelSpec, stats: FleetStatistics,
                params: StatsParams) -> tuple[ModelSpec, list[str]]:
    """``spec`` with the pooled center/scale where the config gave none (datasheet wins).

    Returns the spec and the warnings worth a log line: constant features (scale 1)
    and classes no device holds. Raises StatisticsRangeError when a value the spec
    needs from the fleet was clipped: a mean and std of clipped data are wrong, and
    training on them would fail quietly.
    """
    _check_range(spec, stats, params)
    warnings: list[str] = []
    scale = []
    for name, s in zip(spec.features, stats.std, strict=True):
        if s <= params.resolution:
            warnings.append(f"feature {name!r} is constant across the fleet (std <= "
                            f"{params.resolution:.3g}); it gets scale 1")
            s = 1.0
        scale.append(s)
    fields: dict[str, Any] = {
        "center": spec.center if spec.center is not None else stats.mean,
        "scale": spec.scale if spec.scale is not None else tuple(scale)}
    if spec.kind == "linear" and stats.label_mean is not None and stats.label_std is not None:
        label_scale = stats.label_std
        if label_scale <= params.resolution:
            warnings.append("the label is constant across the fleet; it gets scale 1")
            label_scale = 1.0
        fields["target_center"] = (spec.target_center if spec.target_center is not None
                                   else stats.label_mean)
        fields["target_scale"] = (spec.target_scale if spec.target_scale is not None
                                  else label_scale)
    absent = [str(k) for k, c in enumerate(stats.class_counts) if c == 0]
    if absent:
        warnings.append(f"class{'es' if len(absent) > 1 else ''} {', '.join(absent)} of "
                        f"{spec.n_classes} appear{'' if len(absent) > 1 else 's'} in no "
                        "contributing device's data: the model cannot learn "
                        f"{'them' if len(absent) > 1 else 'it'}")
    data = {**spec.to_dict(), **fields}
    return ModelSpec.from_dict(data), warnings


def _check_range(spec: ModelSpec, stats: FleetStatistics, params: StatsParams) -> None:
    derived = spec.center is None or spec.scale is None
    beyond = [f"{name!r} ({count} values)" for name, count
              in zip(spec.features, stats.clipped, strict=True) if count and derived]
    if stats.clipped_label and (spec.target_center is None or spec.target_scale is None):
        beyond.append(f"the label ({stats.clipped_label} values)")
    if not beyond:
        return
    raise StatisticsRangeError(
        f"values beyond +-{params.max_abs:g} in {', '.join(beyond)}: their mean and standard "
        "deviation cannot be derived. Raise [statistics] max_abs above the largest "
        f"magnitude in the data (up to {params.max_abs_limit:.3g} with fraction_bits "
        f"{params.fraction_bits}; lower fraction_bits to go higher), or give [model] "
        "center/scale")
