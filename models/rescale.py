"""Carry a model's parameters into another standardisation of the same features, exactly.

A scheduled run (aggregator.schedule) starts from the last run's final model, but its
statistics round may derive a new center/scale (the data drifted). The parameters act on
standardised features ``z = (x - center) / scale`` (and, for a linear model, predict the
standardised label), so they are folded back to raw features and unfolded into the new
standardisation: every prediction of the mapped model equals the old one's.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedmq.models.base import as_param_vector
from fedmq.models.errors import ModelError
from fedmq.models.spec import ModelSpec

FloatArray = NDArray[np.float64]


def _standardization(spec: ModelSpec) -> tuple[FloatArray, FloatArray]:
    d = spec.n_features
    center = np.zeros(d) if spec.center is None else np.asarray(spec.center, dtype=np.float64)
    scale = np.ones(d) if spec.scale is None else np.asarray(spec.scale, dtype=np.float64)
    return center, scale


def same_model(old: ModelSpec, new: ModelSpec) -> bool:
    """True when ``old``'s parameters mean something to ``new`` (only scaling differs)."""
    return (old.kind, old.features, old.n_classes) == (new.kind, new.features, new.n_classes)


def restandardize(old: ModelSpec, new: ModelSpec, params: ArrayLike) -> FloatArray:
    """``params`` of ``old`` as parameters of ``new`` with the same predictions.

    ModelError when the two specs are not the same model (other kind, features or
    classes): those parameters cannot be carried over.
    """
    if not same_model(old, new):
        raise ModelError(f"cannot carry a {old.kind} model of features {list(old.features)} "
                         f"({old.n_classes} classes) into a {new.kind} model of features "
                         f"{list(new.features)} ({new.n_classes} classes)")
    if old == new:  # bit for bit: the folding below rounds
        return as_param_vector(params, old.n_params)
    d = old.n_features
    P = as_param_vector(params, old.n_params).reshape(old.n_outputs, d + 1)
    c_old, s_old = _standardization(old)
    c_new, s_new = _standardization(new)
    # Raw scores: x @ W_raw.T + b_raw, in the old label standardisation.
    W_raw = P[:, :d] / s_old
    b_raw = P[:, d] - W_raw @ c_old
    # Label = tc + ts * score: the new score is (tc_old - tc_new + ts_old * score) / ts_new.
    tc_old, ts_old = old.target_affine
    tc_new, ts_new = new.target_affine
    W_raw = W_raw * (ts_old / ts_new)
    b_raw = (b_raw * ts_old + tc_old - tc_new) / ts_new
    out = np.empty_like(P)
    out[:, :d] = W_raw * s_new
    out[:, d] = b_raw + W_raw @ c_new
    result: FloatArray = out.reshape(-1)
    if not np.all(np.isfinite(result)):
        raise ModelError("the carried-over parameters are not finite")
    return result
