"""The ddg/1 mechanism: noise shares with the target variance, clipping, exact encrypted sums.

Statistical tests state their false-failure probability; each uses seeded
generators (deterministic) unless it tests the default fresh-entropy path.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from scipy import stats

from fedmq.protocol.crypto.paillier import add_ciphertexts, decrypt_ints, encrypt_ints
from fedmq.protocol.errors import CodecError, CodecOverflowError, ProtocolError
from fedmq.protocol.layout import DpCodec
from fedmq.protocol.privacy.noise import (
    DpContract,
    DpParams,
    clip_and_quantize,
    discrete_gaussian,
    mean_from_noisy_sums,
    noisy_update,
)

ALPHA = 1e-6  # false-failure probability of each statistical assertion below

PARAMS = DpParams(epsilon=3.0, delta=1e-5, noise_multiplier=1.0, clip=1.0, quorum=20,
                  precision_bits=8)


def _variance_interval(n: int, sigma2: float) -> tuple[float, float]:
    """Two-sided ALPHA interval for the mean of n squares of N(0, sigma2) (known mean 0)."""
    lo, hi = stats.chi2.ppf([ALPHA / 2, 1 - ALPHA / 2], n)
    return lo / n * sigma2, hi / n * sigma2


def _corr_bound(n: int, tests: int) -> float:
    """|Pearson r| of n independent pairs stays below this for all ``tests`` with prob 1-ALPHA."""
    return float(stats.norm.ppf(1 - ALPHA / (2 * tests))) / math.sqrt(n - 3) * 1.05


def _shares(params: DpParams, devices: int, d: int, seed: int) -> np.ndarray:
    """Each device's noise share for a zero update (values minus the count)."""
    out = []
    for k in range(devices):
        rng = np.random.default_rng([seed, k])
        out.append(noisy_update(np.zeros(d), params, rng=rng).values[:-1])
    return np.array(out, dtype=np.int64)


def test_sum_of_device_shares_has_the_target_variance() -> None:
    # The sum of `quorum` devices' shares must carry variance (z * D2)^2. For s >> 1 the
    # discrete Gaussian's variance equals s^2 to within e^(-2 pi^2 s^2), and the sum of 20
    # of them is Gaussian to far better than the interval's width: chi-square applies.
    devices, d, rounds = PARAMS.quorum, 5000, 8  # 40,000 sums: the interval is +-3.5%
    target = (PARAMS.noise_multiplier * PARAMS.sensitivity(d)) ** 2
    sums = np.concatenate([_shares(PARAMS, devices, d, seed=r).sum(axis=0)
                           for r in range(rounds)])
    assert sums.dtype == np.int64
    lo, hi = _variance_interval(sums.size, target)
    assert lo <= float(np.mean(sums.astype(np.float64) ** 2)) <= hi
    # Mean 0: z-test at ALPHA.
    z = float(np.mean(sums)) / math.sqrt(target / sums.size)
    assert abs(z) <= stats.norm.ppf(1 - ALPHA / 2)


def test_one_device_share_matches_the_discrete_gaussian() -> None:
    d = 20_000
    share = _shares(PARAMS, 1, d, seed=7)[0].astype(np.float64)
    s2 = PARAMS.device_sigma(d) ** 2
    lo, hi = _variance_interval(d, s2)
    assert lo <= float(np.mean(share**2)) <= hi
    assert abs(float(np.mean(share))) / math.sqrt(s2 / d) <= stats.norm.ppf(1 - ALPHA / 2)
    assert np.all(share == np.rint(share))


def test_shares_are_independent_across_devices_and_rounds() -> None:
    devices, d = 20, 2000
    # Fresh OS entropy (the default path): two rounds of the same 20 devices.
    rounds = [np.array([noisy_update(np.zeros(d), PARAMS).values[:-1] for _ in range(devices)],
                       dtype=np.float64) for _ in range(2)]
    pairs = devices * (devices - 1) // 2
    bound = _corr_bound(d, 2 * pairs + devices)
    for shares in rounds:
        corr = np.corrcoef(shares)
        off = corr[np.triu_indices(devices, 1)]
        assert np.max(np.abs(off)) <= bound
    across = [np.corrcoef(rounds[0][k], rounds[1][k])[0, 1] for k in range(devices)]
    assert max(abs(r) for r in across) <= bound
    # Identical shares would mean a reused seed, whatever the correlation says.
    assert len({tuple(r[:8]) for r in np.vstack(rounds).astype(int)}) == 2 * devices


