from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.fedavg import weighted_average
from protocol.codec import (
    CodecParams,
    PerValueCodec,
    make_codec,
    weighted_mean,
    weighted_values,
)
from protocol.errors import CodecError, CodecOverflowError
from protocol.paillier import add_ciphertexts, decrypt_ints, encrypt_ints


def test_round_trip_without_encryption_is_exact_to_the_scale(keypair):
    pub, _ = keypair
    codec = PerValueCodec(CodecParams(precision_bits=20), pub.n)
    x = np.array([0.0, 1.5, -1.5, 1e-7, -9_999.25, 12345.678])
    back = codec.decode(codec.encode(x), x.size, n_summed=1)
    assert np.max(np.abs(back - x)) <= 2.0**-21


def test_negative_values_survive_encryption(keypair):
    pub, priv = keypair
    codec = make_codec(CodecParams(), pub.n)
    x = np.array([-3.25, -0.0001, 0.0, 2.5])
    plain = decrypt_ints(priv, encrypt_ints(pub, codec.encode(x)))
    np.testing.assert_allclose(codec.decode(plain, 4, 1), x, atol=2.0**-24)


def test_homomorphic_weighted_mean_matches_numpy_for_many_agents(keypair):
    pub, priv = keypair
    params = CodecParams(clip=5.0, max_weight=500, max_agents=1000)
    codec = make_codec(params, pub.n)
    rng = np.random.default_rng(7)
    n_agents, d = 60, 5
    deltas = [rng.uniform(-4.0, 4.0, size=d) for _ in range(n_agents)]
    weights = [int(w) for w in rng.integers(1, 500, size=n_agents)]
    total = None
    for delta, w in zip(deltas, weights, strict=True):
        values, clipped = weighted_values(delta, w, params)
        assert clipped == 0
        cts = encrypt_ints(pub, codec.encode(values))
        total = cts if total is None else add_ciphertexts(pub, total, cts)
    summed = codec.decode(decrypt_ints(priv, total), d + 1, n_agents)
    mean, total_weight = weighted_mean(summed)
    assert total_weight == sum(weights)
    np.testing.assert_allclose(mean, weighted_average(deltas, weights), atol=1e-6)


def test_clipping_is_applied_and_counted():
    params = CodecParams(clip=1.0)
    values, clipped = weighted_values(np.array([0.5, 3.0, -7.0]), 10, params)
    assert clipped == 2
    np.testing.assert_array_equal(values, [5.0, 10.0, -10.0, 10.0])


def test_value_beyond_declared_bound_raises(keypair):
    pub, _ = keypair
    params = CodecParams(clip=1.0, max_weight=10)
    codec = make_codec(params, pub.n)
    with pytest.raises(CodecOverflowError):
        codec.encode(np.array([params.value_bound * 1.01]))
    with pytest.raises(CodecError):
        weighted_values(np.array([0.1]), 11, params)


def test_more_summands_than_max_agents_raises(keypair):
    pub, _ = keypair
    codec = make_codec(CodecParams(max_agents=3), pub.n)
    enc = codec.encode(np.array([1.0]))
    with pytest.raises(CodecOverflowError):
        codec.decode(enc, 1, n_summed=4)


def test_sum_outside_bounds_is_detected_not_wrapped(keypair):
    """A forged plaintext near n/2 would decode to garbage: decode must refuse it."""
    pub, _ = keypair
    codec = make_codec(CodecParams(max_agents=10), pub.n)
    with pytest.raises(CodecOverflowError):
        codec.decode([pub.n // 3], 1, n_summed=2)


def test_key_too_small_for_declared_bounds_is_refused():
    with pytest.raises(CodecError, match="key too small"):
        PerValueCodec(CodecParams(max_agents=10_000), modulus=(1 << 50) + 1)


@pytest.mark.parametrize("bad", [
    {"precision_bits": 4}, {"clip": 0.0}, {"clip": float("nan")}, {"max_agents": 0},
    {"name": "nope"}, {"precision_bits": 40, "max_weight": 10**6},
])
def test_bad_params_are_rejected(bad):
    with pytest.raises(CodecError):
        CodecParams(**bad)


def test_params_dict_round_trip_and_digest_binds_key():
    p = CodecParams(clip=2.0)
    assert CodecParams.from_dict(p.to_dict()) == p
    assert p.digest("a" * 64) != p.digest("b" * 64)
    assert p.digest("a" * 64) != CodecParams(clip=3.0).digest("a" * 64)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-10.0, 10.0, allow_nan=False), min_size=3, max_size=3),
                min_size=1, max_size=8),
       st.lists(st.integers(1, 10_000), min_size=8, max_size=8))
def test_plaintext_sum_of_encodings_decodes_to_sum_of_quantized(rows, weights):
    """Without encryption (fast): decode(sum(encode(x_i))) equals the sum of quantized x_i."""
    n = (1 << 511) + 187  # odd, 512-bit: a stand-in modulus for the integer arithmetic
    params = CodecParams()
    codec = PerValueCodec(params, n)
    scale = 2.0**params.precision_bits
    total = [0, 0, 0, 0]
    expect = np.zeros(4)
    for row, w in zip(rows, weights, strict=False):
        values, _ = weighted_values(np.array(row), w, params)
        total = [(a + b) % n for a, b in zip(total, codec.encode(values), strict=True)]
        expect += np.rint(values * scale) / scale
    np.testing.assert_allclose(codec.decode(total, 4, len(rows)), expect, rtol=0, atol=1e-9)
