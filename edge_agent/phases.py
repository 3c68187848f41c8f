"""What a device computes in each phase of a run: the integer sections of its update. Pure.

- statistics (round 0): sums of the training rows (protocol.sums.statistics), so the
  gateway can derive the pooled center/scale before round 1;
- training: the weighted delta of local training on the training rows, plus the
  evaluation sums of the model the round STARTED from (the received one) on the
  evaluation rows: the fleet metric of w_r, at no extra round;
- evaluation (the final model): only those evaluation sums.

With [training] personal (edge_agent.personal) the device also fits its personal model
from the received one on the training rows, after the update is computed, and the
evaluation section is followed by a second one: the same sums for that personal model on
the same evaluation rows. Both blocks describe round r's models (w_r and the personal
model derived from w_r); with a holdout the personal model never saw the rows it is
evaluated on. A device whose personal fit fails sends its global model's sums there.

Every error that means "this device's data cannot serve the round" becomes a
RoundSkipped with its code; nothing here does I/O or logging.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from numpy.typing import ArrayLike

from fedmq.edge_agent.data import LocalData
from fedmq.edge_agent.health import RoundSkipped, skip_code
from fedmq.edge_agent.personal import PersonalModel, aligned_rows, fit_personal
from fedmq.edge_agent.trainer import LocalUpdate, check_features, train_round
from fedmq.models import ModelError, ModelSpec, make_model
from fedmq.models.base import as_label_vector
from fedmq.models.dpsgd import DpSgd
from fedmq.models.logistic import LogisticRegressionModel
from fedmq.protocol.crypto.codec import CodecParams, quantize_update
from fedmq.protocol.errors import CodecError
from fedmq.protocol.layout import PHASES
from fedmq.protocol.messages import RoundMessage
from fedmq.protocol.privacy.noise import noisy_update
from fedmq.protocol.privacy.terms import PrivacyTerms
from fedmq.protocol.sums.evaluation import local_evaluation
from fedmq.protocol.sums.statistics import StatsParams, local_statistics
from fedmq.protocol.sums.teacher import local_teacher, teacher_length


@dataclass(frozen=True)
class PhaseValues:
    """One phase's integers, section by section (the order of protocol.layout.layout_for)."""

    phase: str
    parts: list[list[int]]
    rows: int  # rows behind the first section (training or statistics rows, or eval rows)
    eval_rows: int = 0  # rows behind the evaluation section, if there is one
    update: LocalUpdate | None = None  # training only: the plaintext update, kept locally
    clipped: int = 0  # values clipped: training codec (training), +-max_abs (statistics)
    personal: PersonalModel | None = None  # fitted this round, kept on the device only
    personal_error: str = ""  # why the personal fit failed (the global sums stood in)


def statistics_values(spec: ModelSpec, data: LocalData, params: StatsParams) -> list[int]:
    """The statistics section: sums of ``data`` (the training rows)."""
    check_features(spec.features, data)
    try:
        # The label check first, so bad labels are skipped as such (not as bad sums).
        as_label_vector(data.y, data.n_samples)
        return local_statistics(data.X, data.y, spec, params).values
    except ModelError as exc:
        raise RoundSkipped(skip_code(exc), f"statistics of {data.label!r}: {exc}") from exc
    except CodecError as exc:
        raise RoundSkipped("data-error", f"statistics of the local data: {exc}") from exc


def evaluation_values(spec: ModelSpec, params: ArrayLike, data: LocalData, stats: StatsParams,
                      *, clipped_train: int = 0) -> list[int]:
    """The evaluation section: the model with ``params`` evaluated on ``data``."""
    check_features(spec.features, data)
    try:
        model = make_model(spec).set_params_vector(params)
        return local_evaluation(model, data.X, data.y, stats, clipped_train=clipped_train)
    except ModelError as exc:
        raise RoundSkipped(skip_code(exc), f"evaluation on {data.label!r}: {exc}") from exc
    except CodecError as exc:
        raise RoundSkipped("data-error", f"evaluation of the received model: {exc}") from exc


