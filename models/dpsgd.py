"""Sample-level DP-SGD (Abadi et al. 2016) for the linear-map models. Pure.

Each step keeps every row independently with probability ``sampling_rate``
(Poisson sampling: the batch may be empty), clips each row's gradient of the
training loss with respect to the whole parameter matrix P (intercept column
included) to L2 norm ``clip``, sums, adds N(0, (noise_multiplier * clip)^2) to
every coordinate and divides by a FIXED expected batch size (the plan's
``sampling_rate * n``, i.e. the announced batch size): dividing by the actual
batch size would reveal it, and recomputing it from the rows at hand would let
one added row rescale every other row's step. Adding or removing one row
therefore moves the noise-free sum of a step by at most ``clip`` and changes
nothing else, which is the sensitivity ``protocol.privacy.accounting.sample_level_event``
accounts for.

The L2 penalty and the FedProx term depend on no row, so they are applied after the
noise, unclipped (the prox term as the model's proximal step, BaseLinearMapModel._descend).
A distillation term (logistic models) is part of each row's gradient, so it is clipped
with the row: the teacher is a published fleet quantity, and each row's gradient still
depends on that row only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedmq.models.base import BaseLinearMapModel, FloatArray
from fedmq.models.errors import ModelError

_Model = TypeVar("_Model", bound=BaseLinearMapModel)


@dataclass(frozen=True)
class DpSgd:
    """What one device's DP-SGD run does: per-example clip, noise, sampling, step count.

    ``expected_batch`` is the fixed denominator of every step (sampling_rate * n of
    the data the plan was made for), not recomputed from the rows being trained.
    """

    clip: float
    noise_multiplier: float
    sampling_rate: float
    steps: int
    expected_batch: float

    def __post_init__(self) -> None:
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ModelError(f"DP-SGD clip must be a finite number > 0, got {self.clip!r}")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ModelError("DP-SGD noise multiplier must be a finite number >= 0, "
                             f"got {self.noise_multiplier!r}")
        if not (0 < self.sampling_rate <= 1):
            raise ModelError(f"DP-SGD sampling rate must lie in (0, 1], got {self.sampling_rate!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ModelError(f"DP-SGD steps must be an integer >= 1, got {self.steps!r}")
        if not (self.expected_batch > 0 and math.isfinite(self.expected_batch)):
            raise ModelError("DP-SGD expected batch must be a finite number > 0, "
                             f"got {self.expected_batch!r}")


def clipped_gradient_sum(G: FloatArray, Z: FloatArray, clip: float) -> FloatArray:
    """Sum over rows of outer(G_i, [z_i, 1]), each scaled down to L2 norm <= clip.

    The Frobenius norm of an outer product is the product of the two vectors' norms,
    so no per-row matrix is ever built: memory stays O(batch * (d + m)).
    """
    Zt = np.hstack([Z, np.ones((Z.shape[0], 1))])
    norms = np.linalg.norm(G, axis=1) * np.linalg.norm(Zt, axis=1)
    # Rows already inside the ball keep their gradient; the floor avoids 0/0.
    factor = np.minimum(1.0, clip / np.maximum(norms, 1e-300))
    total: FloatArray = (G * factor[:, None]).T @ Zt
    return total


def fit_dpsgd(model: _Model, X: ArrayLike, y: ArrayLike, dp: DpSgd, *,
              init_params: ArrayLike | None = None, seed: int | None = None) -> _Model:
    """Train ``model`` from ``init_params`` with ``dp.steps`` DP-SGD steps; returns it.

    The model's learning_rate and l2 apply; its epochs, batch_size and seed do not
    (``dp`` fixes sampling and step count, and a noise seed stored in a config
    would let whoever reads it subtract the noise). ``seed`` is for tests and
    experiments only: None draws fresh OS entropy, as a device must.

    Every step draws its noise and its row mask from its own child of one
    SeedSequence, noise first: row i's inclusion then does not depend on how
    many rows follow it, so a neighbouring data set (one row appended) sees the
    same noise and the same batches of the other rows.
    """
    Z, targets, params = model._prepare(X, y, init_params)
    n = Z.shape[0]
    m, d = model.spec.n_outputs, model.spec.n_features
    P = params.reshape(m, d + 1)
    sigma = dp.noise_multiplier * dp.clip
    l2 = float(model.l2)
    step_seeds = np.random.SeedSequence(seed).spawn(dp.steps)
    with np.errstate(over="ignore", invalid="ignore"):
        for step, child in enumerate(step_seeds):
            rng = np.random.default_rng(child)
            noise = sigma * rng.standard_normal(P.shape)
            batch = rng.random(n) < dp.sampling_rate
            grad = _noised_mean(model, P, Z[batch], targets[batch], dp.clip, noise,
                                dp.expected_batch)
            grad[:, :d] += l2 * P[:, :d]
            model._descend(P, grad)  # in place: P is a view of params
            model._check_finite(P, f"DP-SGD step {step + 1}")
    model.params_ = params
    model.n_samples_seen_ = n
    return model


def _noised_mean(model: BaseLinearMapModel, P: FloatArray, Z: FloatArray, y: NDArray[Any],
                 clip: float, noise: FloatArray, expected_batch: float) -> FloatArray:
    """(sum of clipped per-row gradients + noise) / expected batch size."""
    if Z.shape[0] == 0:
        # An empty Poisson batch still takes its noisy step: skipping it would show.
        return noise / expected_batch
    d = model.spec.n_features
    G = model._training_gradient(Z @ P[:, :d].T + P[:, d], y)
    out: FloatArray = (clipped_gradient_sum(G, Z, clip) + noise) / expected_batch
    return out
