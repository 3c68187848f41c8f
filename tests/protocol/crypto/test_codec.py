from __future__ import annotations

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.aggregator.fedavg import weighted_average
from fedmq.protocol.crypto.codec import (
    CODEC_NAMES,
    CodecParams,
    PackedCodec,
    PerValueCodec,
    make_codec,
    mean_from_sums,
    quantize_update,
)
from fedmq.protocol.crypto.paillier import add_ciphertexts, decrypt_ints, encrypt_ints
from fedmq.protocol.errors import CodecError, CodecOverflowError

both_codecs = pytest.mark.parametrize("name", CODEC_NAMES)


def power(pub, ciphertexts, k):
    """Enc(m)^k = Enc(k*m): k identical agents' updates in one exponentiation."""
    nsq = gmpy2.mpz(pub.nsquare)
    return [int(gmpy2.powmod(c, k, nsq)) for c in ciphertexts]


def test_default_codec_is_packed_with_headroom_for_the_declared_fleet():
    params = CodecParams()
    assert params.name == "packed/1"
    codec = PackedCodec(params, (1 << 2047) + 1)
    # 2 * max_agents * max_weight * 2^precision < 2^44: 46 values per 2048-bit plaintext.
    assert codec.describe() == {"slot_bits": 44, "slots": 46}
    assert codec.plaintext_count(1001) == 22


@both_codecs
def test_round_trip_without_encryption_is_exact(name, keypair):
    pub, _ = keypair
    codec = make_codec(CodecParams(name=name), pub.n)
    b = codec.params.bound_int
    values = [0, 1, -1, b, -b, 12345, -98765, 7]
    assert codec.decode(codec.encode(values), len(values), n_summed=1) == values


@both_codecs
def test_negative_values_survive_encryption(name, keypair):
    pub, priv = keypair
    codec = make_codec(CodecParams(name=name), pub.n)
    values = [-3, -(1 << 30), 0, 25, codec.params.bound_int]
    plain = decrypt_ints(priv, encrypt_ints(pub, codec.encode(values)))
    assert codec.decode(plain, len(values), 1) == values


@both_codecs
def test_homomorphic_weighted_mean_matches_numpy_for_many_agents(name, keypair):
    pub, priv = keypair
    params = CodecParams(name=name, clip=5.0, max_weight=500, max_agents=1000)
    codec = make_codec(params, pub.n)
    rng = np.random.default_rng(7)
    n_agents, d = 60, 5
    deltas = [rng.uniform(-4.0, 4.0, size=d) for _ in range(n_agents)]
    weights = [int(w) for w in rng.integers(1, 500, size=n_agents)]
    total = None
    for delta, w in zip(deltas, weights, strict=True):
        values, clipped = quantize_update(delta, w, params)
        assert clipped == 0
        cts = encrypt_ints(pub, codec.encode(values))
        total = cts if total is None else add_ciphertexts(pub, total, cts)
    sums = codec.decode(decrypt_ints(priv, total), d + 1, n_agents)
    mean, total_weight = mean_from_sums(sums, params)
    assert total_weight == sum(weights)
    err = np.max(np.abs(mean - weighted_average(deltas, weights)))
    assert err <= params.resolution
    assert err / params.clip < 1e-6


def test_quantization_is_relative_to_clip_and_counts_clipping():
    params = CodecParams(clip=1.0, precision_bits=8)
    values, clipped = quantize_update(np.array([0.5, 3.0, -7.0, 0.0]), 10, params)
    assert clipped == 2
    assert values == [128 * 10, 256 * 10, -256 * 10, 0, 10]


@pytest.mark.parametrize("bad", [np.array([np.nan]), np.array([[1.0]])])
def test_non_finite_or_non_vector_update_is_refused(bad):
    with pytest.raises(CodecError):
        quantize_update(bad, 1, CodecParams())


@both_codecs
def test_value_beyond_declared_bound_raises(name, keypair):
    pub, _ = keypair
    params = CodecParams(name=name, clip=1.0, max_weight=10)
    codec = make_codec(params, pub.n)
    with pytest.raises(CodecOverflowError):
        codec.encode([params.bound_int + 1])
    with pytest.raises(CodecOverflowError):
        codec.encode([-params.bound_int - 1])
    with pytest.raises(CodecError):
        quantize_update(np.array([0.1]), 11, params)


