"""Finding the device whose update voids a round, without decrypting any honest update alone.

An enrolled device can encrypt plaintexts outside the codec's bounds; nothing
shows before decryption, and the decrypted SUM then fails its bounds. Instead
of dropping the round, ``search`` splits the failing set T into two halves A
and B, decrypts the sum of each (the homomorphic product of its members'
ciphertexts) and recurses into the halves that fail, but splits a group only
while both halves keep at least ``min_group`` (2) DEVICES: a relay's partial
sum is one member of many devices, so a relay whose partial fails is left out
on its own. A failing group too small to split is excluded from this round;
the round closes with the sum of the passing groups. The halves are drawn
from a generator seeded with the failing set and the round id, so the same
failing set is split the same way in the same round of every run: an
operator who repeats runs with an out-of-range device of its own learns no
new groups (the statistics round is always round 0).

What the aggregator learns: the sums over the decrypted groups, which form a
laminar family (a binary tree: every split group is the disjoint union of its
two children) whose leaves have >= 2 members each. The span of their indicator
vectors is the span of the disjoint leaves, so no linear combination of the
decrypted sums isolates one device's update. Decrypting B as well as A reveals
nothing beyond sum(T) - sum(A). What it costs: the 1-2 honest devices sharing
the culprit's final group lose this round (their updates are not used), and
about 2 log2(|T|) extra decryptions per culprit. With |T| < 4 nothing can be
split and the whole round is dropped, as before.

Across rounds, ``Suspects`` names a device once it was in the excluded group
of three rounds in a row (of those it reported in) and is the only device
common to all of them.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fedmq.protocol.crypto.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    add_ciphertexts,
    decrypt_ints,
)
from fedmq.protocol.errors import CodecError
from fedmq.protocol.layout import UpdateLayout

log = logging.getLogger("fedmq.aggregator.service")

#: A group's decoded sums, or None when its decrypted sum fails the codec's bounds.
Check = Callable[[frozenset[str]], "list[int] | None"]
MIN_GROUP = 2  # never decrypt a sum over fewer devices


class Decryptor(Protocol):
    """Who decrypts a group's sum: the trustees (aggregator.trustees), told which members'
    updates it is the product of, so each can recompute and check it."""

    @property
    def public_key(self) -> PaillierPublicKey: ...

    def decrypt(self, group: frozenset[str], ciphertexts: Sequence[int]) -> list[int]: ...


def decryptor(key: PaillierPrivateKey | Decryptor
              ) -> tuple[PaillierPublicKey, Callable[[frozenset[str], Sequence[int]], list[int]]]:
    """The public key and the decryption of a group's sum, with the whole key or trustees."""
    if isinstance(key, PaillierPrivateKey):
        private = key
        return private.public_key, lambda _group, ciphertexts: decrypt_ints(private, ciphertexts)
    return key.public_key, key.decrypt


@dataclass(frozen=True)
class Search:
    kept: frozenset[str]  # devices whose updates the round uses
    sums: list[int] | None  # their decoded sum; None if nothing could be kept
    excluded: tuple[frozenset[str], ...]  # failing groups too small to split
    decrypted: tuple[frozenset[str], ...]  # every group whose sum was decrypted, T first


def _seeded(group: Iterable[str], salt: str) -> random.Random:
    """The same halves for the same failing set and ``salt`` (the round id) in every run:
    repeating a run must not decrypt new groups of the same devices, whose differences
    would add up. Another round of the same run draws other halves, so a persistent
    culprit ends up the only device common to its excluded groups (Suspects)."""
    ids = "\x00".join(["fedmq/search/1", salt, *sorted(group)])
    return random.Random(hashlib.sha256(ids.encode()).digest())


def _halves(group: frozenset[str], size: Callable[[Iterable[str]], int], min_group: int,
            rng: random.Random) -> tuple[frozenset[str], frozenset[str]] | None:
    """Two halves of about equal DEVICE counts (a relay's partial is one member of many
    devices), each of at least ``min_group`` devices, or None when no such split exists."""
    if len(group) < 2:
        return None
    members = sorted(group)
    rng.shuffle(members)
    members.sort(key=lambda m: -size((m,)))  # stable: the shuffle orders equal sizes
    halves: tuple[list[str], list[str]] = ([], [])
    for member in members:
        min(halves, key=size).append(member)
    if min(size(halves[0]), size(halves[1])) < min_group:
        return None
    return frozenset(halves[0]), frozenset(halves[1])