def teacher_values(spec: ModelSpec, params: ArrayLike, data: LocalData,
                   stats: StatsParams) -> list[int]:
    """The teacher section (protocol.sums.teacher): per-class logit sums of the received model
    on ``data`` (the evaluation rows, like the evaluation section)."""
    try:
        model = make_model(spec).set_params_vector(params)
        assert isinstance(model, LogisticRegressionModel)  # teacher_length(spec) > 0
        return local_teacher(model, data.X, data.y, stats)
    except ModelError as exc:
        raise RoundSkipped(skip_code(exc), f"teacher sums on {data.label!r}: {exc}") from exc
    except CodecError as exc:
        raise RoundSkipped("data-error", f"teacher sums of the received model: {exc}") from exc


def training_values(msg: RoundMessage, data: LocalData, codec: CodecParams, *,
                    privacy: PrivacyTerms | None = None, dpsgd: DpSgd | None = None,
                    seed: int | None = None) -> tuple[LocalUpdate, list[int]]:
    """The training section: w * q(clip(delta)) and w; the update carries its clip count.

    Under DP the weight is 1 (each device counts once); with device-level DP the
    delta is clipped to its L2 norm and this device's noise share added.
    """
    privacy = privacy or PrivacyTerms()
    if msg.settings.personal == "intercept" and data.n_samples:
        # The fleet learns on every device's own standardisation (edge_agent.personal).
        check_features(msg.spec.features, data)
        data = replace(data, X=aligned_rows(msg.spec, data.X))
    update = train_round(msg, data, max_weight=codec.max_weight, seed=seed, dpsgd=dpsgd)
    try:
        if privacy.device is not None:
            noisy = noisy_update(update.delta, privacy.device)
            values, n_clipped = noisy.values, int(noisy.clipped)
        else:
            weight = 1 if privacy.enabled else update.weight
            values, n_clipped = quantize_update(update.delta, weight, codec)
    except CodecError as exc:  # a non-finite delta: the model blew up on these rows
        raise RoundSkipped("diverged", f"local training: {exc}") from exc
    return replace(update, clipped=n_clipped), values


def personal_step(msg: RoundMessage, train: LocalData, *, mode: str,
                  previous: PersonalModel | None = None,
                  seed: int | None = None) -> tuple[PersonalModel | None, str]:
    """This round's personal model from the received one, or (None, why it failed)."""
    if mode == "none":
        return None, ""
    try:
        check_features(msg.spec.features, train)
        return fit_personal(mode, msg.spec, msg.settings, msg.params_array, train.X, train.y,
                            previous=previous, seed=seed,
                            meta={"run_id": msg.run_id, "round_id": msg.round_id,
                                  "model_version": msg.model_version}), ""
    except (ModelError, RoundSkipped) as exc:
        return None, f"personal model ({mode}) not fitted: {exc}"


def _with_personal(done: PhaseValues, msg: RoundMessage, train: LocalData,
                   evaluation: LocalData, stats: StatsParams, *, mode: str,
                   previous: PersonalModel | None, seed: int | None,
                   sections: bool) -> PhaseValues:
    """Fit the personal model and, when the fleet's layout has the block, append its sums."""
    personal, error = personal_step(msg, train, mode=mode, previous=previous, seed=seed)
    if not sections:
        return replace(done, personal=personal, personal_error=error)
    # The global evaluation sums: after the training values in a training round, alone in
    # an evaluation round; the personal block follows them (and precedes a distilling
    # fleet's teacher sums), in protocol.layout.layout_for's order.
    at = 0 if done.phase == "evaluation" else 1
    part = list(done.parts[at])
    if personal is not None:
        try:
            part = evaluation_values(personal.spec, personal.params, evaluation, stats)
        except RoundSkipped as exc:
            error = f"personal model ({mode}) not evaluated: {exc.detail}"
    # The update's clipped count belongs to the global block only.
    part[-3] = 0
    parts = [*done.parts[:at + 1], part, *done.parts[at + 1:]]
    return replace(done, parts=parts, personal=personal, personal_error=error)