def test_discrete_gaussian_at_small_sigma_matches_its_pmf() -> None:
    # Exact pmf of N_Z(0, 1.5^2) against 200k draws: chi-square goodness of fit at ALPHA.
    sigma, n = 1.5, 200_000
    x = discrete_gaussian(sigma, n, np.random.default_rng(3))
    support = np.arange(-8, 9)
    pmf = np.exp(-support**2 / (2 * sigma**2))
    pmf /= np.exp(-np.arange(-60, 61) ** 2 / (2 * sigma**2)).sum()
    observed = np.array([np.count_nonzero(x == k) for k in support])
    expected = pmf * n
    # Tail beyond |8| has probability ~1e-6: fold it into the statistic's dof budget.
    assert np.count_nonzero(np.abs(x) > 8) <= 5
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 <= stats.chi2.ppf(1 - ALPHA, support.size - 1)


def test_truncation_respects_the_bound() -> None:
    x = discrete_gaussian(10.0, 50_000, np.random.default_rng(1), bound=5)
    assert np.max(np.abs(x)) <= 5 and np.count_nonzero(np.abs(x) == 5) > 0
    params = replace(PARAMS, tail=8.0)
    d = 50
    bound = params.bound_int(d)
    rng = np.random.default_rng(2)
    for _ in range(200):
        values = noisy_update(rng.normal(0, 5, d), params, rng=rng).values
        assert max(abs(v) for v in values) <= bound


def test_a_huge_update_is_clipped_to_the_clip_norm() -> None:
    params = replace(PARAMS, precision_bits=20, clip=2.5)
    d = 30
    delta = np.random.default_rng(0).normal(0, 1, d)
    delta *= 100 * params.clip / np.linalg.norm(delta)
    q, norm, clipped = clip_and_quantize(delta, params)
    assert clipped and norm == pytest.approx(100 * params.clip)
    decoded = q * params.clip / 2**params.precision_bits
    assert np.linalg.norm(q) <= params.sensitivity(d)
    assert np.linalg.norm(decoded) <= params.clip * (1 + math.sqrt(d) * 2.0**-21)
    update = noisy_update(delta, params, rng=np.random.default_rng(1))
    assert update.clipped and update.values[-1] == 1 and len(update.values) == d + 1


def test_a_small_update_passes_unchanged() -> None:
    params = replace(PARAMS, precision_bits=20, clip=2.5)
    delta = np.random.default_rng(4).normal(0, 0.1, 12)
    q, norm, clipped = clip_and_quantize(delta, params)
    assert not clipped and norm == pytest.approx(float(np.linalg.norm(delta)))
    decoded = q * params.clip / 2**params.precision_bits
    assert np.max(np.abs(decoded - delta)) <= params.clip * 2.0**-params.precision_bits


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan]), np.array([np.inf]), np.zeros(0),
                                 np.zeros((2, 2))])
def test_a_non_finite_or_malformed_update_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(CodecError):
        noisy_update(bad, PARAMS)


