"""The distillation teacher: per-class mean logits through a real encrypted round."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedmq.models import ModelSpec, make_model
from fedmq.protocol.crypto.codec import CodecParams, quantize_update
from fedmq.protocol.crypto.paillier import add_ciphertexts, decrypt_ints, encrypt_ints
from fedmq.protocol.errors import CodecError
from fedmq.protocol.layout import layout_for
from fedmq.protocol.privacy.terms import PrivacyTerms, SampleDpParams
from fedmq.protocol.sums.evaluation import FleetEvaluation, local_evaluation
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.sums.teacher import (
    LOGIT_CLIP,
    class_logits,
    fleet_teacher,
    local_teacher,
    teacher_length,
)


def _devices(classes: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(7):
        n = int(rng.integers(3, 30))
        X = rng.normal(i, 2.0, (n, 3))
        # Label skew: each device holds one or two classes; the last class nobody holds.
        y = rng.choice([i % (classes - 1), (i + 1) % (classes - 1)], n).astype(float)
        out.append((X, y))
    return out


@pytest.mark.parametrize("classes", [2, 4])
def test_teacher_through_an_encrypted_round_is_the_pooled_per_class_mean_logits(
        keypair: Any, classes: int) -> None:
    pub, priv = keypair
    spec = ModelSpec(kind="logistic", features=("a", "b", "c"), n_classes=classes,
                     center=(0.0, 0.0, 0.0), scale=(2.0, 2.0, 2.0))
    rng = np.random.default_rng(classes)
    model = make_model(spec).set_params_vector(rng.normal(0, 1, spec.n_params))
    codec, params = CodecParams(), StatsParams()
    layout = layout_for("training", spec, codec, params, pub.n, distill=True)
    assert [s.name for s in layout.sections] == ["training", "evaluation", "teacher"]
    devices = _devices(classes)
    total = None
    for X, y in devices:
        train, _ = quantize_update(np.zeros(spec.n_params), len(y), codec)
        parts = [train, local_evaluation(model, X, y, params), local_teacher(model, X, y, params)]
        cts = encrypt_ints(pub, layout.encode(parts))
        total = cts if total is None else add_ciphertexts(pub, total, cts)
    sums = layout.split([v for part in layout.decode(decrypt_ints(priv, total), len(devices))
                         for v in part])
    counts = [sum(row) for row in FleetEvaluation.from_sums(sums["evaluation"], spec,
                                                            params).confusion]
    teacher = np.asarray(fleet_teacher(sums["teacher"], counts, spec, params)).reshape(
        classes, classes)
    X = np.vstack([x for x, _ in devices])
    y = np.concatenate([y for _, y in devices]).astype(int)
    logits = class_logits(model, X)
    for c in range(classes):
        want = logits[y == c].mean(axis=0) if np.any(y == c) else np.zeros(classes)
        assert teacher[c] == pytest.approx(want, abs=params.resolution * 2)
    assert np.all(teacher[-1] == 0)  # the class nobody holds: a zero row (no teacher)
    assert np.abs(teacher[0]).max() > 0.01


def _shape(layout: Any) -> list[tuple[str, int, int, int]]:
    return [(s.name, s.n_values, s.max_count, s.codec.plaintext_count(s.n_values))
            for s in layout.sections]


def test_layouts_of_fleets_that_do_not_distil_stay_as_they_were(keypair: Any) -> None:
    pub, _ = keypair
    codec, params = CodecParams(), StatsParams()
    logistic = ModelSpec(kind="logistic", features=("a",), n_classes=3)
    linear = ModelSpec(kind="linear", features=("a",))
    plain = layout_for("training", logistic, codec, params, pub.n)
    assert [s.name for s in plain.sections] == ["training", "evaluation"]
    distilling = layout_for("training", logistic, codec, params, pub.n, distill=True)
    assert _shape(distilling)[:2] == _shape(plain)
    assert _shape(distilling)[2][:3] == ("teacher", 10, params.max_samples)
    # A regression has no classes; DP without exact aggregates sends no evaluation sums.
    assert _shape(layout_for("training", linear, codec, params, pub.n, distill=True)) == \
        _shape(layout_for("training", linear, codec, params, pub.n))
    dp = PrivacyTerms(sample=SampleDpParams(epsilon=1.0, delta=1e-5, clip=1.0, rounds=3))
    assert [s.name for s in layout_for("training", logistic, codec, params, pub.n, dp,
                                       distill=True).sections] == ["training"]
    for phase in ("statistics", "evaluation"):
        assert _shape(layout_for(phase, logistic, codec, params, pub.n, distill=True)) == \
            _shape(layout_for(phase, logistic, codec, params, pub.n))
    assert teacher_length(logistic) == 10 and teacher_length(linear) == 0


def test_logits_are_clipped_before_encoding() -> None:
    spec = ModelSpec(kind="logistic", features=("a",), n_classes=2)
    model = make_model(spec).set_params_vector([1e6, 0.0])  # score 1e6 * x
    params = StatsParams()
    sums = local_teacher(model, np.array([[1.0], [-1.0]]), np.array([1.0, 0.0]), params)
    unit = 1 << params.fraction_bits
    # class 0 row: (0, -1e6) -> (0, -30); class 1 row: (0, 1e6) -> (0, 30)
    assert sums == [0, -int(LOGIT_CLIP * unit), 0, int(LOGIT_CLIP * unit), 2]


def test_inconsistent_teacher_sums_are_rejected() -> None:
    spec = ModelSpec(kind="logistic", features=("a",), n_classes=2)
    params = StatsParams()
    with pytest.raises(CodecError, match="row count"):
        fleet_teacher([0, 0, 0, 0, 5], [2, 2], spec, params)
    with pytest.raises(CodecError, match="clipped range"):
        fleet_teacher([0, 0, 0, 100 << params.fraction_bits, 2], [1, 1], spec, params)
    with pytest.raises(CodecError):
        fleet_teacher([0, 0, 0, 2], [1, 1], spec, params)
