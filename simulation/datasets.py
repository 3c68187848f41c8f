"""Real public data sets that ship with scikit-learn, split non-IID over a fleet of devices.

The end-to-end check of federated learning on data nobody pooled: each device gets
a CSV with the RAW feature columns (no scaling: magnitudes from below 1 to above
1000 side by side, as sensors deliver them) and the label; a stratified held-out
test share is kept apart for the comparison with centralized scikit-learn.
Classification is split label-skewed by a Dirichlet(alpha) draw per class (some
devices lack whole classes); regression in contiguous shards sorted by the target
(each device sees one range of outcomes). Everything is seeded: the same options
give the same files. scikit-learn (the gateway extra) is imported only when used.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.protocol.errors import ConfigError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

LABEL = "target"


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str  # "logistic" (classification) or "linear" (regression), as ModelSpec.kind
    features: tuple[str, ...]
    X: FloatArray  # raw, unscaled
    y: FloatArray  # class index 0..n_classes-1, or the regression target
    n_classes: int = 0
    label: str = LABEL

    @property
    def metric(self) -> str:
        return "accuracy" if self.kind == "logistic" else "r2"


@dataclass(frozen=True)
class Split:
    """Row indices into ``dataset``: the held-out test rows and each device's rows."""

    dataset: Dataset
    test: IntArray
    devices: tuple[IntArray, ...]

    @property
    def train(self) -> IntArray:
        return np.sort(np.concatenate(self.devices))

    def xy(self, rows: IntArray) -> tuple[FloatArray, FloatArray]:
        return self.dataset.X[rows], self.dataset.y[rows]


def sanitise(name: str) -> str:
    """A column name fit for a CSV header and a TOML list: lower case, [a-z0-9_]."""
    clean = re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")
    return clean or "feature"


def _sklearn_loader(name: str) -> Callable[[], Any]:
    try:
        from sklearn import datasets as skd
    except ImportError as exc:  # pragma: no cover - the gateway extra brings it
        raise ConfigError('real data sets need scikit-learn: pip install "fedmq[gateway]"') \
            from exc
    loaders: dict[str, Callable[[], Any]] = {
        "wine": skd.load_wine, "breast_cancer": skd.load_breast_cancer, "iris": skd.load_iris,
        "digits": skd.load_digits,
        # load_diabetes() is mean-centred and scaled already; raw values are the real test.
        "diabetes": lambda: skd.load_diabetes(scaled=False)}
    return loaders[name]


# name -> (kind, n_classes); all ship inside scikit-learn's wheel (no download).
DATASETS: dict[str, tuple[str, int]] = {
    "wine": ("logistic", 3), "breast_cancer": ("logistic", 2), "diabetes": ("linear", 0),
    "iris": ("logistic", 3), "digits": ("logistic", 10)}
DEFAULT_DATASETS = ("wine", "breast_cancer", "diabetes")


def load(name: str) -> Dataset:
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    kind, n_classes = DATASETS[name]
    bunch = _sklearn_loader(name)()
    names = [sanitise(str(f)) for f in bunch.feature_names]
    if len(set(names)) != len(names) or LABEL in names:  # pragma: no cover - fixed data
        raise ConfigError(f"data set {name}: feature names clash after sanitising")
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.float64)
    return Dataset(name, kind, tuple(names), X, y, n_classes)