@both_codecs
def test_one_more_agent_than_declared_is_detected(name, keypair):
    """max_agents + 1 extreme updates: refused by count, and by the slot check if miscounted."""
    pub, priv = keypair
    params = CodecParams(name=name, max_agents=50)
    codec = make_codec(params, pub.n)
    b = params.bound_int
    values = [b, -b, b, 0, 1]
    k = params.max_agents + 1
    plain = decrypt_ints(priv, power(pub, encrypt_ints(pub, codec.encode(values)), k))
    with pytest.raises(CodecOverflowError):
        codec.decode(plain, len(values), n_summed=k)
    if name == "packed/1":
        # Even told "max_agents", the +B slots overflow their legal range.
        with pytest.raises(CodecOverflowError):
            codec.decode(plain, len(values), n_summed=params.max_agents)


@both_codecs
def test_forged_plaintext_is_detected_not_wrapped(name, keypair):
    pub, _ = keypair
    codec = make_codec(CodecParams(name=name, max_agents=10), pub.n)
    with pytest.raises(CodecOverflowError):
        codec.decode([pub.n // 3], 1, n_summed=2)


@both_codecs
def test_key_too_small_for_declared_bounds_is_refused(name):
    with pytest.raises(CodecError, match="key too small"):
        make_codec(CodecParams(name=name, max_agents=10_000), (1 << 40) + 1)


@pytest.mark.parametrize("bad", [
    {"precision_bits": 4}, {"precision_bits": 41}, {"clip": 0.0}, {"clip": float("nan")},
    {"max_agents": 0}, {"max_weight": 2**25}, {"name": "nope"},
])
def test_bad_params_are_rejected(bad):
    with pytest.raises(CodecError):
        CodecParams(**bad)


def test_params_dict_round_trip_and_digest_binds_key():
    p = CodecParams(clip=2.0)
    assert CodecParams.from_dict(p.to_dict()) == p
    assert p.digest("a" * 64) != p.digest("b" * 64)
    assert p.digest("a" * 64) != CodecParams(clip=3.0).digest("a" * 64)
    assert p.digest("a" * 64) != CodecParams(name="per-value/1", clip=2.0).digest("a" * 64)


def _bounded_vectors(d: int):
    b = CodecParams(max_agents=300).bound_int
    edge = st.sampled_from([b, -b, 0, 1, -1, b - 1, -b + 1])
    return st.lists(st.one_of(edge, st.integers(-b, b)), min_size=d, max_size=d)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(CODEC_NAMES),
       rows=st.lists(_bounded_vectors(13), min_size=1, max_size=4),
       copies=st.lists(st.integers(1, 300), min_size=4, max_size=4),
       fill_to_max=st.booleans())
def test_decrypted_sum_equals_exact_sum_of_quantized_values(keypair, name, rows, copies,
                                                            fill_to_max):
    """decode(sum(encrypt(encode(x_i)))) == sum(x_i), up to the declared max_agents.

    Each distinct row stands for ``copies`` agents sending it (Enc(m)^k), so the
    sum can reach max_agents = 300 with extreme values at every position.
    """
    pub, priv = keypair
    params = CodecParams(name=name, max_agents=300)
    codec = make_codec(params, pub.n)
    counts = copies[:len(rows)]
    if fill_to_max or sum(counts) > params.max_agents:
        counts = [max(1, params.max_agents // len(rows))] * len(rows)
        counts[0] += params.max_agents - sum(counts)
    total, expect = None, [0] * 13
    for row, k in zip(rows, counts, strict=True):
        cts = power(pub, encrypt_ints(pub, codec.encode(row)), k)
        total = cts if total is None else add_ciphertexts(pub, total, cts)
        expect = [e + k * v for e, v in zip(expect, row, strict=True)]
    assert codec.decode(decrypt_ints(priv, total), 13, sum(counts)) == expect


def test_per_value_codec_is_still_selectable(keypair):
    pub, _ = keypair
    assert isinstance(make_codec(CodecParams(name="per-value/1"), pub.n), PerValueCodec)


def test_tampered_ciphertext_decodes_to_an_overflow_not_to_numbers(keypair):
    """A flipped bit in a ciphertext gives a random plaintext: its high bits betray it."""
    pub, priv = keypair
    codec = make_codec(CodecParams(), pub.n)
    cts = encrypt_ints(pub, codec.encode([5, -5, 0]))
    tampered = [cts[0] ^ (1 << 100)]
    with pytest.raises(CodecOverflowError):
        codec.decode(decrypt_ints(priv, tampered), 3, n_summed=1)
