"""Personal models under feature skew: per-device accuracy of global vs personal vs local-only.

``python -m fedmq.benchmarks.personal_skew [--seeds 3] [--rounds 25]``

Each scikit-learn data set is split over 8 devices (stratified, so the label mix is the
same everywhere) and every device then sees its features through its own gain and offset,
x_k = a_k * x + b_k per feature (a_k log-uniform in [0.5, 2], b_k ~ N(0, 1) feature stds):
feature skew only. Every device keeps a quarter of its rows (stratified) as held-out rows.
The global model is FedAvg over `fedmq init`'s [training] (2 epochs, batch 16, lr 0.1) with
the pooled standardisation the statistics round derives, in plaintext: the encrypted path
gives the same numbers to within the codec's resolution (tests/integration). Each
personal mode is edge_agent.personal as the devices run it, once per round from that
round's global model (Ditto warm-started across rounds); "intercept" from the global model
of a fleet whose signed mode is "intercept" (its devices train on their own
standardisation, edge_agent.personal.aligned_rows); local-only trains a model on the
device's own rows alone (its own standardisation, as many epochs as the federated run).
Accuracy on each device's held-out rows, averaged over the seeds.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.edge_agent.personal import (
    PersonalModel,
    aligned_rows,
    fit_personal,
    own_standardisation,
)
from fedmq.models import ModelSpec, make_model
from fedmq.protocol.messages import TrainingSettings

DEVICES = 8
METHODS = ("global", "finetune", "ditto", "intercept", "local-only")
SETTINGS = TrainingSettings(epochs=2, batch_size=16, learning_rate=0.1)

Device = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
               NDArray[np.float64]]  # X_train, y_train, X_test, y_test


def load(name: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    from sklearn import datasets

    loader = {"wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer,
              "iris": datasets.load_iris}[name]
    X, y = loader(return_X_y=True)
    return X.astype(np.float64), y.astype(np.float64)


def skewed_fleet(X: NDArray[np.float64], y: NDArray[np.float64], seed: int) -> list[Device]:
    """Stratified split over the devices, a per-device gain/offset per feature, and a
    stratified quarter of each device's rows held out."""
    rng = np.random.default_rng(seed)
    owner = np.empty(len(y), dtype=int)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        owner[rows] = np.arange(len(rows)) % DEVICES
    std = X.std(axis=0)
    devices = []
    for k in range(DEVICES):
        rows = np.flatnonzero(owner == k)
        gain = np.exp(rng.uniform(np.log(0.5), np.log(2.0), X.shape[1]))
        offset = rng.normal(size=X.shape[1]) * std
        Xk, yk = X[rows] * gain + offset, y[rows]
        test = np.zeros(len(rows), dtype=bool)
        for c in np.unique(yk):
            of_c = rng.permutation(np.flatnonzero(yk == c))
            test[of_c[: max(1, round(0.25 * len(of_c)))] if len(of_c) > 1 else []] = True
        devices.append((Xk[~test], yk[~test], Xk[test], yk[test]))
    return devices


def accuracy(model: Any, X: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    return float((model.predict(X) == y).mean())


def fedavg(spec: ModelSpec, devices: list[Device], seed: int, rounds: int, *,
           aligned: bool = False) -> tuple[NDArray[np.float64], list[PersonalModel | None]]:
    """The global model after ``rounds`` rounds (and each device's Ditto model, which
    follows every round as on the devices); ``aligned``: a fleet whose mode is
    "intercept" trains on every device's own standardisation."""
    w = np.zeros(spec.n_params)
    ditto: list[PersonalModel | None] = [None] * DEVICES
    for r in range(rounds):
        deltas, weights = [], []
        for k, (Xt, yt, _, _) in enumerate(devices):
            model = make_model(spec, learning_rate=SETTINGS.learning_rate, epochs=SETTINGS.epochs,
                               batch_size=SETTINGS.batch_size, seed=seed * 1000 + r * 10 + k)
            rows = aligned_rows(spec, Xt) if aligned else Xt
            deltas.append(model.fit(rows, yt, init_params=w).params_ - w)
            weights.append(len(yt))
            if not aligned:
                ditto[k] = fit_personal("ditto", spec, replace(SETTINGS, personal="ditto"), w,
                                        Xt, yt, previous=ditto[k], seed=seed * 1000 + k)
        w = w + np.average(deltas, axis=0, weights=weights)
    return w, ditto


def run(name: str, seed: int, rounds: int) -> dict[str, list[float]]:
    X, y = load(name)
    devices = skewed_fleet(X, y, seed)
    features = tuple(f"f{i}" for i in range(X.shape[1]))
    pooled = np.concatenate([d[0] for d in devices])
    spec = ModelSpec(kind="logistic", features=features, n_classes=int(y.max()) + 1,
                     center=tuple(pooled.mean(axis=0)), scale=tuple(pooled.std(axis=0)))
    w, ditto = fedavg(spec, devices, seed, rounds)
    w_aligned, _ = fedavg(spec, devices, seed, rounds, aligned=True)
    out: dict[str, list[float]] = {m: [] for m in METHODS}
    glob = make_model(spec).set_params_vector(w)
    for k, (Xt, yt, Xs, ys) in enumerate(devices):
        out["global"].append(accuracy(glob, Xs, ys))
        p = fit_personal("finetune", spec, replace(SETTINGS, personal="finetune"), w, Xt, yt,
                         seed=seed * 1000 + k)
        out["finetune"].append(accuracy(p, Xs, ys))
        p = fit_personal("intercept", spec, replace(SETTINGS, personal="intercept"), w_aligned,
                         Xt, yt)
        out["intercept"].append(accuracy(p, Xs, ys))
        # The final round's Ditto model (fitted from the final global model, as the
        # devices do in the final evaluation round).
        d = fit_personal("ditto", spec, replace(SETTINGS, personal="ditto"), w, Xt, yt,
                         previous=ditto[k], seed=seed * 1000 + k)
        out["ditto"].append(accuracy(d, Xs, ys))
        local_spec = own_standardisation(spec, Xt)
        local = make_model(local_spec, learning_rate=SETTINGS.learning_rate,
                           epochs=SETTINGS.epochs * rounds, batch_size=SETTINGS.batch_size,
                           seed=seed).fit(Xt, yt)
        out["local-only"].append(accuracy(local, Xs, ys))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--datasets", nargs="+", default=["wine", "breast_cancer", "iris"])
    args = p.parse_args(argv)
    for name in args.datasets:
        runs = [run(name, seed, args.rounds) for seed in range(args.seeds)]
        per = {m: np.mean([r[m] for r in runs], axis=0) for m in METHODS}
        spread = {m: np.std([np.mean(r[m]) for r in runs]) for m in METHODS}
        print(f"\n{name}: {DEVICES} devices, feature skew (gain/offset per device), "
              f"{args.rounds} rounds, {args.seeds} seeds; held-out accuracy per device")
        print("| device | " + " | ".join(METHODS) + " |")
        print("|---" * (len(METHODS) + 1) + "|")
        for k in range(DEVICES):
            print(f"| {k} | " + " | ".join(f"{per[m][k]:.3f}" for m in METHODS) + " |")
        print("| mean (± seeds' std) | " + " | ".join(
            f"{per[m].mean():.3f} ± {spread[m]:.3f}" for m in METHODS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
