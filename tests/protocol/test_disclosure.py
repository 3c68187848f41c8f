"""protocol.disclosure: no combination of decrypted sums isolates fewer than min_group devices."""

from __future__ import annotations

import itertools
import random

import numpy as np

from fedmq.protocol.disclosure import atoms, refusal


def s(*ids: str) -> frozenset[str]:
    return frozenset(ids)


def isolates(sets: list[frozenset[str]], min_group: int) -> bool:
    """Brute force: does the span of the sets' indicator vectors hold a vector whose
    support has 1..min_group-1 devices with equal weights (a small group's sum)?"""
    devices = sorted(frozenset().union(*sets))
    matrix = np.array([[1.0 if d in x else 0.0 for d in devices] for x in sets])
    rank = np.linalg.matrix_rank(matrix)
    for size in range(1, min_group):
        for group in itertools.combinations(range(len(devices)), size):
            target = np.zeros(len(devices))
            target[list(group)] = 1.0
            if np.linalg.matrix_rank(np.vstack([matrix, target])) == rank:
                return True
    return False


def test_two_sets_differing_by_one_device_are_refused() -> None:
    assert refusal([], s("a", "b", "c"), 2) is None
    why = refusal([s("a", "b", "c")], s("a", "b"), 2)
    assert why is not None and "single out 1 part(s) of 1" in why
    assert refusal([s("a", "b", "c")], s("a", "b", "c", "d"), 2) is not None


def test_one_device_or_a_set_below_min_group_is_refused() -> None:
    assert "fewer than min_group" in (refusal([], s("a"), 2) or "")
    assert refusal([], s("a", "b"), 3) is not None


def test_the_three_set_attack_that_pairwise_rules_miss() -> None:
    # Pairwise nested or disjoint, every difference >= 2 devices, yet e is isolated.
    before = [s("a", "b", "c", "d", "e"), s("a", "b")]
    assert refusal(before, s("c", "d"), 2) is not None


def test_what_honest_rounds_ask_passes() -> None:
    groups = [s("a", "b", "c"), s("d", "e"), s("f", "g", "h", "i")]
    done: list[frozenset[str]] = []
    for g in groups:  # robust aggregation's disjoint groups
        assert refusal(done, g, 2) is None
        done.append(g)
    # a culprit search inside the last group: halves, then the kept union
    for part in (s("f", "g"), s("h", "i")):
        assert refusal(done, part, 2) is None
        done.append(part)
    assert refusal(done, s("a", "b", "c", "f", "g"), 2) is None  # a union of decrypted sets
    assert refusal(done, s("a", "b", "c"), 2) is None  # the same set again


def test_atoms_group_devices_by_membership() -> None:
    found = atoms([s("a", "b", "c"), s("b", "c", "d")])
    assert sorted(map(sorted, found)) == [["a"], ["b", "c"], ["d"]]


def test_the_rule_matches_linear_algebra_on_random_families() -> None:
    rng = random.Random(7)
    devices = [f"d{i}" for i in range(7)]
    for _ in range(150):
        done: list[frozenset[str]] = []
        for _ in range(rng.randint(1, 4)):
            wanted = frozenset(rng.sample(devices, rng.randint(2, 6)))
            if refusal(done, wanted, 2) is None:
                done.append(wanted)
        # whatever the rule let through never spans a single device's sum
        assert not isolates(done, 2), done