def _held_out(ds: Dataset, share: float, rng: np.random.Generator) -> IntArray:
    """Stratified by class (by target quintile for regression): the test set mirrors the data."""
    if ds.kind == "logistic":
        strata = ds.y.astype(np.int64)
    else:
        edges = np.quantile(ds.y, [0.2, 0.4, 0.6, 0.8])
        strata = np.searchsorted(edges, ds.y, side="right").astype(np.int64)
    picked = []
    for s in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == s))
        picked.append(rows[: round(share * rows.size)])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _dirichlet_shards(rows: IntArray, y: FloatArray, devices: int, alpha: float,
                      min_rows: int, rng: np.random.Generator) -> tuple[IntArray, ...]:
    """Label skew: class c's rows go to devices in Dirichlet(alpha) proportions."""
    for _attempt in range(1000):
        shards: list[list[int]] = [[] for _ in range(devices)]
        for c in np.unique(y[rows]):
            members = rng.permutation(rows[y[rows] == c])
            cuts = (np.cumsum(rng.dirichlet(np.full(devices, alpha)))[:-1]
                    * members.size).astype(int)
            for d, part in enumerate(np.split(members, cuts)):
                shards[d] += part.tolist()
        if min(len(s) for s in shards) >= min_rows:
            return tuple(np.sort(np.asarray(s, dtype=np.int64)) for s in shards)
    raise ConfigError(f"cannot give each of {devices} devices {min_rows} rows with "
                      f"alpha={alpha}: use fewer devices or a larger alpha")


def split(ds: Dataset, *, devices: int = 8, test_share: float = 0.3, alpha: float = 0.5,
          min_rows: int = 5, seed: int = 0) -> Split:
    """Held-out test rows, then the rest over ``devices`` devices, non-IID."""
    if devices < 1 or not 0.0 < test_share < 1.0 or alpha <= 0 or min_rows < 1:
        raise ConfigError("split needs devices >= 1, 0 < test_share < 1, alpha > 0, "
                          "min_rows >= 1")
    rng = np.random.default_rng(seed)
    test = _held_out(ds, test_share, rng)
    rest = np.setdiff1d(np.arange(ds.y.size), test).astype(np.int64)
    if rest.size < devices * min_rows:
        raise ConfigError(f"data set {ds.name}: {rest.size} training rows cannot give "
                          f"{devices} devices {min_rows} rows each")
    if ds.kind == "logistic":
        shards = _dirichlet_shards(rest, ds.y, devices, alpha, min_rows, rng)
    else:
        # Sorted by target (ties broken at random): each device sees one range of outcomes.
        order = rest[np.lexsort((rng.random(rest.size), ds.y[rest]))]
        shards = tuple(np.sort(s) for s in np.array_split(order, devices))
    return Split(ds, test, shards)


def write_csv(path: Path, ds: Dataset, rows: IntArray) -> Path:
    """The rows' raw feature columns and the label, as a device would hold them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*ds.features, ds.label])
        for r in rows:
            label: float | int = int(ds.y[r]) if ds.kind == "logistic" else float(ds.y[r])
            writer.writerow([*(repr(float(v)) for v in ds.X[r]), label])
    return path


def device_ids(devices: int) -> list[str]:
    """The ids ``fedmq init gateway --device-count`` gives."""
    return [f"dev-{i:03d}" for i in range(devices)]


def write_split(sp: Split, out: Path) -> dict[str, Path]:
    """``<out>/<device id>.csv`` per device and ``<out>/test.csv``; returns id -> path."""
    paths = {dev: write_csv(out / f"{dev}.csv", sp.dataset, rows)
             for dev, rows in zip(device_ids(len(sp.devices)), sp.devices, strict=True)}
    paths["test"] = write_csv(out / "test.csv", sp.dataset, sp.test)
    return paths


def pooled_scaling(sp: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """StandardScaler's mean_ and scale_ over all devices' rows: the pooled, "cheating"
    baseline (what the federated statistics round must reproduce without pooling)."""
    X = sp.dataset.X[sp.train]
    std = X.std(axis=0)
    std[std == 0.0] = 1.0  # as StandardScaler does for constant features
    return tuple(float(v) for v in X.mean(axis=0)), tuple(float(v) for v in std)


def centralized_score(sp: Split) -> float:
    """What a data scientist with every device's raw rows in one place gets on the test
    rows: StandardScaler + LogisticRegression (accuracy) or LinearRegression (R^2)."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator: Any = (LogisticRegression(max_iter=5000) if sp.dataset.kind == "logistic"
                      else LinearRegression())
    pipe = make_pipeline(StandardScaler(), estimator).fit(*sp.xy(sp.train))
    return float(pipe.score(*sp.xy(sp.test)))
