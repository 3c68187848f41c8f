"""Local training for one round: from the global parameters to the weighted delta. Pure.

The local objective (``local_fit``) is the model's mean loss + l2/2 ||W||^2, plus, when the
signed TrainingSettings ask for them (issue 21, non-IID fleets): FedProx's
mu/2 ||w - w_global||^2 (models.base), a distillation term towards the fleet's teacher
(models.logistic.distill_loss; classifiers only) and augmented training rows
(models.augment). The losses reported before/after are the plain loss on the real rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedmq.edge_agent.data import LocalData, column_diff
from fedmq.edge_agent.health import RoundSkipped, skip_code
from fedmq.models import ModelError, ModelSpec, make_model
from fedmq.models.augment import augment
from fedmq.models.dpsgd import DpSgd, fit_dpsgd
from fedmq.models.logistic import LogisticRegressionModel
from fedmq.protocol.messages import RoundMessage, TrainingSettings


@dataclass(frozen=True)
class LocalUpdate:
    """The plaintext update before encoding; it never leaves the device."""

    round_id: int
    delta: NDArray[np.float64]
    weight: int
    loss_before: float
    loss_after: float
    clipped: int = 0  # coordinates of delta the codec clipped to +-clip (set after quantizing)


def clip_note(round_id: int, clipped: int, values: int, clip: float,
              agents: int | None = None) -> str:
    """The one line a round's clipping deserves: many clipped values bias the model."""
    who = "" if agents is None else f"{agents} agent{'' if agents == 1 else 's'} "
    return (f"round {round_id}: {who}clipped {clipped} of {values} values to \u00b1{clip:g} "
            "(missing scaling or too small [codec] clip?)")


def fleet_clip_note(round_id: int, updates: list[LocalUpdate], clip: float) -> str | None:
    """One line for the whole fleet's clipping in a round (the simulation), or None."""
    clipping = [u for u in updates if u.clipped]
    if not clipping:
        return None
    return clip_note(round_id, sum(u.clipped for u in clipping),
                     sum(u.delta.size for u in updates), clip, agents=len(clipping))


def check_features(fleet: tuple[str, ...], data: LocalData) -> None:
    """The fleet model's features must be this device's [data] features, in order; the
    skip names what differs ("missing: f23; extra: foo"), not both whole lists."""
    if tuple(fleet) != data.features:
        raise RoundSkipped(
            "feature-mismatch", "this device's [data] features differ from the fleet "
            f"model's: {column_diff(fleet, data.features)}")


def local_fit(spec: ModelSpec, settings: TrainingSettings, start_params: ArrayLike,
              X: ArrayLike, y: ArrayLike, *, teacher: ArrayLike | None = None,
              seed: int | None = None,
              dpsgd: DpSgd | None = None) -> tuple[NDArray[np.float64], float, float]:
    """(trained params, loss before, loss after) of ``settings``' local objective from
    ``start_params`` (the global model, also FedProx's anchor) on rows ``X, y``.

    ``teacher``: the round's C*C per-class mean logits (RoundMessage.teacher), used when
    settings.distill_weight > 0; empty or None trains without the term. ``seed`` fixes the
    minibatch order and the augmentation draws (None: fresh entropy). Raises ModelError.
    """
    start = np.asarray(start_params, dtype=np.float64)
    model = make_model(spec, learning_rate=settings.learning_rate, epochs=settings.epochs,
                       batch_size=settings.batch_size, l2=settings.l2, seed=seed)
    before = float(model.set_params_vector(start).loss(X, y))
    model.prox_mu = settings.prox_mu
    model.prox_center = model.params_.copy()
    if settings.distills:
        if not isinstance(model, LogisticRegressionModel):
            raise ModelError("distillation needs a classifier; a linear model has no classes")
        if teacher is not None and np.size(teacher):
            k = spec.n_classes
            if np.size(teacher) != k * k:
                raise ModelError(f"a teacher holds {k * k} logits for {k} classes, "
                                 f"got {np.size(teacher)}")
            model.teacher = np.asarray(teacher, dtype=np.float64).reshape(k, k)
            model.distill_weight = settings.distill_weight
            model.temperature = settings.distill_temperature
    rows_X, rows_y = X, y
    if settings.augment != "none":
        if dpsgd is not None:
            # A row drawn twice (or jittered next to itself) would count twice against the
            # per-row clip: the DP-SGD accounting assumes each real row appears once.
            raise ModelError("augmentation cannot be combined with DP-SGD (a repeated row "
                             "would exceed the per-row sensitivity)")
        rows_X, rows_y = augment(np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64),
                                 settings.augment, amplitude=settings.jitter,
                                 classifier=spec.kind == "logistic", seed=seed)
    if dpsgd is None:
        model.fit(rows_X, rows_y, init_params=start)
    else:
        fit_dpsgd(model, rows_X, rows_y, dpsgd, init_params=start)
    after = float(model.loss(X, y))
    return model.params_, before, after


def train_round(msg: RoundMessage, data: LocalData, *, max_weight: int,
                seed: int | None = None, dpsgd: DpSgd | None = None) -> LocalUpdate:
    """Train E epochs from the global model on local data; delta = w_local - w_global.

    With ``dpsgd`` (edge_agent.sample_privacy.SampleDpPlan.dpsgd(), charged to the
    ledger first) it runs sample-level DP-SGD instead; its noise always comes from
    fresh OS entropy, never from ``seed``: a noise seed in a config voids the guarantee.

    Raises RoundSkipped (with its skip code) when the data cannot serve this model.
    """
    check_features(msg.spec.features, data)
    start = msg.params_array
    try:
        params, before, after = local_fit(msg.spec, msg.settings, start, data.X, data.y,
                                          teacher=msg.teacher, seed=seed, dpsgd=dpsgd)
    except ModelError as exc:
        # Bad local labels or a diverging step skip this round; they must not
        # kill an agent that will serve the next one.
        raise RoundSkipped(skip_code(exc),
                           f"local training failed on {data.label!r}: {exc}") from exc
    # The sample count is the FedAvg weight; capping it at the declared max keeps
    # the encoded sum inside the codec's bounds (and one device from dominating).
    # It counts REAL rows, never augmented ones: oversampling and jitter copy rows the
    # device already has, so counting the copies would let a device inflate its say in
    # the average (and its declared row count) without holding any more data.
    weight = min(data.n_samples, max_weight)
    return LocalUpdate(round_id=msg.round_id, delta=params - start, weight=weight,
                       loss_before=before, loss_after=after)
