"""The culprit search with real Paillier (512-bit) and the real packed codec."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.aggregator.culprits import Suspects, bounds_check, close_sum, group_sum, search
from fedmq.protocol.crypto.codec import Codec, CodecParams, make_codec, quantize_update
from fedmq.protocol.crypto.paillier import encrypt_ints, generate_keypair
from fedmq.protocol.layout import Section, UpdateLayout

N_VALUES = 5
PARAMS = CodecParams(max_agents=64)
POOL = 14  # honest devices the examples draw from


@functools.cache
def world():
    """Keypair, codec and the honest devices' integer updates and ciphertexts (made once)."""
    public, private = generate_keypair(512)
    codec = make_codec(PARAMS, public.n)
    rng = np.random.default_rng(0)
    values, vectors = {}, {}
    for i in range(POOL):
        ints, _ = quantize_update(rng.uniform(-1, 1, N_VALUES - 1), int(rng.integers(1, 500)),
                                  PARAMS)
        values[f"dev-{i:02d}"] = ints
        vectors[f"dev-{i:02d}"] = tuple(encrypt_ints(public, codec.encode(ints)))
    # Out-of-range plaintexts under the right key: nothing shows before decryption.
    bad = {
        "random-plaintext": tuple(encrypt_ints(public, [random.Random(1).randrange(public.n)
                                                        for _ in range(codec.plaintext_count(
                                                            N_VALUES))])),
        "huge-weight": tuple(encrypt_ints(public, codec.encode(
            [0] * (N_VALUES - 1) + [PARAMS.bound_int]))),  # within the value bound
    }
    return public, private, codec, values, vectors, bad


def layout_of(codec: Codec) -> UpdateLayout:
    """A training update without an evaluation section: what the search is about."""
    return UpdateLayout("training", (Section("training", codec, N_VALUES, PARAMS.max_weight),))


def in_span(rows: list[np.ndarray], vector: np.ndarray) -> bool:
    m = np.array(rows, dtype=float)
    return np.linalg.matrix_rank(np.vstack([m, vector])) == np.linalg.matrix_rank(m)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, POOL), culprit_at=st.integers(0, POOL - 1),
       kind=st.sampled_from(["random-plaintext", "huge-weight"]), seed=st.integers(0, 2**32))
def test_the_culprit_is_excluded_and_no_honest_update_is_isolated(size, culprit_at, kind, seed):
    _, private, codec, values, vectors, bad = world()
    honest = sorted(values)[:size]
    culprit = f"dev-{culprit_at % size:02d}~"  # sorts right after honest device culprit_at
    agents = [*honest, culprit]
    round_vectors = {a: vectors[a] for a in honest} | {culprit: bad[kind]}
    decryptions = []
    check = bounds_check(layout_of(codec), private, round_vectors)

    def counted(group):
        decryptions.append(group)
        return check(group)

    assert counted(frozenset(agents)) is None  # the whole round fails its bounds
    found = search(agents, counted, rng=random.Random(seed))
    excluded = frozenset().union(*found.excluded)
    assert culprit in excluded and culprit not in found.kept
    assert found.kept | excluded == frozenset(agents)
    assert len(excluded - {culprit}) <= 2  # at most two honest devices lose the round
    if len(agents) < 4:
        assert found.kept == frozenset() and found.sums is None
    else:
        assert found.sums == [sum(col) for col in zip(*map(values.get, found.kept), strict=True)]
    assert all(len(g) >= 2 for g in found.decrypted)
    # Nothing but decrypted groups were decrypted (the final check is the union of kept).
    assert set(decryptions) <= {*found.decrypted, found.kept}
    index = {a: i for i, a in enumerate(agents)}
    rows = []
    for g in set(decryptions):
        row = np.zeros(len(agents))
        row[[index[a] for a in g]] = 1
        rows.append(row)
    for a in honest:
        assert not in_span(rows, np.eye(len(agents))[index[a]]), f"{a} isolated"
    # About 2 log2(n) decryptions, not one per device.
    assert len(decryptions) <= 2 * max(1, int(np.ceil(np.log2(len(agents))))) + 2


def test_two_culprits_in_a_large_fleet_are_both_excluded():
    _, private, codec, values, vectors, bad = world()
    round_vectors = dict(vectors) | {"mallory": bad["random-plaintext"],
                                     "trudy": bad["huge-weight"]}
    check = bounds_check(layout_of(codec), private, round_vectors)
    found = search(round_vectors, check, rng=random.Random(3))
    excluded = frozenset().union(*found.excluded)
    assert {"mallory", "trudy"} <= excluded
    assert found.sums == [sum(col) for col in zip(*map(values.get, found.kept), strict=True)]


def test_an_honest_round_decrypts_once_and_keeps_everyone():
    _, private, codec, values, vectors, _ = world()
    calls = []
    check = bounds_check(layout_of(codec), private, vectors)
    kept, sums, named = close_sum(1, vectors, lambda g: calls.append(g) or check(g), Suspects())
    assert kept == frozenset(vectors) and named == [] and len(calls) == 1
    assert sums == [sum(col) for col in zip(*values.values(), strict=True)]


def test_a_single_update_is_never_decrypted_on_its_own_during_a_search():
    _, private, codec, _, vectors, _ = world()
    check = bounds_check(layout_of(codec), private, dict(list(vectors.items())[:3]))
    with pytest.raises(ValueError, match="one device"):
        check(frozenset(["dev-00"]))