def test_noisy_mean_through_real_paillier_and_forgery_is_detected(keypair: Any) -> None:
    pub, priv = keypair
    params = DpParams(epsilon=3.0, delta=1e-5, noise_multiplier=1.1, clip=1.0, quorum=5)
    d, m = 21, 5
    codec = DpCodec(DpContract(params, d, 10), pub.n)
    rng = np.random.default_rng(11)
    deltas = [rng.normal(0, 0.3, d) for _ in range(m)]
    deltas[0] = deltas[0] * 50  # one device far beyond the clip norm
    total = None
    for delta in deltas:
        cts = encrypt_ints(pub, codec.encode(noisy_update(delta, params, rng=rng).values))
        total = cts if total is None else add_ciphertexts(pub, total, cts)
    assert total is not None
    sums = codec.decode(decrypt_ints(priv, total), d + 1, m)
    mean, count = mean_from_noisy_sums(sums, params)
    assert count == m
    clipped = [clip_and_quantize(x, params)[0] * params.clip / 2**params.precision_bits
               for x in deltas]
    expected = np.mean(clipped, axis=0)
    # Noise of the mean: std z * D2 * sqrt(m / quorum) / m in integer units.
    noise_sd = params.noise_multiplier * params.sensitivity(d) * math.sqrt(m / params.quorum)
    noise_sd *= params.clip / 2**params.precision_bits / m
    assert np.max(np.abs(mean - expected)) <= 6 * noise_sd  # P(fail) < 21 * 2e-9
    assert np.linalg.norm(clipped[0]) <= params.clip * (1 + 1e-5)
    # A forged value just beyond B is refused, never wrapped.
    bound = params.bound_int(d)
    with pytest.raises(CodecOverflowError):
        codec.encode([bound + 1] + [0] * (d - 1) + [1])
    # A forged plaintext (slots hold value + B) whose first value, 3B + 1, lies inside its
    # slot: any honest partner brings the pair's sum beyond 2 * B, which decode refuses.
    forged_plain = codec.layout.pack([4 * bound + 1] + [bound] * (d - 1) + [bound + 1])
    honest = codec.encode(noisy_update(deltas[1], params, rng=rng).values)
    forged = add_ciphertexts(pub, encrypt_ints(pub, honest), encrypt_ints(pub, forged_plain))
    with pytest.raises(CodecOverflowError):
        codec.decode(decrypt_ints(priv, forged), d + 1, 2)
    assert codec.describe()["slot_bits"] == (2 * 10 * bound).bit_length()


def test_params_validate_and_round_trip() -> None:
    assert DpParams.from_dict(PARAMS.to_dict()) == PARAMS
    for field, value in [("delta", 1.0), ("delta", 0.0), ("epsilon", 0.0), ("clip", math.inf),
                         ("noise_multiplier", -1.0), ("quorum", 0), ("precision_bits", 41),
                         ("precision_bits", 7), ("mechanism", "skellam/1"), ("tail", 2.0)]:
        with pytest.raises(CodecError):
            replace(PARAMS, **{field: value})
    for bad in [None, [], {"epsilon": 1}, {**PARAMS.to_dict(), "quorum": 2.5},
                {**PARAMS.to_dict(), "delta": "x"}, {**PARAMS.to_dict(), "quorum": True}]:
        with pytest.raises(ProtocolError):
            DpParams.from_dict(bad)


def test_round_rho_is_the_gaussian_rho_when_tau_underflows() -> None:
    params = DpParams(epsilon=3.0, delta=1e-5, noise_multiplier=1.1, clip=1.0, quorum=5)
    for m in (5, 6, 9):
        z_eff = params.noise_multiplier * math.sqrt(m / params.quorum)
        assert params.round_rho(21, m) == pytest.approx(1 / (2 * z_eff**2), rel=1e-12)
    with pytest.raises(ProtocolError):
        params.round_rho(21, 0)
    # Tiny shares: tau no longer vanishes and only raises rho.
    weak = replace(params, precision_bits=8, noise_multiplier=0.004, quorum=1)
    s, d2 = weak.device_sigma(21), weak.sensitivity(21)
    assert weak.round_rho(21, 3) > d2**2 / (2 * 3 * s**2)


# ---- colluding devices: shares sized for quorum - c honest devices ---------------------


