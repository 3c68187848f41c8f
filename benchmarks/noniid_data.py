"""The non-IID fleets of ``fedmq bench-noniid``: data sets and the skews that deal them out.

A data set (scikit-learn's real ones with RAW features, or the synthetic machine fleet
pooled) is split into a stratified held-out test set and the rest, which a skew deals
out to the devices; each device then keeps a share of its own rows as its own held-out
rows (per-device accuracy: global vs personal vs local-only), plus a draw of the global
test rows that follows its own distribution (its class mix, through its own sensors under
feature skew), so per-device scores are not read off five rows. Skews:

- ``iid``: rows dealt at random, equal counts (the control);
- ``pathological``: each device holds 1 or 2 classes (McMahan et al. 2017);
- ``dirichlet0.1``, ``dirichlet0.5``: each device's class mix drawn from Dirichlet(alpha)
  (Hsu et al. 2019) at (nearly) equal row counts: that keeps it apart from quantity skew,
  and gives every device rows even with alpha = 0.1 on wine's 124 training rows;
- ``feature``: IID rows, but each device's sensors have their own gain and offset per
  feature (calibration): x' = gain * x + offset, gain ~ lognormal(0, 0.25), offset ~
  N(0, 0.5 std); the global test rows each come from a random device;
- ``quantity``: IID labels, row counts in Dirichlet(0.5) proportions;
- ``natural``: the synthetic fleet only, each device one simulated machine.

Regression targets are skewed through their quintiles, which stand in for classes.
Everything is seeded: the same (data set, skew, devices, seed) give the same fleet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedmq.protocol.errors import ConfigError
from fedmq.simulation import datasets, synthetic

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

SKEWS = ("iid", "pathological", "dirichlet0.1", "dirichlet0.5", "feature", "quantity",
         "natural")
LABEL_SKEWS = ("pathological", "dirichlet0.1", "dirichlet0.5")
# name -> (synthetic label column, kind, classes): the machine fleet pooled as a data set.
SYNTHETIC = {"synthetic": ("fault_type", "logistic", len(synthetic.FAULT_TYPES)),
             "synthetic_temp": ("next_temperature_c", "linear", 0)}
DATASETS = (*datasets.DATASETS, *SYNTHETIC)
MIN_ROWS = 6  # per device: a few to train on and at least one of its own to test on
TEST_SHARE = 0.3  # the global held-out test set
OWN_TEST_SHARE = 0.3  # each device's own held-out rows
SYNTHETIC_ROWS = 120  # mean rows per simulated machine


@dataclass(frozen=True)
class Source:
    """A data set as rows; ``origin``: the machine each row came from (synthetic only)."""

    name: str
    kind: str  # "logistic" or "linear", as ModelSpec.kind
    features: tuple[str, ...]
    X: FloatArray
    y: FloatArray
    n_classes: int = 0
    origin: IntArray | None = None

    @property
    def metric(self) -> str:
        return "accuracy" if self.kind == "logistic" else "r2"

    def strata(self) -> IntArray:
        """Class index, or for a regression the target's quintile (0..4)."""
        if self.kind == "logistic":
            return self.y.astype(np.int64)
        edges = np.quantile(self.y, [0.2, 0.4, 0.6, 0.8])
        return np.searchsorted(edges, self.y, side="right").astype(np.int64)


@dataclass(frozen=True)
class Device:
    """One device's rows: what it trains on and its own held-out rows."""

    X: FloatArray
    y: FloatArray
    X_test: FloatArray  # its own held-out rows first, then those drawn from the test set
    y_test: FloatArray
    own_test: int = 0  # how many of X_test are its own rows

    @property
    def n(self) -> int:
        return int(self.y.size)


@dataclass(frozen=True)
class Fleet:
    source: Source
    skew: str
    seed: int
    devices: tuple[Device, ...]
    X_test: FloatArray  # the global held-out test set
    y_test: FloatArray

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def metric(self) -> str:
        return self.source.metric

    def pooled(self) -> tuple[FloatArray, FloatArray]:
        """Every device's training rows in one place (the centralized baseline's data)."""
        return (np.concatenate([d.X for d in self.devices]),
                np.concatenate([d.y for d in self.devices]))