def search(agents: Iterable[str], check: Check, *, rng: random.Random | None = None,
           min_group: int = MIN_GROUP, devices: Mapping[str, int] | None = None,
           salt: str = "") -> Search:
    """Split the failing set of ``agents`` (T, already decrypted) as described above.

    ``min_group``: the fewest DEVICES a decrypted group may have (device-level DP: the
    quorum, so every decrypted sum carries the full noise its shares were sized for).
    ``devices``: member -> devices its ciphertexts sum (a relay's partial), 1 if absent.
    ``rng``: the halves' randomness; by default seeded from the failing set and ``salt``.
    """
    weight = devices or {}

    def size(members: Iterable[str]) -> int:
        return sum(weight.get(m, 1) for m in members)

    whole = frozenset(agents)
    decrypted, excluded = [whole], []
    passing: list[tuple[frozenset[str], list[int]]] = []
    pending = [whole]
    while pending:
        group = pending.pop()
        halves = _halves(group, size, min_group, rng or _seeded(group, salt))
        if halves is None:
            excluded.append(group)
            continue
        for part in halves:
            decrypted.append(part)
            sums = check(part)
            if sums is None:
                pending.append(part)
            else:
                passing.append((part, sums))
    kept = frozenset().union(*(g for g, _ in passing))
    total: list[int] | None = None
    if passing:
        total = [sum(column) for column in zip(*(s for _, s in passing), strict=True)]
        # kept is a union of decrypted groups: its sum reveals nothing new. Decrypting
        # it checks that the pieces really add up (bounds hold for the union too).
        if check(kept) != total:
            kept, total = frozenset(), None
    return Search(kept=kept, sums=total, excluded=tuple(excluded), decrypted=tuple(decrypted))


@dataclass(frozen=True)
class GroupSums:
    """What a round's groups yield: each kept group's decoded sums, and what was excluded."""

    sums: dict[frozenset[str], list[int]]  # a group (or the part of it kept) -> its sums
    excluded: tuple[frozenset[str], ...]  # failing groups too small to split
    named: tuple[str, ...]  # devices newly named culprits

    @property
    def kept(self) -> frozenset[str]:
        return frozenset().union(*self.sums)


def close_groups(round_id: int, groups: Sequence[frozenset[str]], check: Check,
                 suspects: Suspects, *, rng: random.Random | None = None,
                 min_group: int = MIN_GROUP, devices: Mapping[str, int] | None = None
                 ) -> GroupSums:
    """Decrypt each group's sum; search a failing group for its culprit (never below
    ``min_group`` devices) and keep what passes."""
    sums: dict[frozenset[str], list[int]] = {}
    excluded: list[frozenset[str]] = []
    for group in groups:
        found_sums = check(group)
        if found_sums is not None:
            sums[group] = found_sums
            continue
        found = search(group, check, rng=rng, min_group=min_group, devices=devices,
                       salt=str(round_id))
        excluded += found.excluded
        if found.sums is not None:
            sums[found.kept] = found.sums
        size = sum((devices or {}).get(m, 1) for m in group)
        left = size - sum((devices or {}).get(m, 1) for m in found.kept)
        for bad in found.excluded:
            log.error("round %d: decrypted sum out of bounds; culprit among %s (excluded this "
                      "round); %s", round_id, ", ".join(sorted(bad)),
                      f"{left} of the group's {size} devices left out" if found.kept
                      else ("round dropped" if len(groups) == 1 else "its group left out"))
    result = GroupSums(sums, tuple(excluded), ())
    named = suspects.record(round_id, excluded, kept=result.kept)
    for agent in named:
        log.error("%s is the culprit: the only device in every excluded group of rounds %s; "
                  "its updates are rejected for the rest of the run", agent,
                  ", ".join(map(str, suspects.culprits[agent])))
    return GroupSums(sums, tuple(excluded), tuple(named))


