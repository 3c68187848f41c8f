"""Federated statistics equal StandardScaler on the pooled rows, through real encryption."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import add_ciphertexts, decrypt_ints, encrypt_ints
from fedmq.protocol.errors import CodecError, CodecOverflowError
from fedmq.protocol.layout import layout_for
from fedmq.protocol.sums.statistics import (
    FleetStatistics,
    StatisticsRangeError,
    StatsParams,
    exact_sums,
    local_statistics,
    quantize,
    scaled_spec,
    stats_length,
)

FEATURES = ("voltage_v", "tiny", "constant", "signed", "large")


def _fleet(n_devices: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-IID devices: magnitudes from 1e-3 to thousands, one constant feature."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_devices):
        n = int(rng.integers(5, 60))
        X = np.column_stack([
            rng.normal(230 + 5 * k, 3, n),        # a voltage, shifted per device
            rng.normal(0.004, 0.001, n),          # values far below one
            np.full(n, 7.25),                     # constant everywhere
            rng.normal(-3 * (k % 2), 2, n),       # signed
            rng.normal(4000 + 300 * k, 800, n),   # thousands
        ])
        y = rng.normal(60 + k, 0.5, n)
        out.append((X, y))
    return out


def _encrypted_total(keypair: Any, spec: ModelSpec, params: StatsParams,
                     devices: list[tuple[np.ndarray, np.ndarray]]) -> list[int]:
    pub, priv = keypair
    layout = layout_for("statistics", spec, CodecParams(), params, pub.n)
    total = None
    for X, y in devices:
        plain = layout.encode([local_statistics(X, y, spec, params).values])
        cts = encrypt_ints(pub, plain)
        total = cts if total is None else add_ciphertexts(pub, total, cts)
    assert total is not None
    (sums,) = layout.decode(decrypt_ints(priv, total), len(devices))
    return sums


def test_fleet_statistics_equal_pooled_standard_scaler(keypair: Any) -> None:
    from sklearn.preprocessing import StandardScaler

    spec = ModelSpec(kind="linear", features=FEATURES)
    params = StatsParams()
    devices = _fleet(12)
    stats = FleetStatistics.from_sums(_encrypted_total(keypair, spec, params, devices),
                                      spec, params)
    X = np.vstack([x for x, _ in devices])
    y = np.concatenate([y for _, y in devices])
    ref = StandardScaler().fit(X)
    assert stats.n == X.shape[0]
    assert np.all(np.abs(np.array(stats.mean) - ref.mean_) <= params.resolution)
    assert np.all(np.abs(np.array(stats.std) - np.sqrt(ref.var_)) <= params.resolution)
    assert stats.label_mean == pytest.approx(y.mean(), abs=params.resolution)
    assert stats.label_std == pytest.approx(y.std(), abs=params.resolution)
    scaled, warnings = scaled_spec(spec, stats, params)
    # Constant: scale 1 as StandardScaler, and a warning naming the feature.
    assert scaled.scale is not None and scaled.center is not None
    assert np.allclose(scaled.scale, ref.scale_, rtol=0, atol=params.resolution)
    assert np.allclose(scaled.center, ref.mean_, rtol=0, atol=params.resolution)
    assert any("'constant'" in w for w in warnings)
    assert scaled.target_center == pytest.approx(y.mean(), abs=params.resolution)


def test_coarse_resolution_is_honoured_not_exceeded(keypair: Any) -> None:
    """The bound is the declared resolution: with 8 fraction bits errors are visible but bounded."""
    spec = ModelSpec(kind="linear", features=FEATURES)
    params = StatsParams(fraction_bits=8)
    devices = _fleet(5, seed=3)
    stats = FleetStatistics.from_sums(_encrypted_total(keypair, spec, params, devices),
                                      spec, params)
    X = np.vstack([x for x, _ in devices])
    err_mean = np.abs(np.array(stats.mean) - X.mean(axis=0))
    err_std = np.abs(np.array(stats.std) - X.std(axis=0))
    assert err_mean.max() <= params.resolution and err_std.max() <= params.resolution
    assert err_mean.max() > 1e-6  # the quantization is real, not a float pass-through


def test_datasheet_values_win_and_classes_are_counted() -> None:
    spec = ModelSpec(kind="logistic", features=("a", "b"), n_classes=3,
                     center=(1.0, 2.0))
    params = StatsParams()
    X = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    sums = local_statistics(X, np.array([0.0, 0.0, 1.0]), spec, params).values
    assert len(sums) == stats_length(spec)
    stats = FleetStatistics.from_sums(sums, spec, params)
    assert stats.class_counts == (2, 1, 0)
    scaled, warnings = scaled_spec(spec, stats, params)
    assert scaled.center == (1.0, 2.0)  # the config's datasheet values
    assert scaled.scale == pytest.approx((X[:, 0].std(), X[:, 1].std()))
    assert any("class 2 of 3" in w for w in warnings)


def test_values_beyond_the_range_are_counted_per_feature_and_stop_the_derivation() -> None:
    """A column in the millions, beyond max_abs, came out 'constant' and the run trained on
    garbage (review of issue 10): now the column is named and nothing is derived from it."""
    params = StatsParams(max_abs=100.0)
    q, clipped = quantize(np.array([1.0, -250.0, 99.0, 1e9]), params)
    assert clipped == 2 and q[1] == -100 * 2**params.fraction_bits
    spec = ModelSpec(kind="linear", features=("a", "pressure"))
    X = np.array([[1.0, 500.0], [2.0, 700.0], [3.0, 50.0]])
    stats = FleetStatistics.from_sums(
        local_statistics(X, np.array([1.0, 2.0, 3.0]), spec, params).values, spec, params)
    assert stats.clipped == (0, 2) and stats.clipped_label == 0
    with pytest.raises(StatisticsRangeError, match=r"values beyond \+-100 in 'pressure' "
                       r"\(2 values\).*Raise \[statistics\] max_abs"):
        scaled_spec(spec, stats, params)
    # Datasheet values for the features: the clipped column's statistics are not needed.
    given = replace(spec, center=(0.0, 0.0), scale=(1.0, 100.0))
    assert scaled_spec(given, stats, params)[0].scale == (1.0, 100.0)


def test_the_range_goes_as_far_as_float_rounding_stays_exact() -> None:
    assert StatsParams().max_abs_limit == 2.0**28
    StatsParams(max_abs=2.0**28)
    with pytest.raises(CodecError, match="lower fraction_bits to raise max_abs"):
        StatsParams(max_abs=1e9)
    assert StatsParams(fraction_bits=12, max_abs=1e11).max_abs == 1e11


def test_exact_sums_beyond_int64() -> None:
    rng = np.random.default_rng(1)
    q = rng.integers(-(2**53), 2**53, size=(70_000, 3), dtype=np.int64)
    q[:, 0] = np.abs(q[:, 0])  # a column whose sum needs more than 63 bits
    sums, squares = exact_sums(q)
    cols = q.T.tolist()
    assert sums == [sum(c) for c in cols]
    assert squares == [sum(v * v for v in c) for c in cols]
    assert max(squares).bit_length() > 100 and max(map(abs, sums)).bit_length() > 63


def test_forged_statistics_are_rejected(keypair: Any) -> None:
    pub, _priv = keypair
    spec = ModelSpec(kind="linear", features=("a",))
    params = StatsParams()
    layout = layout_for("statistics", spec, CodecParams(), params, pub.n)
    good = local_statistics(np.array([[1.0], [2.0]]), np.array([1.0, 2.0]), spec,
                            params).values
    with pytest.raises(CodecOverflowError):  # one device's sums passed off as two devices'
        layout.decode(layout.encode([good]), 2)
    with pytest.raises(CodecError, match="count"):
        layout.encode([[*good[:-1], 0]])
    with pytest.raises(CodecError):  # sum q^2 < (sum q)^2 / n: no real data gives that
        FleetStatistics.from_sums([5, 0, 0, 0, 0, 1], spec, params)


def test_contract_bounds() -> None:
    with pytest.raises(CodecError):
        StatsParams(max_abs=2.0**30, fraction_bits=24)  # beyond 2^53 quantization steps
    assert StatsParams().resolution == 2.0**-25
    assert math.log2(StatsParams().bound_int) < 110
