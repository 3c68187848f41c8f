"""Disjoint groups of a round's members (the same for the same devices); robust rules across them.

Encryption hides each update, so median, trimmed mean or Krum cannot look at
updates one by one. What the aggregator CAN decrypt without learning any one
device's update is the sum of a group of at least ``min_group`` devices. So a
round's members are split into disjoint groups (their union is the round), each
group's sum is decrypted, and the new model is built with a robust rule across
the group means (Velicheti, Xia, Koyejo 2021, "SHARE"). One lying device then
spoils only its own group, which the rule trims away.

The grouping is a pure function of the fleet name, the members present and
``[robust] groups``/``min_group``: the members are ordered by a hash of the fleet
name and their own id (no secret: anyone can recompute it; not the phase, the
run or the allow-list, so the same devices are grouped the same way in every
phase and every run, whoever else is enrolled) and dealt into the groups. A
device set seen before therefore gets the same groups again: repeating a run or
a phase decrypts no new sums. Another device set is grouped anew.

Pure: no I/O, no clock; numpy only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.fedavg import weighted_average

FloatArray = NDArray[np.float64]
RULES = ("filtered-mean", "trimmed-mean", "median", "mean")
MIN_GROUPS = 3  # below three groups no rule can outvote one bad group
WEIGHT_CAP = 2.0  # a group weighs at most this many median groups (not in "mean")
FAR = 3.0  # filtered-mean: a group this many typical distances from the median is left out
# With three groups one that differs cannot be told from a liar (the median sits on one of
# the other two): the filter needs four; the weight caps hold either way.
MIN_FILTER = 4


def rank(fleet: str, member: str) -> bytes:
    """A member's place in the fleet's fixed pseudo-random order: a hash of its own id
    only, so enrolling or revoking OTHER ids never moves it."""
    return hashlib.sha256(f"fedmq/groups/2\x00{fleet}\x00{member}".encode()).digest()


def partition(members: Mapping[str, int], *, fleet: str, min_group: int,
              groups: int) -> tuple[frozenset[str], ...]:
    """Split ``members`` (member id -> devices its ciphertexts sum: 1 for a device, the
    contributor count for a relay's partial) into at most ``groups`` disjoint groups of at
    least ``min_group`` DEVICES each.

    Returns one group (all members) when fewer than MIN_GROUPS such groups fit: the
    round then sums everything, as plain FedAvg does. Members are dealt largest first
    (a relay's partial cannot be split), each to the group with the fewest devices so
    far, in the fleet's order, so groups differ in size by at most one device when every
    member is a device.
    """
    if min_group < 1 or groups < 1:
        raise ValueError("min_group and groups must be at least 1")
    total = sum(members.values())
    count = min(groups, total // min_group)
    if count < MIN_GROUPS:
        return (frozenset(members),)
    order = sorted(members, key=lambda m: (-members[m], rank(fleet, m)))
    bins: list[list[str]] = [[] for _ in range(count)]
    load = [0] * count
    for member in order:
        i = load.index(min(load))
        bins[i].append(member)
        load[i] += members[member]
    # Large members can leave a group short of min_group: merge it into the lightest.
    while True:
        short = [i for i in range(len(bins)) if load[i] < min_group]
        if not short or len(bins) == 1:
            break
        i = short[0]
        j = min((k for k in range(len(bins)) if k != i), key=lambda k: load[k])
        bins[j] += bins[i]
        load[j] += load[i]
        del bins[i], load[i]
    if len(bins) < MIN_GROUPS:
        return (frozenset(members),)
    return tuple(frozenset(b) for b in bins)


def trimmed_mean(means: Sequence[FloatArray], trim: int,
                 weights: Sequence[float] | None = None) -> FloatArray:
    """Coordinate-wise: drop the ``trim`` largest and smallest group values, then average
    the rest, weighted by ``weights`` (equal weights if None)."""
    if not 0 <= 2 * trim < len(means):
        raise ValueError(f"cannot trim {trim} from each side of {len(means)} group means")
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in means])
    w = np.ones(len(means)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(stacked, axis=0, kind="stable")[trim:len(means) - trim]
    values = np.take_along_axis(stacked, order, axis=0)
    kept = w[order]
    return np.asarray((values * kept).sum(axis=0) / kept.sum(axis=0), dtype=np.float64)


def capped(weights: Sequence[float], factor: float = WEIGHT_CAP) -> list[float]:
    """Each group's weight, at most ``factor`` times the median group's: groups with more
    rows count more, as in FedAvg, but a group claiming rows gains at most that factor
    (with G groups its share stays below factor / (factor + G / 2 - 1))."""
    limit = factor * float(np.median(np.asarray(weights, dtype=np.float64)))
    return [min(float(w), limit) for w in weights]


def median(means: Sequence[FloatArray]) -> FloatArray:
    """Coordinate-wise median of the group means."""
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in means])
    return np.asarray(np.median(stacked, axis=0), dtype=np.float64)


def far_from_median(means: Sequence[FloatArray], factor: float) -> list[int]:
    """Indices of the group means further from the coordinate-wise median than ``factor``
    times the typical spacing of the groups: the median over groups of the distance to
    the nearest other group. (The median's own distances are no measure: with three
    groups the median sits on one of them, and the others would look far.)"""
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in means])
    center = np.median(stacked, axis=0)
    dist = np.linalg.norm(stacked - center, axis=1)
    pairwise = np.linalg.norm(stacked[:, None, :] - stacked[None, :, :], axis=2)
    np.fill_diagonal(pairwise, np.inf)
    typical = float(np.median(pairwise.min(axis=1)))
    if typical <= 0:
        return []
    return [i for i, d in enumerate(dist) if d > factor * typical]


def filtered_mean(means: Sequence[FloatArray], weights: Sequence[float],
                  factor: float = FAR) -> tuple[FloatArray, list[int]]:
    """The weighted mean of the groups that are not far from the median (see
    ``far_from_median``; with fewer than MIN_FILTER groups none is), ``weights`` as given
    (the caller caps them), and the indices of those left out: FedAvg over the groups when
    none is far, and a group that is far is left out whole."""
    far = far_from_median(means, factor) if len(means) >= MIN_FILTER else []
    if len(far) == len(means):
        # Every group far from the median: the groups fall in clusters (two pairs of
        # label-skewed devices, say) and the median between them stands for none. No group
        # can be told from a liar, so all count, as in FedAvg (and never an empty mean).
        far = []
    kept = [i for i in range(len(means)) if i not in far]
    return weighted_average([means[i] for i in kept], [weights[i] for i in kept]), far


def combine(rule: str, means: Sequence[FloatArray], weights: Sequence[float],
            trim: int) -> FloatArray:
    """The robust step from the group means. ``mean``: weighted by the groups' weights,
    exactly FedAvg over all their devices; ``median``: every group counts once;
    ``trimmed-mean`` and ``filtered-mean``: weighted by ``weights``, which the caller caps
    (a group's weight is what its devices claim, so it must not buy influence)."""
    if not means:
        raise ValueError("no group means to combine")
    if rule == "mean" or len(means) < MIN_GROUPS:
        return weighted_average(means, weights)
    if rule == "median":
        return median(means)
    if rule == "filtered-mean":
        return filtered_mean(means, weights)[0]
    if rule == "trimmed-mean":
        return trimmed_mean(means, min(trim, (len(means) - 1) // 2), weights)
    raise ValueError(f"unknown robust rule {rule!r}; known: {', '.join(RULES)}")