def load(name: str, devices: int = 8) -> Source:
    """A real data set (raw features) or the synthetic fleet of ``devices`` machines pooled."""
    if name in SYNTHETIC:
        label, kind, classes = SYNTHETIC[name]
        machines = synthetic.generate_fleet(synthetic.FleetSpec(
            n_devices=devices, samples_per_device=SYNTHETIC_ROWS, test_fraction=0.0, seed=0))
        cols = synthetic.columns()
        rows = [d.train for d in machines]
        feats = [np.column_stack([synthetic.column(r, cols, f) for f in synthetic.FEATURES])
                 for r in rows]
        return Source(name, kind, synthetic.FEATURES, np.concatenate(feats),
                      np.concatenate([synthetic.column(r, cols, label) for r in rows]),
                      classes, np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)]))
    if name not in datasets.DATASETS:
        raise ConfigError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    ds = datasets.load(name)
    return Source(name, ds.kind, ds.features, ds.X, ds.y, ds.n_classes)


def held_out(strata: IntArray, share: float, rng: np.random.Generator) -> IntArray:
    """Stratified: the test rows have each stratum's share of the data."""
    picked = [rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)]
    return np.sort(np.concatenate([p[: round(share * p.size)] for p in picked])).astype(np.int64)


def _even(rows: IntArray, devices: int, rng: np.random.Generator) -> list[IntArray]:
    return list(np.array_split(rng.permutation(rows), devices))


def _dirichlet(rows: IntArray, strata: IntArray, devices: int, alpha: float,
               rng: np.random.Generator) -> list[IntArray]:
    """Each device's class mix drawn from Dirichlet(alpha), then scaled (Sinkhorn) so the
    devices hold equal row counts and the classes all their rows; each class's rows are
    dealt by the scaled mix, rounded by largest remainder."""
    classes, counts = np.unique(strata[rows], return_counts=True)
    sizes = np.array([len(s) for s in np.array_split(rows, devices)], dtype=np.float64)
    plan = rng.dirichlet(np.full(classes.size, alpha), devices) + 1e-12
    for _ in range(500):
        plan *= (sizes / plan.sum(axis=1))[:, None]
        plan *= (counts / plan.sum(axis=0))[None, :]
    shards: list[list[int]] = [[] for _ in range(devices)]
    for j, c in enumerate(classes):
        share = plan[:, j]
        take = np.floor(share).astype(int)
        extra = int(counts[j] - take.sum())
        take[np.argsort(take - share)[:extra]] += 1  # largest fractional parts first
        members = rng.permutation(rows[strata[rows] == c])
        for d, part in enumerate(np.split(members, np.cumsum(take)[:-1])):
            shards[d] += part.tolist()
    return [np.asarray(s, dtype=np.int64) for s in shards]