def test_suspects_name_the_one_device_common_to_its_excluded_groups():
    s = Suspects()
    assert s.record(1, [frozenset({"c", "d"})], kept="abe") == []
    assert s.record(2, [frozenset({"a", "c", "e"})], kept="bd") == []
    assert s.record(3, [frozenset({"b", "c"})], kept="ade") == ["c"]
    assert s.culprits == {"c": (1, 2, 3)}
    assert s.record(4, [frozenset({"c", "d"})]) == []  # named once


def test_suspects_do_not_name_a_device_that_always_shared_its_group():
    s = Suspects()
    s.record(1, [frozenset({"c", "d"})])
    s.record(2, [frozenset({"c", "d"})])
    assert s.record(3, [frozenset({"c", "d"})]) == []  # c or d: cannot tell
    assert s.record(4, [frozenset({"c", "f"})]) == ["c"]


def test_an_honest_device_between_two_culprits_is_not_named():
    # h shared an excluded group with culprit x in round 1 and with culprit y in
    # round 2: the intersection is {h}, but a round that used h's update ends its
    # streak, so it is never named; x and y are, after three rounds each.
    s = Suspects()
    assert s.record(1, [frozenset({"h", "x"}), frozenset({"a", "y"})], kept="bc") == []
    assert s.record(2, [frozenset({"h", "y"}), frozenset({"b", "x"})], kept="ac") == []
    assert s.record(3, [frozenset({"c", "x"}), frozenset({"a", "y"})], kept="hb") == ["x", "y"]
    assert "h" not in s.culprits


def test_a_kept_round_resets_the_streak():
    s = Suspects()
    s.record(1, [frozenset({"c", "d"})])
    s.record(2, [frozenset({"c", "e"})])
    s.record(3, [], kept="cde")  # c behaved
    assert s.record(4, [frozenset({"c", "f"})]) == []
    assert s.record(5, [frozenset({"c", "g"})]) == []
    assert s.record(6, [frozenset({"c", "h"})]) == ["c"]


def test_close_sum_logs_the_suspect_group_and_names_the_culprit(caplog):
    _, private, codec, _, vectors, bad = world()
    suspects, rng = Suspects(), random.Random(5)
    round_vectors = dict(vectors) | {"mallory": bad["random-plaintext"]}
    check = bounds_check(layout_of(codec), private, round_vectors)
    named: list[str] = []
    for r in range(1, 8):
        kept, _, new = close_sum(r, round_vectors, check, suspects, rng=rng)
        named += new
        assert "mallory" not in kept
        if named:
            break
    assert named == ["mallory"]
    assert "culprit among" in caplog.text and "mallory is the culprit" in caplog.text


def test_the_whole_round_is_checked_on_its_running_sum():
    """The round keeps a running product of every update; the closing check decrypts that
    instead of multiplying all ciphertexts again (a group's sum is still computed)."""
    public, private, codec, _, vectors, _ = world()
    total = group_sum(public, vectors, vectors)
    with_total = bounds_check(layout_of(codec), private, vectors, total=total)
    assert with_total(frozenset(vectors)) == bounds_check(layout_of(codec), private, vectors)(
        frozenset(vectors))
    wrong = bounds_check(layout_of(codec), private, vectors, total=[c * c for c in total])
    assert wrong(frozenset(vectors)) is None  # the given sum, not a recomputed one
    assert wrong(frozenset(list(vectors)[:2])) is not None  # groups: recomputed


def test_under_device_dp_no_group_smaller_than_the_quorum_is_decrypted():
    """Each decrypted sum must hold at least the quorum's noise shares (issue 11)."""
    _, private, codec, _, vectors, bad = world()
    members = dict(list(vectors.items())[:11])
    members["dev-bad"] = bad["random-plaintext"]
    check = bounds_check(layout_of(codec), private, members)
    calls: list[frozenset[str]] = []
    kept, sums, _ = close_sum(1, members, lambda g: calls.append(g) or check(g), Suspects(),
                              min_group=5)
    assert all(len(group) >= 5 for group in calls)
    assert len(calls) > 1 and "dev-bad" not in kept and sums is not None
    assert len(kept) >= 6  # the half without the culprit (6 devices) is kept


def test_the_same_failing_set_is_split_the_same_way_in_every_run():
    # Repeating a run with the same out-of-range device must not decrypt new groups.
    _, private, codec, _, vectors, bad = world()
    devices = dict(list(vectors.items())[:9]) | {"mallory": bad["huge-weight"]}
    check = bounds_check(layout_of(codec), private, devices)
    first, again = search(devices, check), search(devices, check)
    assert first.decrypted == again.decrypted and first.excluded == again.excluded
    assert any("mallory" in g for g in first.excluded)


def test_a_failing_relay_partial_is_decrypted_and_left_out_on_its_own():
    # Three members (one relay summing 3 devices, two direct devices): splitting by
    # devices isolates the relay's partial (3 devices >= min_group) instead of dropping all.
    public, private, codec, _, vectors, bad = world()
    names = list(vectors)
    relay = group_sum(public, {**vectors, "bad": bad["huge-weight"]}, [names[0], names[1], "bad"])
    members = {"relay-a": tuple(relay), names[2]: vectors[names[2]], names[3]: vectors[names[3]],
               names[4]: vectors[names[4]]}
    sizes = {"relay-a": 3}
    check = bounds_check(layout_of(codec), private, members, devices=sizes)
    found = search(members, check, devices=sizes)
    assert found.excluded == (frozenset({"relay-a"}),)
    assert found.kept == frozenset(names[2:5])
