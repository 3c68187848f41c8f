from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from support import local_data

from fedmq.edge_agent.health import RoundSkipped
from fedmq.edge_agent.trainer import local_fit, train_round
from fedmq.models import ModelError, ModelSpec, make_model
from fedmq.models.dpsgd import DpSgd
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


# -- the local objective of non-IID fleets (issue 21): local_fit -----------------------------

def _regression(n: int = 6) -> tuple[ModelSpec, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    X = rng.normal(0, 1, (n, 2))
    y = X @ np.array([1.5, -2.0]) + 0.3 + rng.normal(0, 0.1, n)
    return ModelSpec(kind="linear", features=("a", "b")), X, y


def test_default_settings_train_exactly_as_the_plain_model_fit():
    data = local_data(1, 50)
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    start = np.full(spec.n_params, 0.1)
    s = TrainingSettings()
    params, before, after = local_fit(spec, s, start, data.X, data.y, seed=5)
    ref = make_model(spec, learning_rate=s.learning_rate, epochs=s.epochs,
                     batch_size=s.batch_size, seed=5).fit(data.X, data.y, init_params=start)
    assert np.array_equal(params, ref.params_)
    assert after == ref.loss(data.X, data.y) and before > after


def test_fedprox_full_batch_steps_equal_the_hand_computed_proximal_steps():
    spec, X, y = _regression()
    w0 = np.array([0.2, -0.1, 0.05])
    lr, mu, l2 = 0.1, 0.5, 0.01
    s = TrainingSettings(epochs=2, batch_size=len(y), learning_rate=lr, l2=l2, prox_mu=mu)
    params, _, _ = local_fit(spec, s, w0, X, y, seed=0)
    # By hand: objective mean(0.5 r^2) + l2/2 |w|^2 + mu/2 |theta - theta_0|^2 over all of
    # theta = (w, b); the prox term taken exactly (implicit), the rest as a gradient step.
    Z = np.hstack([X, np.ones((len(y), 1))])
    theta = w0.copy()
    for _ in range(2):
        r = Z @ theta - y
        g = Z.T @ r / len(y) + l2 * np.array([theta[0], theta[1], 0.0])
        theta = (theta - lr * g + lr * mu * w0) / (1 + lr * mu)
    assert np.allclose(params, theta, rtol=1e-12, atol=1e-14)
    plain, _, _ = local_fit(spec, TrainingSettings(epochs=2, batch_size=len(y),
                                                   learning_rate=lr, l2=l2), w0, X, y, seed=0)
    assert not np.allclose(plain, theta)  # the term matters at this mu
    # To first order in lr*mu the step is the explicit one on the gradient mu*(w - w0).
    small = TrainingSettings(epochs=1, batch_size=len(y), learning_rate=1e-4, prox_mu=1.0)
    start = w0 + 0.3
    one, _, _ = local_fit(spec, small, start, X, y, seed=0)
    r = Z @ start - y
    explicit = start - 1e-4 * (Z.T @ r / len(y) + 1.0 * (start - start))
    assert np.allclose(one, explicit, atol=1e-11)


def test_a_huge_prox_mu_keeps_the_model_at_the_global_one():
    data = local_data(2, 80)
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    start = np.array([0.3, -0.2, 0.1, 0.05])
    params, _, _ = local_fit(spec, TrainingSettings(epochs=5, prox_mu=1e9), start,
                             data.X, data.y, seed=1)
    assert np.allclose(params, start, atol=1e-7)
    free, _, _ = local_fit(spec, TrainingSettings(epochs=5), start, data.X, data.y, seed=1)
    assert np.linalg.norm(free - start) > 0.1


@pytest.mark.parametrize("classes", [2, 3])
def test_distillation_gradient_equals_finite_differences_of_its_loss(classes):
    spec = ModelSpec(kind="logistic", features=("a", "b"), n_classes=classes)
    model = make_model(spec)
    rng = np.random.default_rng(classes)
    teacher = rng.normal(0, 2, (classes, classes))
    if classes == 2:
        teacher[:, 0] = 0.0  # a binary model's logits are (0, s)
    teacher[-1] = 0.0  # a class without a teacher: its rows get no term
    model.teacher, model.distill_weight, model.temperature = teacher, 0.7, 2.5
    n, m = 7, spec.n_outputs
    scores = rng.normal(0, 2, (n, m))
    y = np.arange(n) % classes
    analytic = model._training_gradient(scores, y) - model._score_gradient(scores, y)
    numeric = np.zeros_like(scores)
    h = 1e-6
    for i in range(n):
        for j in range(m):
            up, down = scores.copy(), scores.copy()
            up[i, j] += h
            down[i, j] -= h
            # distill_loss is a mean over rows: n times its derivative is row i's gradient.
            numeric[i, j] = n * (model.distill_loss(up, y) - model.distill_loss(down, y)) / (2 * h)
    assert np.allclose(analytic, numeric, atol=1e-6)
    assert np.abs(analytic[y != classes - 1]).max() > 1e-3  # the term is there ...
    assert np.all(analytic[y == classes - 1] == 0)  # ... except for the untaught class


def test_distillation_pulls_the_local_model_towards_the_teacher():
    data = local_data(3, 60)
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    start = np.zeros(spec.n_params)
    teacher = np.array([0.0, -3.0, 0.0, 3.0])  # confident: class 0 -> s = -3, class 1 -> 3
    base = TrainingSettings(epochs=3)
    plain, _, _ = local_fit(spec, base, start, data.X, data.y, seed=2)
    taught, _, _ = local_fit(spec, replace(base, distill_weight=1.0), start, data.X, data.y,
                             teacher=teacher, seed=2)
    without, _, _ = local_fit(spec, replace(base, distill_weight=1.0), start, data.X, data.y,
                              teacher=(), seed=2)
    assert np.array_equal(without, plain)  # no teacher yet (round 1): plain training
    assert not np.allclose(taught, plain)


def test_augmented_rows_train_but_the_weight_stays_the_real_row_count():
    data = local_data(0, 40)
    skewed = type(data)(X=data.X, y=(np.arange(40) < 4).astype(float), features=data.features,
                        label="y")
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    msg = round_for(spec)
    plain = train_round(msg, skewed, max_weight=10_000, seed=1)
    msg = replace(msg, settings=replace(msg.settings, augment="oversample+jitter"))
    upd = train_round(msg, skewed, max_weight=10_000, seed=1)
    assert upd.weight == plain.weight == 40
    assert not np.allclose(upd.delta, plain.delta)
    # The reported losses are on the real rows, from the same start.
    assert upd.loss_before == plain.loss_before


def test_distillation_of_a_regression_and_augmentation_under_dpsgd_skip_the_round():
    spec, X, y = _regression(20)
    data = type(local_data(0, 2))(X=X, y=y, features=spec.features, label="y")
    msg = round_for(spec)
    with pytest.raises(RoundSkipped, match="distillation needs a classifier"):
        train_round(replace(msg, settings=replace(msg.settings, distill_weight=0.5)), data,
                    max_weight=100)
    dp = DpSgd(clip=1.0, noise_multiplier=1.0, sampling_rate=0.5, steps=3, expected_batch=10)
    with pytest.raises(RoundSkipped, match="DP-SGD"):
        train_round(replace(msg, settings=replace(msg.settings, augment="jitter")), data,
                    max_weight=100, dpsgd=dp)


def test_prox_and_distillation_compose_with_dpsgd():
    data = local_data(4, 60)
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    start = np.array([0.3, -0.2, 0.1, 0.05])
    dp = DpSgd(clip=1.0, noise_multiplier=0.5, sampling_rate=0.3, steps=20, expected_batch=18)
    s = TrainingSettings(prox_mu=1e9, distill_weight=0.5)
    params, _, _ = local_fit(spec, s, start, data.X, data.y, teacher=(0.0, -1.0, 0.0, 1.0),
                             dpsgd=dp)
    assert np.allclose(params, start, atol=1e-6)  # the prox step applies after the noise


def test_a_teacher_of_the_wrong_size_is_a_model_error():
    data = local_data(0, 20)
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    with pytest.raises(ModelError, match="teacher holds 4 logits"):
        local_fit(spec, TrainingSettings(distill_weight=1.0), np.zeros(spec.n_params),
                  data.X, data.y, teacher=(1.0, 2.0))
