"""Each phase's sections equal the protocol functions on the right rows and the right model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from support import FEATURES, SPEC, local_data

from fedmq.edge_agent.data import LocalData, split_holdout
from fedmq.edge_agent.health import RoundSkipped
from fedmq.edge_agent.phases import PhaseValues, phase_line, phase_values
from fedmq.edge_agent.trainer import train_round
from fedmq.models import ModelSpec, make_model
from fedmq.protocol.crypto.codec import CodecParams, quantize_update
from fedmq.protocol.layout import layout_for
from fedmq.protocol.messages import RoundMessage, TrainingSettings
from fedmq.protocol.sums.evaluation import local_evaluation
from fedmq.protocol.sums.statistics import StatsParams, local_statistics

STATS = StatsParams()
CODEC = CodecParams()
LINEAR = ModelSpec(kind="linear", features=FEATURES)
ALL = local_data(3, 80)
TRAIN, EVAL = split_holdout(ALL, 0.25, "pi-1")


def round_msg(phase: str, spec: ModelSpec = SPEC, params: np.ndarray | None = None,
              round_id: int = 1) -> RoundMessage:
    if params is None:
        params = np.linspace(-0.5, 0.7, spec.n_params)
    return RoundMessage(fleet="test", round_id=round_id, model_version=round_id,
                        state=phase, spec=spec, params=tuple(params), deadline=0.0,
                        settings=TrainingSettings(epochs=2, learning_rate=0.1),
                        key_fingerprint="k" * 64, codec_digest="d" * 32, run_id="r1")


def serve(msg: RoundMessage, codec: CodecParams = CODEC) -> PhaseValues:
    return phase_values(msg, TRAIN, EVAL, codec, STATS, seed=1)


def fits_layout(done: PhaseValues, spec: ModelSpec, codec: CodecParams = CODEC) -> None:
    layout = layout_for(done.phase, spec, codec, STATS, 1 << 2048)
    assert [len(p) for p in done.parts] == [s.n_values for s in layout.sections]
    layout.encode(done.parts)  # every count inside its section's bounds


def test_holdout_split_gives_distinct_rows():
    assert (TRAIN.n_samples, EVAL.n_samples) == (60, 20)


@pytest.mark.parametrize("spec", [SPEC, LINEAR])
def test_statistics_are_the_sums_of_the_training_rows_only(spec):
    unscaled = replace(spec, center=None, scale=None)  # round 0 may come without scaling
    done = serve(round_msg("statistics", unscaled, np.zeros(spec.n_params), round_id=0))
    assert done.parts == [local_statistics(TRAIN.X, TRAIN.y, unscaled, STATS).values]
    assert done.parts != [local_statistics(ALL.X, ALL.y, unscaled, STATS).values]
    assert done.rows == 60 and done.update is None
    fits_layout(done, unscaled)
    assert phase_line(done) == "sums of 60 training rows"


@pytest.mark.parametrize("spec", [SPEC, LINEAR])
def test_training_sends_the_delta_and_the_received_model_on_the_evaluation_rows(spec):
    msg = round_msg("training", spec)
    done = serve(msg)
    update = train_round(msg, TRAIN, max_weight=CODEC.max_weight, seed=1)
    values, clipped = quantize_update(update.delta, update.weight, CODEC)
    received = make_model(spec).set_params_vector(msg.params_array)
    assert done.parts == [values, local_evaluation(received, EVAL.X, EVAL.y, STATS,
                                                   clipped_train=clipped)]
    # Not the trained model, not the training rows.
    trained = make_model(spec).set_params_vector(msg.params_array + update.delta)
    assert done.parts[1] != local_evaluation(trained, EVAL.X, EVAL.y, STATS,
                                             clipped_train=clipped)
    assert done.parts[1][-1] == EVAL.n_samples and done.parts[0][-1] == TRAIN.n_samples
    assert done.update is not None and np.array_equal(done.update.delta, update.delta)
    fits_layout(done, spec)


def test_training_reports_the_codecs_clipping_in_the_evaluation_section():
    tight = CodecParams(clip=1e-4)
    done = serve(round_msg("training"), tight)
    assert done.clipped > 0 and done.update is not None and done.update.clipped == done.clipped
    assert done.parts[1][-3] == done.clipped  # [..., clipped_train, clipped_eval, n]
    fits_layout(done, SPEC, tight)
    assert "received model evaluated on 20 rows" in phase_line(done)


@pytest.mark.parametrize("spec", [SPEC, LINEAR])
def test_final_evaluation_is_the_received_model_on_the_evaluation_rows_only(spec):
    msg = round_msg("evaluation", spec, round_id=4)
    done = serve(msg)
    received = make_model(spec).set_params_vector(msg.params_array)
    assert done.parts == [local_evaluation(received, EVAL.X, EVAL.y, STATS, clipped_train=0)]
    other = make_model(spec).set_params_vector(np.zeros(spec.n_params))
    assert done.parts != [local_evaluation(other, EVAL.X, EVAL.y, STATS)]
    assert done.update is None and done.rows == 20
    fits_layout(done, spec)
    assert phase_line(done) == "final model evaluated on 20 rows"


def _with_labels(data: LocalData, y: np.ndarray) -> LocalData:
    return replace(data, y=y)


@pytest.mark.parametrize("phase", ["statistics", "training", "evaluation"])
@pytest.mark.parametrize("labels, code", [
    (np.arange(20.0), "class-outside-model"),
    (np.full(20, 0.5), "bad-labels"),
])
def test_unusable_labels_skip_every_phase_with_their_code(phase, labels, code):
    bad = _with_labels(EVAL, labels)
    msg = round_msg(phase, round_id=0 if phase == "statistics" else 1)
    with pytest.raises(RoundSkipped) as info:
        phase_values(msg, bad, bad, CODEC, STATS, seed=1)
    assert info.value.code == code


def test_non_finite_regression_labels_are_bad_labels_in_the_statistics_round():
    bad = _with_labels(EVAL, np.where(np.arange(20) == 3, np.nan, 1.0))
    with pytest.raises(RoundSkipped) as info:
        phase_values(round_msg("statistics", LINEAR, np.zeros(LINEAR.n_params), 0), bad, bad,
                     CODEC, STATS)
    assert info.value.code == "bad-labels"


@pytest.mark.parametrize("phase", ["statistics", "training", "evaluation"])
def test_other_features_skip_every_phase(phase):
    other = ModelSpec(kind="logistic", features=("x1", "x2", "x9"), n_classes=2)
    msg = round_msg(phase, other, np.zeros(other.n_params),
                    round_id=0 if phase == "statistics" else 1)
    with pytest.raises(RoundSkipped) as info:
        serve(msg)
    assert info.value.code == "feature-mismatch"
    assert str(info.value) == ("this device's [data] features differ from the fleet model's: "
                               "missing: x9; extra: x3")


def personal_msg(phase: str, mode: str, spec: ModelSpec = SPEC) -> RoundMessage:
    msg = round_msg(phase, spec, round_id=4 if phase == "evaluation" else 1)
    return replace(msg, settings=replace(msg.settings, personal=mode))


@pytest.mark.parametrize("phase", ["training", "evaluation"])
@pytest.mark.parametrize("mode", ["finetune", "ditto", "intercept"])
def test_personal_block_is_the_personal_model_on_the_same_evaluation_rows(phase, mode):
    msg = personal_msg(phase, mode)
    done = serve(msg)
    assert done.personal is not None and done.personal.mode == mode
    assert done.personal.meta == {"run_id": "r1", "round_id": msg.round_id,
                                  "model_version": msg.model_version}
    model = done.personal.model()
    assert done.parts[-1] == local_evaluation(model, EVAL.X, EVAL.y, STATS)  # clipped_train 0
    assert done.parts[-1] != done.parts[-2]  # not the received model's sums
    layout = layout_for(phase, SPEC, CODEC, STATS, 1 << 2048, personal=True)
    assert [s.name for s in layout.sections][-2:] == ["evaluation", "personal"]
    assert [len(p) for p in done.parts] == [s.n_values for s in layout.sections]
    layout.encode(done.parts)
    assert f"personal model ({mode}" in phase_line(done)


def test_a_device_without_a_personal_model_sends_its_global_sums_in_the_block():
    done = phase_values(personal_msg("training", "ditto"), TRAIN, EVAL, CODEC, STATS, seed=1,
                        personal_mode="none")
    assert done.personal is None
    assert done.parts[-1][:-3] == done.parts[-2][:-3] and done.parts[-1][-1] == EVAL.n_samples
    # A personal fit that fails (bad labels for it) also falls back, and says why.
    bad = LocalData(X=TRAIN.X, y=TRAIN.y + 5, features=FEATURES, label="y")
    done = phase_values(personal_msg("evaluation", "finetune"), bad, EVAL, CODEC, STATS)
    assert done.personal is None and "not fitted" in done.personal_error
    assert done.parts[1] == done.parts[0]


def test_the_device_may_keep_its_own_mode_without_the_fleets_block():
    done = phase_values(round_msg("training"), TRAIN, EVAL, CODEC, STATS, seed=1,
                        personal_mode="intercept")
    assert done.personal is not None and done.personal.mode == "intercept"
    assert len(done.parts) == 2  # the fleet's layout: no personal block
    assert serve(round_msg("training")).personal is None


def test_no_personal_block_without_exact_evaluation_sums():
    from fedmq.protocol.privacy.noise import DpParams
    from fedmq.protocol.privacy.terms import PrivacyTerms
    dp = PrivacyTerms(device=DpParams(epsilon=3.0, delta=1e-5, noise_multiplier=2.0, clip=1.0,
                                      quorum=2))
    done = phase_values(personal_msg("training", "ditto"), TRAIN, EVAL, CODEC, STATS,
                        privacy=dp, seed=1)
    assert len(done.parts) == 1  # the (noised) training section only, as without personal
    assert done.personal is not None  # the device still keeps its personal model
    layout = layout_for("training", SPEC, CODEC, STATS, 1 << 2048, dp, personal=True)
    assert [s.name for s in layout.sections] == ["training"]


def test_an_intercept_fleet_trains_the_global_update_on_the_devices_own_standardisation():
    from fedmq.edge_agent.personal import aligned_rows
    msg = personal_msg("training", "intercept")
    done = serve(msg)
    aligned = replace(TRAIN, X=aligned_rows(SPEC, TRAIN.X))
    want = train_round(msg, aligned, max_weight=CODEC.max_weight, seed=1)
    raw = train_round(msg, TRAIN, max_weight=CODEC.max_weight, seed=1)
    assert done.update is not None
    np.testing.assert_array_equal(done.update.delta, want.delta)
    assert not np.allclose(done.update.delta, raw.delta)
    # The aligned rows are standardised by the fleet's spec exactly as by the device's own.
    from fedmq.edge_agent.personal import own_standardisation
    own = own_standardisation(SPEC, TRAIN.X)
    z_own = (TRAIN.X - np.asarray(own.center)) / np.asarray(own.scale)
    z_fleet = (aligned.X - np.asarray(SPEC.center)) / np.asarray(SPEC.scale)
    np.testing.assert_allclose(z_fleet, z_own, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["finetune", "ditto"])
def test_a_distilling_fleet_with_personal_models_sends_its_sections_in_the_layouts_order(mode):
    """Personal block after the global evaluation sums, the teacher sums last: as layout_for
    orders them (both sides read the same signed settings)."""
    msg = personal_msg("training", mode)
    msg = replace(msg, settings=replace(msg.settings, distill_weight=0.5))
    done = serve(msg)
    layout = layout_for("training", SPEC, CODEC, STATS, 1 << 2048, personal=True, distill=True)
    assert [s.name for s in layout.sections] == ["training", "evaluation", "personal",
                                                 "teacher"]
    assert [len(p) for p in done.parts] == [s.n_values for s in layout.sections]
    layout.encode(done.parts)
    assert done.personal is not None
    assert done.parts[2] == local_evaluation(done.personal.model(), EVAL.X, EVAL.y, STATS)
