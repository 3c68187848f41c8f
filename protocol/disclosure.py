"""Which device sets a trustee may decrypt: no combination of the sums isolates a small group.

A decrypted sum is a linear function of the devices' updates; an aggregator that
has the sums over sets S_1..S_k knows every linear combination of them. Each
device d has a signature: the sets it belongs to. Devices with the same signature
form an *atom* of the sets' Venn diagram, and every combination of the sums is
constant on each atom: sum(S_i) is the sum of its atoms' sums, so the sums reveal
at most the atoms' sums. The rule a trustee enforces is therefore: every
non-empty atom of the sets it has decrypted (in a round; for the statistics
round, in every run of the fleet) holds at least ``min_group`` devices.

This is stronger than comparing sets pairwise. {a..e}, {a, b} and {c, d} are
pairwise nested or disjoint and differ by at least two devices, yet
sum({a..e}) - sum({a, b}) - sum({c, d}) is e's update alone: atom {e}.

What the aggregator's honest rounds ask passes: the round's total, disjoint
robust groups, the culprit search's halves (each split group is the disjoint
union of its two halves), and unions of decrypted sets (which add no new atom).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = ["atoms", "refusal"]


def atoms(sets: Sequence[frozenset[str]]) -> list[frozenset[str]]:
    """The non-empty atoms of the Venn diagram of ``sets`` (devices grouped by the sets
    they belong to), largest first."""
    signature: dict[str, list[int]] = {}
    for i, members in enumerate(sets):
        for device in members:
            signature.setdefault(device, []).append(i)
    groups: dict[tuple[int, ...], set[str]] = {}
    for device, where in signature.items():
        groups.setdefault(tuple(where), set()).add(device)
    return sorted((frozenset(g) for g in groups.values()), key=len, reverse=True)


def refusal(decrypted: Iterable[frozenset[str]], wanted: frozenset[str],
            min_group: int) -> str | None:
    """Why ``wanted`` must not be decrypted after ``decrypted``, or None when it may.

    The same set again adds nothing and is allowed (a re-sent request, a restart).
    """
    before = list(dict.fromkeys(decrypted))
    if len(wanted) < min_group:
        return (f"the set has {len(wanted)} device(s), fewer than min_group = {min_group} "
                "(rule: every decrypted sum spans at least min_group devices)")
    if wanted in before:
        return None
    small = [a for a in atoms([*before, wanted]) if len(a) < min_group]
    if not small:
        return None
    sizes = Counter(len(a) for a in small)
    shown = ", ".join(f"{n} part(s) of {size}" for size, n in sorted(sizes.items()))
    return (f"with the {len(before)} set(s) already decrypted it would single out {shown} "
            f"device(s) (rule: the decrypted sets must never be combinable into a sum of "
            f"fewer than min_group = {min_group} devices: nested or disjoint, every part "
            "they split the devices into at least min_group)")