def test_the_share_std_scales_as_one_over_the_root_of_the_honest_quorum() -> None:
    d = 5000
    for c in range(PARAMS.quorum):
        params = replace(PARAMS, colluding_devices=c)
        expected = PARAMS.noise_multiplier * PARAMS.sensitivity(d) / math.sqrt(
            PARAMS.quorum - c)
        assert params.honest_quorum == PARAMS.quorum - c
        assert params.device_sigma(d) == pytest.approx(expected, rel=1e-12)
        # The same share as a fleet without colluders whose quorum is the honest devices.
        alike = replace(PARAMS, quorum=PARAMS.quorum - c)
        assert params.device_sigma(d) == alike.device_sigma(d)
        assert params.bound_int(d) == alike.bound_int(d)  # the codec's headroom follows
    ratio = (replace(PARAMS, colluding_devices=15).device_sigma(d)
             / PARAMS.device_sigma(d))
    assert ratio == pytest.approx(math.sqrt(20 / 5), rel=1e-12)


def test_a_quorum_sum_less_the_colluders_shares_keeps_the_target_variance() -> None:
    # 6 devices close the round, 2 collude and subtract their shares: the 4 honest shares
    # must still carry (z * D2)^2; the whole sum (a non-colluding view) carries 6/4 of it.
    params = replace(PARAMS, quorum=6, colluding_devices=2)
    d, rounds = 5000, 8  # 40,000 sums: the ALPHA interval is about +-3.5%
    target = (params.noise_multiplier * params.sensitivity(d)) ** 2
    shares = [_shares(params, params.quorum, d, seed=100 + r) for r in range(rounds)]
    honest = np.concatenate([s[params.colluding_devices:].sum(axis=0) for s in shares])
    lo, _ = _variance_interval(honest.size, target)
    assert float(np.mean(honest.astype(np.float64) ** 2)) >= lo
    whole = np.concatenate([s.sum(axis=0) for s in shares]).astype(np.float64)
    lo, hi = _variance_interval(whole.size, target * params.quorum / params.honest_quorum)
    assert lo <= float(np.mean(whole**2)) <= hi
    # Shares sized for the whole quorum would leave the colluders' victims short.
    naive = replace(params, colluding_devices=0)
    short = np.concatenate([
        _shares(naive, naive.quorum, d, seed=200 + r)[2:].sum(axis=0) for r in range(2)])
    assert float(np.mean(short.astype(np.float64) ** 2)) < 0.8 * target


def test_accounting_counts_only_the_honest_shares() -> None:
    params = DpParams(epsilon=3.0, delta=1e-5, noise_multiplier=1.1, clip=1.0, quorum=5,
                      colluding_devices=2)
    z = params.noise_multiplier
    # Closed by the quorum: exactly z's rho, as without colluders (the colluding view).
    assert params.round_rho(21, 5) == pytest.approx(1 / (2 * z**2), rel=1e-12)
    assert params.round_rho(21, 5) == pytest.approx(
        replace(params, colluding_devices=0).round_rho(21, 5), rel=1e-12)
    for m in (5, 6, 9):  # m reporting, m - 2 honest shares sized for 3
        z_eff = z * math.sqrt((m - 2) / 3)
        assert params.round_rho(21, m) == pytest.approx(1 / (2 * z_eff**2), rel=1e-12)
    # One update alone: its own (larger) share, (quorum - c) times the quorum's charge.
    assert params.shares_rho(21, 1) == pytest.approx(3 * params.round_rho(21, 5), rel=1e-12)
    for too_few in (0, 1, 2):
        with pytest.raises(ProtocolError):
            params.round_rho(21, too_few)
    with pytest.raises(ProtocolError):
        params.shares_rho(21, 0)


def test_colluding_devices_validate_and_keep_the_old_wire_format() -> None:
    doc = PARAMS.to_dict()
    assert "colluding_devices" not in doc  # c = 0: the contract of before the field
    assert DpParams.from_dict(doc).colluding_devices == 0
    five = replace(PARAMS, colluding_devices=5)
    assert five.to_dict()["colluding_devices"] == 5
    assert DpParams.from_dict(five.to_dict()) == five
    for bad in (-1, PARAMS.quorum, PARAMS.quorum + 1, True, 2.0):
        with pytest.raises(CodecError, match="colluding_devices"):
            replace(PARAMS, colluding_devices=bad)
    for value in (2.5, True, "x", PARAMS.quorum):
        with pytest.raises(ProtocolError):
            DpParams.from_dict({**doc, "colluding_devices": value})
