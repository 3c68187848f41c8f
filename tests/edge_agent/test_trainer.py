from __future__ import annotations

import numpy as np
import pytest
from support import local_data

from fedmq.edge_agent.health import RoundSkipped
from fedmq.edge_agent.trainer import train_round
from fedmq.models import ModelSpec
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.messages import RoundMessage, TrainingSettings


def round_for(spec, params=None):
    return RoundMessage(fleet="f", round_id=1, model_version=0, state="training", spec=spec,
                        params=tuple(params if params is not None else np.zeros(spec.n_params)),
                        deadline=0.0, settings=TrainingSettings(epochs=3, learning_rate=0.1),
                        key_fingerprint="k" * 64, codec_digest="d" * 32, run_id="r1")


def test_update_is_local_minus_global_and_lowers_local_loss():
    data = local_data(0, 120)
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    start = np.full(spec.n_params, 0.05)
    upd = train_round(round_for(spec, start), data, max_weight=10_000, seed=3)
    assert upd.weight == 120 and upd.delta.shape == (spec.n_params,)
    assert upd.loss_after < upd.loss_before
    assert np.linalg.norm(upd.delta) > 0


def test_weight_is_capped_by_codec_max_weight():
    data = local_data(0, 120)
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    assert train_round(round_for(spec), data, max_weight=50).weight == 50


def test_feature_mismatch_is_a_clear_error():
    data = local_data(0, 30)
    spec = ModelSpec(kind="logistic", features=("x1", "x2", "other"), n_classes=2)
    with pytest.raises(ConfigError, match="features") as info:
        train_round(round_for(spec), data, max_weight=100)
    assert info.value.code == "feature-mismatch"  # type: ignore[attr-defined]
    assert str(info.value).endswith("fleet model's: missing: other; extra: x3")


def test_labels_outside_the_model_classes_are_a_data_error():
    data = local_data(0, 30)
    bad = type(data)(X=data.X, y=data.y + 2, features=data.features, label="y")
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    with pytest.raises(ConfigError, match="local training failed") as info:
        train_round(round_for(spec), bad, max_weight=100)
    assert info.value.code == "class-outside-model"  # type: ignore[attr-defined]


def test_non_integer_class_labels_are_bad_labels():
    data = local_data(0, 30)
    bad = type(data)(X=data.X, y=data.y * 0.5, features=data.features, label="y")
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    with pytest.raises(RoundSkipped, match="integers") as info:
        train_round(round_for(spec), bad, max_weight=100)
    assert info.value.code == "bad-labels"


def test_clip_notes_name_the_count_the_bound_and_the_likely_cause():
    from fedmq.edge_agent.trainer import LocalUpdate, clip_note, fleet_clip_note

    assert clip_note(3, 12, 304, 10.0) == (
        "round 3: clipped 12 of 304 values to \u00b110 (missing scaling or too small [codec] "
        "clip?)")
    ups = [LocalUpdate(3, np.zeros(5), 10, 1.0, 0.5, clipped=c) for c in (0, 2, 1)]
    assert fleet_clip_note(3, ups, 0.5) == (
        "round 3: 2 agents clipped 3 of 15 values to \u00b10.5 (missing scaling or too small "
        "[codec] clip?)")
    assert fleet_clip_note(3, ups[:1], 0.5) is None