def close_sum(round_id: int, agents: Iterable[str], check: Check, suspects: Suspects, *,
              rng: random.Random | None = None, min_group: int = MIN_GROUP,
              devices: Mapping[str, int] | None = None
              ) -> tuple[frozenset[str], list[int] | None, list[str]]:
    """The round's sum: of every update, or of the groups that pass after a search.

    Returns (kept devices, their decoded sums or None, devices newly named culprits).
    """
    found = close_groups(round_id, [frozenset(agents)], check, suspects, rng=rng,
                         min_group=min_group, devices=devices)
    if not found.sums:
        return frozenset(), None, list(found.named)
    ((kept, sums),) = found.sums.items()
    return kept, sums, list(found.named)


def group_sum(public_key: PaillierPublicKey, vectors: Mapping[str, Sequence[int]],
              group: Iterable[str]) -> list[int]:
    """Homomorphic sum of ``group``'s ciphertext vectors."""
    members = sorted(group)
    total = list(vectors[members[0]])
    for agent in members[1:]:
        total = add_ciphertexts(public_key, total, vectors[agent])
    return total


def bounds_check(layout: UpdateLayout, private_key: PaillierPrivateKey | Decryptor,
                 vectors: Mapping[str, Sequence[int]], *,
                 total: Sequence[int] | None = None,
                 devices: Mapping[str, int] | None = None) -> Check:
    """``Check`` for a round: decrypt a group's sum; every section's values AND its
    count (weight, rows) must fit the bounds of a group of that size.

    Returns the group's sums of all sections, concatenated (``layout.split`` names
    them). ``total``, the round's running sum of every vector, spares recomputing it
    for the whole round (the check that almost every round ends with).

    ``devices``: member -> devices its vector sums (a relay's partial sum counts all
    its contributors; 1 if absent). The bounds and MIN_GROUP count devices; the
    search still splits members, so a relay's partial is one indivisible member:
    a culprit behind a relay costs that relay's whole subtree, and the relay is
    the member named.
    """
    weight = devices or {}
    public_key, decrypt = decryptor(private_key)
    everyone = frozenset(vectors)

    def check(group: frozenset[str]) -> list[int] | None:
        if not group:
            return None
        n_devices = sum(weight.get(member, 1) for member in group)
        if n_devices < MIN_GROUP and group != everyone:
            raise ValueError("refusing to decrypt one device's update")
        ciphertexts = total if total is not None and group == everyone else group_sum(
            public_key, vectors, group)
        try:
            sections = layout.decode(decrypt(group, ciphertexts), n_devices)
        except CodecError:
            return None
        return [value for sums in sections for value in sums]
    return check


@dataclass
class Suspects:
    """Excluded groups per device across the rounds of a run; names culprits.

    A device is named once it was excluded in ``streak`` rounds in a row in which
    it reported (a round that used its update resets the streak) and is the only
    device common to those groups. With one misbehaving device nobody else can be
    named: every excluded group holds it, so an honest device's groups always
    share it too. With several, an honest device could share excluded groups with
    different culprits; needing ``streak`` consecutive exclusions (each about
    (culprits x 2) / fleet likely for an honest device) makes that rare, and
    the culprits are quarantined after ``streak`` rounds, which ends the window.
    """

    streak: int = 3
    groups: dict[str, list[tuple[int, frozenset[str]]]] = field(default_factory=dict)
    culprits: dict[str, tuple[int, ...]] = field(default_factory=dict)  # id -> its rounds

    def __post_init__(self) -> None:
        if self.streak < 2:
            raise ValueError("a culprit needs at least two rounds to be told apart")

    def record(self, round_id: int, excluded: Iterable[frozenset[str]],
               kept: Iterable[str] = ()) -> list[str]:
        """Note this round's excluded groups and kept devices; return newly named culprits."""
        for agent in kept:
            self.groups.pop(agent, None)  # its update was used: the streak ends
        named = []
        for group in excluded:
            for agent in group:
                self.groups.setdefault(agent, []).append((round_id, group))
        for agent, seen in self.groups.items():
            if agent in self.culprits or len(seen) < self.streak:
                continue
            if frozenset.intersection(*(g for _, g in seen)) == {agent}:
                self.culprits[agent] = tuple(r for r, _ in seen)
                named.append(agent)
        return sorted(named)
