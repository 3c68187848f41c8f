"""Grouping a round's members for robust aggregation, and the robust rules against plaintext."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.aggregator.fedavg import weighted_average
from fedmq.aggregator.groups import (
    capped,
    combine,
    far_from_median,
    filtered_mean,
    median,
    partition,
    trimmed_mean,
)

ENROLLED = [f"dev-{i:03d}" for i in range(60)]


@settings(max_examples=80, deadline=None)
@given(present=st.sets(st.sampled_from(ENROLLED), min_size=1, max_size=60),
       min_group=st.integers(2, 6), groups=st.integers(1, 12))
def test_groups_partition_the_round_and_none_is_below_min_group(present, min_group, groups):
    members = dict.fromkeys(present, 1)
    parts = partition(members, fleet="f", min_group=min_group, groups=groups)
    assert frozenset().union(*parts) == frozenset(present)
    assert sum(len(p) for p in parts) == len(present)  # disjoint
    assert len(parts) == 1 or (len(parts) >= 3 and all(len(p) >= min_group for p in parts))
    assert len(parts) <= max(groups, 1)
    # The same device set gets the same groups, whatever order it arrives in.
    again = partition(dict(reversed(list(members.items()))), fleet="f", min_group=min_group,
                      groups=groups)
    assert set(again) == set(parts)


def test_relay_partials_count_their_devices_and_are_never_split():
    members = {"relay-a": 6, "relay-b": 3, **dict.fromkeys(ENROLLED[:5], 1)}
    parts = partition(members, fleet="f", min_group=3, groups=4)
    # Dealt largest first, then the 2-device leftover is merged: 6 | 3+2 | 3.
    assert sorted(sum(members[m] for m in p) for p in parts) == [3, 5, 6]
    assert frozenset({"relay-a"}) in parts


def test_too_small_a_fleet_is_one_group():
    members = dict.fromkeys(ENROLLED[:5], 1)
    assert partition(members, fleet="f", min_group=2, groups=5) == (frozenset(members),)


def test_another_fleet_groups_the_same_devices_differently_but_deterministically():
    members = dict.fromkeys(ENROLLED[:30], 1)
    a = partition(members, fleet="a", min_group=2, groups=5)
    assert a == partition(members, fleet="a", min_group=2, groups=5)
    assert set(a) != set(partition(members, fleet="b", min_group=2, groups=5))


def test_who_else_is_enrolled_does_not_move_the_groups():
    # The groups depend on the devices present only: enrolling an id that never comes online
    # (or revoking one) must not re-deal them, else a gateway could collect new group sums
    # of the same devices' unchanging statistics run after run.
    present = dict.fromkeys(ENROLLED[:12], 1)
    assert partition(present, fleet="f", min_group=2, groups=5) == partition(
        dict(sorted(present.items())), fleet="f", min_group=2, groups=5)


def test_trimmed_mean_and_median_match_their_plaintext_definitions():
    rng = np.random.default_rng(3)
    means = [rng.normal(size=7) for _ in range(6)]
    stacked = np.sort(np.stack(means), axis=0)
    np.testing.assert_allclose(trimmed_mean(means, 2), stacked[2:4].mean(axis=0))
    np.testing.assert_allclose(median(means), np.median(np.stack(means), axis=0))
    np.testing.assert_allclose(combine("mean", means, [1, 2, 3, 4, 5, 6], 1),
                               weighted_average(means, [1, 2, 3, 4, 5, 6]))


def test_one_lying_group_cannot_move_the_step_outside_the_honest_range():
    rng = np.random.default_rng(4)
    honest = [rng.normal(0, 0.1, size=9) for _ in range(4)]
    liar = np.full(9, -10.0)  # -clip on every coordinate, with a huge claimed weight
    for rule in ("filtered-mean", "trimmed-mean", "median"):
        step = combine(rule, [*honest, liar], [50, 60, 40, 55, 8000], 1)
        low, high = np.min(honest, axis=0), np.max(honest, axis=0)
        assert np.all(step >= low - 1e-12) and np.all(step <= high + 1e-12), rule


def test_weights_are_capped_at_two_median_groups():
    assert capped([10, 20, 30, 8000]) == [10, 20, 30, 50]


def test_filtered_mean_is_fedavg_on_close_groups_and_leaves_a_far_one_out():
    rng = np.random.default_rng(6)
    honest = [rng.normal(0, 0.1, size=9) for _ in range(4)]
    weights = [50.0, 60.0, 40.0, 55.0]
    np.testing.assert_allclose(combine("filtered-mean", honest, weights, 1),
                               weighted_average(honest, weights))
    liar = np.full(9, -10.0)
    assert far_from_median([*honest, liar], 3.0) == [4]
    np.testing.assert_allclose(combine("filtered-mean", [*honest, liar], [*weights, 8000], 1),
                               weighted_average(honest, weights))
    # A far group is left out whatever weight it claims.
    np.testing.assert_allclose(combine("filtered-mean", [*honest, liar], [*weights, 1e9], 1),
                               weighted_average(honest, weights))


def test_filtered_mean_keeps_every_group_when_all_are_far_from_the_median():
    # Two tight pairs (label skew: two kinds of devices): the coordinate-wise median lies
    # between them, every group is "far", and leaving them all out left nothing to average.
    means = [np.array([0.0, 0.0]), np.array([0.01, 0.0]), np.array([1.0, 0.0]),
             np.array([1.01, 0.0])]
    assert far_from_median(means, 3.0) == [0, 1, 2, 3]
    step, far = filtered_mean(means, [1.0, 2.0, 3.0, 4.0])
    assert far == []
    np.testing.assert_allclose(step, weighted_average(means, [1.0, 2.0, 3.0, 4.0]))


def test_trim_must_leave_a_group():
    with pytest.raises(ValueError):
        trimmed_mean([np.zeros(2)] * 2, 1)