def phase_values(msg: RoundMessage, train: LocalData, evaluation: LocalData,
                 codec: CodecParams, stats: StatsParams, *,
                 privacy: PrivacyTerms | None = None, dpsgd: DpSgd | None = None,
                 seed: int | None = None, personal: PersonalModel | None = None,
                 personal_mode: str | None = None) -> PhaseValues:
    """Everything one device sends for ``msg``'s phase; raises RoundSkipped.

    ``personal``: the device's previous personal model (Ditto warm-starts from it);
    ``personal_mode``: the device's own choice ([personal] mode in agent.toml), else the
    round's. The layout (whether the personal block is sent) follows the round's settings.
    """
    done = _phase_values(msg, train, evaluation, codec, stats, privacy=privacy, dpsgd=dpsgd,
                         seed=seed)
    if done.phase == "statistics":
        return done
    mode = personal_mode or msg.settings.personal
    sections = msg.settings.personalized and (privacy or PrivacyTerms()).evaluates
    if mode == "none" and not sections:
        return done
    # A device that keeps no personal model (its own choice) sends its global sums twice.
    return _with_personal(done, msg, train, evaluation, stats, mode=mode, previous=personal,
                          seed=seed, sections=sections)


def _phase_values(msg: RoundMessage, train: LocalData, evaluation: LocalData,
                  codec: CodecParams, stats: StatsParams, *,
                  privacy: PrivacyTerms | None = None, dpsgd: DpSgd | None = None,
                  seed: int | None = None) -> PhaseValues:
    phase = msg.phase
    if phase in ("statistics", "evaluation") and privacy is not None \
            and not privacy.evaluates:
        # The terms say nothing exact leaves a device: a gateway asking anyway gets nothing.
        raise RoundSkipped("privacy-budget", f"the gateway asks for a {phase} round (exact "
                           "totals), but its privacy terms release none (exact_aggregates is "
                           "false); this device sends nothing for it")
    if phase == "statistics":
        values = statistics_values(msg.spec, train, stats)
        return PhaseValues(phase, [values], rows=values[-1], clipped=values[-2])
    if phase == "training":
        privacy = privacy or PrivacyTerms()
        if not privacy.evaluates:  # DP: no exact evaluation sums leave the device
            update, train_part = training_values(msg, train, codec, privacy=privacy,
                                                 dpsgd=dpsgd, seed=seed)
            return PhaseValues(phase, [train_part], rows=train.n_samples, update=update,
                               clipped=update.clipped)
        # w_r first: cheap, and a device that cannot evaluate it skips before training.
        eval_part = evaluation_values(msg.spec, msg.params_array, evaluation, stats)
        update, train_part = training_values(msg, train, codec, privacy=privacy, dpsgd=dpsgd,
                                             seed=seed)
        # [..., clipped_train, clipped_eval, n] for both kinds (protocol.sums.evaluation). An L2
        # clip (device-level DP) scales every value of the update.
        eval_part[-3] = update.clipped * (msg.spec.n_params if privacy.device else 1)
        parts = [train_part, eval_part]
        if msg.settings.distills and teacher_length(msg.spec):  # as protocol.layout.layout_for
            parts.append(teacher_values(msg.spec, msg.params_array, evaluation, stats))
        return PhaseValues(phase, parts, rows=update.weight,
                           eval_rows=eval_part[-1], update=update, clipped=update.clipped)
    if phase == "evaluation":
        eval_part = evaluation_values(msg.spec, msg.params_array, evaluation, stats)
        return PhaseValues(phase, [eval_part], rows=eval_part[-1], eval_rows=eval_part[-1])
    raise CodecError(f"round state {msg.state!r} is not a working phase ({', '.join(PHASES)})")


def phase_line(done: PhaseValues) -> str:
    """What the update holds, for the agent's one log line per round (counts only)."""
    line = _phase_line(done)
    if done.personal is not None:
        lam = "" if done.personal.lam is None else f", lambda {done.personal.lam:g}"
        line += f"; personal model ({done.personal.mode}{lam}) kept on the device"
    return line


def _phase_line(done: PhaseValues) -> str:
    if done.update is not None:
        u = done.update
        return (f"loss {u.loss_before:.4f} -> {u.loss_after:.4f} on {u.weight} samples, "
                f"received model evaluated on {done.eval_rows} rows")
    if done.phase == "statistics":
        clipped = f" ({done.clipped} values clipped)" if done.clipped else ""
        return f"sums of {done.rows} training rows{clipped}"
    return f"final model evaluated on {done.eval_rows} rows"
