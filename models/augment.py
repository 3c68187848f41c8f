"""On-device augmentation of the training rows: class-balanced oversampling and jitter. Pure.

Two modes, combinable (``TrainingSettings.augment``):

- ``oversample`` (classifiers only): every class present on the device is resampled,
  with replacement, up to the count of its largest class; the original rows all stay.
  A device holding 30 rows of "ok" and 3 of "fault" then trains on 30 and 30: its
  local optimum is pulled less towards always answering "ok". Classes the device does
  not hold stay absent (nothing can be invented for them).
- ``jitter``: one perturbed copy of every row is appended: Gaussian noise of
  ``amplitude`` times the column's standard deviation (on these rows), and the whole
  row scaled by ``1 + U(-amplitude, amplitude)`` (a sensor's gain error). The label
  is copied unchanged.

Only training rows are augmented: the losses before/after and every evaluation use
the real rows. Every draw comes from one ``numpy.random.Generator`` seeded by the
training seed (None: fresh entropy), so a seeded run is reproducible.
"""

from __future__ import annotations

import numpy as np

from fedmq.models.base import FloatArray
from fedmq.models.errors import ModelError

AUGMENTS = ("none", "oversample", "jitter", "oversample+jitter")


def oversample(X: FloatArray, y: FloatArray, rng: np.random.Generator) -> tuple[FloatArray,
                                                                                 FloatArray]:
    """All rows, plus rows of each smaller class drawn with replacement up to the largest."""
    classes, counts = np.unique(y, return_counts=True)
    target = int(counts.max())
    extra = [rng.choice(np.flatnonzero(y == c), size=target - int(n), replace=True)
             for c, n in zip(classes, counts, strict=True) if n < target]
    if not extra:
        return X, y
    picked = np.concatenate(extra)
    return np.vstack([X, X[picked]]), np.concatenate([y, y[picked]])


def jitter(X: FloatArray, y: FloatArray, amplitude: float,
           rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """All rows, plus one copy with column-scaled Gaussian noise and a random row gain."""
    if amplitude == 0:
        return X, y
    # Population std of these rows: a device's own spread, 0 for a constant column (no noise).
    noise = rng.standard_normal(X.shape) * (amplitude * X.std(axis=0))
    gain = 1.0 + rng.uniform(-amplitude, amplitude, size=(X.shape[0], 1))
    return np.vstack([X, (X + noise) * gain]), np.concatenate([y, y])


def augment(X: FloatArray, y: FloatArray, mode: str, *, amplitude: float = 0.05,
            classifier: bool = True, seed: int | None = None) -> tuple[FloatArray, FloatArray]:
    """The training rows ``mode`` asks for (oversampling first, then jitter of all of them)."""
    if mode not in AUGMENTS:
        raise ModelError(f"augment must be one of {', '.join(AUGMENTS)}, got {mode!r}")
    if not 0 <= amplitude <= 1:
        raise ModelError(f"jitter amplitude must lie in [0, 1], got {amplitude!r}")
    if mode == "none":
        return X, y
    if "oversample" in mode and not classifier:
        raise ModelError("oversampling balances classes; a regression model has none")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if "oversample" in mode:
        X, y = oversample(X, y, rng)
    if "jitter" in mode:
        X, y = jitter(X, y, amplitude, rng)
    return X, y