def _pathological(rows: IntArray, strata: IntArray, devices: int,
                  rng: np.random.Generator) -> list[IntArray]:
    """Each device 1 or 2 classes, every class on some device, a class's rows shared
    evenly among the devices holding it."""
    classes = np.unique(strata[rows])
    if 2 * devices < classes.size:
        raise ConfigError(f"pathological skew: {devices} devices cannot hold "
                          f"{classes.size} classes at 2 each")
    k = rng.integers(1, 3, devices)
    if k.sum() < classes.size:
        k[:] = 2
    order = rng.permutation(classes).tolist()
    slots = (order * (2 * devices // len(order) + 1))[: int(k.sum())]
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    start = 0
    for d in range(devices):
        for c in slots[start:start + int(k[d])]:
            holders[int(c)].append(d)
        start += int(k[d])
    shards: list[list[int]] = [[] for _ in range(devices)]
    for c, who in holders.items():
        members = rng.permutation(rows[strata[rows] == c])
        for d, part in zip(who, np.array_split(members, len(who)), strict=True):
            shards[d] += part.tolist()
    return [np.asarray(s, dtype=np.int64) for s in shards]


def _quantity(rows: IntArray, devices: int, rng: np.random.Generator) -> list[IntArray]:
    shares = rng.dirichlet(np.full(devices, 0.5))
    spare = rows.size - MIN_ROWS * devices  # everybody gets MIN_ROWS, the rest by share
    counts = MIN_ROWS + np.floor(shares * spare).astype(int)
    counts[np.argmax(shares)] += rows.size - counts.sum()
    return list(np.split(rng.permutation(rows), np.cumsum(counts)[:-1]))


def deal(source: Source, rows: IntArray, skew: str, devices: int,
         rng: np.random.Generator) -> list[IntArray]:
    """``rows`` over ``devices`` devices as ``skew`` says; every device >= MIN_ROWS rows."""
    strata = source.strata()
    for _attempt in range(200):
        if skew in ("iid", "feature"):
            shards = _even(rows, devices, rng)
        elif skew == "pathological":
            shards = _pathological(rows, strata, devices, rng)
        elif skew.startswith("dirichlet"):
            shards = _dirichlet(rows, strata, devices, float(skew[len("dirichlet"):]), rng)
        elif skew == "quantity":
            shards = _quantity(rows, devices, rng)
        elif skew == "natural":
            if source.origin is None or int(source.origin.max()) + 1 != devices:
                raise ConfigError("the natural skew needs the synthetic fleet with as many "
                                  "machines as devices")
            shards = [rows[source.origin[rows] == d] for d in range(devices)]
        else:
            raise ConfigError(f"unknown skew {skew!r}; choose from {', '.join(SKEWS)}")
        if min(s.size for s in shards) >= MIN_ROWS:
            return [np.sort(s) for s in shards]
    raise ConfigError(f"{source.name}: cannot give each of {devices} devices {MIN_ROWS} rows "
                      f"with the {skew} skew: use fewer devices")


def calibration(source: Source, devices: int,
                rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """Per device and feature: (gain, offset) of its sensors, offsets in units of the
    feature's spread (shape devices x features each)."""
    d = source.X.shape[1]
    spread = source.X.std(axis=0)
    gain = rng.lognormal(0.0, 0.25, (devices, d))
    offset = rng.normal(0.0, 0.5, (devices, d)) * spread
    return gain, offset


def make_fleet(source: Source, skew: str, *, devices: int = 8, seed: int = 0) -> Fleet:
    if devices < 2:
        raise ConfigError("bench-noniid needs at least 2 devices")
    rng = np.random.default_rng([seed, SKEWS.index(skew) if skew in SKEWS else 99])
    test = held_out(source.strata(), TEST_SHARE, rng)
    rest = np.setdiff1d(np.arange(source.y.size), test).astype(np.int64)
    shards = deal(source, rest, skew, devices, rng)
    X, y = source.X, source.y
    X_test = X[test]
    if skew == "feature":
        gain, offset = calibration(source, devices, rng)
        X = X.copy()
        for k, shard in enumerate(shards):
            X[shard] = X[shard] * gain[k] + offset[k]
        owner = rng.integers(0, devices, test.size)
        X_test = X_test * gain[owner] + offset[owner]
    strata = source.strata()
    fleet = []
    for k, shard in enumerate(shards):
        rows = rng.permutation(shard)
        own = max(1, round(OWN_TEST_SHARE * rows.size))
        # A device's few held-out rows are a coarse measure (wine: ~5); the global test
        # rows drawn by its own class mix, through its own sensors, add a finer one.
        mix = np.bincount(strata[shard], minlength=strata.max() + 1) / shard.size
        per = np.bincount(strata[test], minlength=strata.max() + 1)
        p = mix[strata[test]] / per[strata[test]]
        drawn = rng.choice(test, size=test.size, p=p / p.sum())
        Xd = source.X[drawn]
        if skew == "feature":
            Xd = Xd * gain[k] + offset[k]
        fleet.append(Device(X[rows[own:]], y[rows[own:]],
                            np.concatenate([X[rows[:own]], Xd]),
                            np.concatenate([y[rows[:own]], y[drawn]]), own))
    return Fleet(source, skew, seed, tuple(fleet), X_test, y[test])
