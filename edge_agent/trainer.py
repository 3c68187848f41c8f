"""Local training for one round: from the global parameters to the weighted delta. Pure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedmq.edge_agent.data import LocalData, column_diff
from fedmq.edge_agent.health import RoundSkipped, skip_code
from fedmq.models import ModelError, make_model
from fedmq.models.dpsgd import DpSgd, fit_dpsgd
from fedmq.protocol.messages import RoundMessage


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


def train_round(msg: RoundMessage, data: LocalData, *, max_weight: int,
                seed: int | None = None, dpsgd: DpSgd | None = None) -> LocalUpdate:
    """Train E epochs from the global model on local data; delta = w_local - w_global.

    With ``dpsgd`` (edge_agent.sample_privacy.SampleDpPlan.dpsgd(), charged to the
    ledger first) it runs sample-level DP-SGD instead; its noise always comes from
    fresh OS entropy, never from ``seed``: a noise seed in a config voids the guarantee.

    Raises RoundSkipped (with its skip code) when the data cannot serve this model.
    """
    check_features(msg.spec.features, data)
    s = msg.settings
    start = msg.params_array
    try:
        model = make_model(msg.spec, learning_rate=s.learning_rate, epochs=s.epochs,
                           batch_size=s.batch_size, l2=s.l2, seed=seed)
        before = float(model.set_params_vector(start).loss(data.X, data.y))
        if dpsgd is None:
            model.fit(data.X, data.y, init_params=start)
        else:
            fit_dpsgd(model, data.X, data.y, dpsgd, init_params=start)
        after = float(model.loss(data.X, data.y))
    except ModelError as exc:
        # Bad local labels or a diverging step skip this round; they must not
        # kill an agent that will serve the next one.
        raise RoundSkipped(skip_code(exc),
                           f"local training failed on {data.label!r}: {exc}") from exc
    # The sample count is the FedAvg weight; capping it at the declared max keeps
    # the encoded sum inside the codec's bounds (and one device from dominating).
    weight = min(data.n_samples, max_weight)
    return LocalUpdate(round_id=msg.round_id, delta=model.params_ - start, weight=weight,
                       loss_before=before, loss_after=after)
