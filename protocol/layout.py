"""What one encrypted update holds in each phase of a run, and the contract that names it.

An update is a sequence of sections, each packed with its own codec and each
ending in a count that bounds it:

- statistics round: [statistics (count, sums, sums of squares)]
- training round:   [training (weighted delta, weight), evaluation (sums, rows)
                     [, teacher (per-class logit sums, rows) when the fleet distils]]
- final evaluation: [evaluation]

Training values are small (|delta| <= clip) and evaluation sums large (sums of
squares of raw data), so each section gets slots as wide as its own bound:
one uniform slot width would double a training update's ciphertexts. The
ciphertexts of all sections travel concatenated in one signed update
(protocol.wire); the aggregator multiplies them position by position without
caring where one section ends, and splits the decrypted sum.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import Codec, CodecParams, _Slots, make_codec
from fedmq.protocol.errors import CodecError, CodecOverflowError
from fedmq.protocol.privacy.noise import DpContract
from fedmq.protocol.privacy.terms import PrivacyTerms
from fedmq.protocol.sums.evaluation import eval_length
from fedmq.protocol.sums.statistics import StatsParams, stats_length
from fedmq.protocol.sums.teacher import teacher_length

PHASES = ("statistics", "training", "evaluation")


class StatsCodec(_Slots):
    """Packs sums of data (statistics, evaluation) under the statistics contract."""

    def __init__(self, params: StatsParams, modulus: int) -> None:
        super().__init__(params, modulus)
        self.params = params


class DpCodec(_Slots):
    """Packs device-level DP updates: noised integers whose bound includes the noise tail."""

    def __init__(self, contract: DpContract, modulus: int) -> None:
        super().__init__(contract, modulus)
        self.contract = contract


def contract_digest(codec: CodecParams, statistics: StatsParams, key_fingerprint: str,
                    privacy: PrivacyTerms | None = None) -> str:
    """Names the whole encoding contract (codecs, DP terms if any, key): updates carry it."""
    doc = {"codec": codec.to_dict(), "statistics": statistics.to_dict(), "key": key_fingerprint}
    if privacy is not None and privacy.enabled:  # a fleet without DP keeps its digest
        doc["privacy"] = privacy.to_dict()
    canon = json.dumps(doc, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Section:
    name: str
    codec: Codec | StatsCodec | DpCodec
    n_values: int
    max_count: int  # the section's last value (weight or rows) lies in [1, max_count]


@dataclass(frozen=True)
class UpdateLayout:
    phase: str
    sections: tuple[Section, ...]

    @property
    def n_values(self) -> int:
        return sum(s.n_values for s in self.sections)

    def plaintext_count(self) -> int:
        return sum(s.codec.plaintext_count(s.n_values) for s in self.sections)

    def encode(self, parts: Sequence[Sequence[int]]) -> list[int]:
        """Plaintexts of every section, concatenated; each part must fit its section."""
        if len(parts) != len(self.sections):
            raise CodecError(f"a {self.phase} update has {len(self.sections)} sections, "
                             f"got {len(parts)}")
        out: list[int] = []
        for section, values in zip(self.sections, parts, strict=True):
            if len(values) != section.n_values:
                raise CodecError(f"section {section.name} takes {section.n_values} values, "
                                 f"got {len(values)}")
            if not 1 <= values[-1] <= section.max_count:
                raise CodecError(f"section {section.name}: count {values[-1]} outside "
                                 f"[1, {section.max_count}]")
            out += section.codec.encode(values)
        return out

    def decode(self, plaintexts: Sequence[int], n_summed: int) -> list[list[int]]:
        """Exact sums per section of ``n_summed`` updates; raise on overflow or a forged count.

        Each honest device's count lies in [1, max_count], so a group of k has a
        total in [k, k * max_count]: a forged count inside the value bound still fails.
        """
        if len(plaintexts) != self.plaintext_count():
            raise CodecError(f"a {self.phase} update has {self.plaintext_count()} plaintexts, "
                             f"got {len(plaintexts)}")
        out, at = [], 0
        for section in self.sections:
            size = section.codec.plaintext_count(section.n_values)
            sums = section.codec.decode(plaintexts[at:at + size], section.n_values, n_summed)
            at += size
            if not n_summed <= sums[-1] <= n_summed * section.max_count:
                raise CodecOverflowError(f"section {section.name}: total count {sums[-1]} "
                                         f"impossible for {n_summed} updates")
            out.append(sums)
        return out

    def split(self, flat: Sequence[int]) -> dict[str, list[int]]:
        """Decoded sums (all sections concatenated) by section name."""
        out, at = {}, 0
        for section in self.sections:
            out[section.name] = list(flat[at:at + section.n_values])
            at += section.n_values
        return out


def layout_for(phase: str, spec: ModelSpec, codec: CodecParams, statistics: StatsParams,
               modulus: int, privacy: PrivacyTerms | None = None, *,
               distill: bool = False) -> UpdateLayout:
    """The sections an update of ``phase`` carries for a model of ``spec``.

    Under DP every device counts once (count 1, so a group of k sums to exactly k), a
    device-level DP update is packed with the noise's bound, and the exact evaluation
    sums travel only where the terms allow them (PrivacyTerms.evaluates).

    ``distill`` (the signed round's TrainingSettings.distills): a classifier's training
    update also carries the teacher's sums (protocol.sums.teacher), next to the evaluation
    sums they share rows with. Both sides read it from the same signed settings, so they
    agree; a fleet that does not distil keeps its layout exactly.
    """
    privacy = privacy or PrivacyTerms()
    n_train = spec.n_params + 1
    if privacy.device is not None:
        contract = DpContract(privacy.device, spec.n_params, codec.max_agents)
        training = Section("training", DpCodec(contract, modulus), n_train, 1)
    else:
        training = Section("training", make_codec(codec, modulus), n_train,
                           1 if privacy.enabled else codec.max_weight)
    evaluation = Section("evaluation", StatsCodec(statistics, modulus), eval_length(spec),
                         statistics.max_samples)
    if phase == "statistics":
        return UpdateLayout(phase, (Section("statistics", StatsCodec(statistics, modulus),
                                            stats_length(spec), statistics.max_samples),))
    if phase == "training":
        if not privacy.evaluates:
            return UpdateLayout(phase, (training,))
        if distill and teacher_length(spec):
            teacher = Section("teacher", StatsCodec(statistics, modulus), teacher_length(spec),
                              statistics.max_samples)
            return UpdateLayout(phase, (training, evaluation, teacher))
        return UpdateLayout(phase, (training, evaluation))
    if phase == "evaluation":
        return UpdateLayout(phase, (evaluation,))
    raise CodecError(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")
