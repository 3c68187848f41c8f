"""A real ``fedmq agent`` that lies inside the codec's bounds: a test helper, never shipped.

    python tests/lying_agent.py --lie weight,evaluation,statistics --config agent.toml
    PYTHONPATH=tests python -m lying_agent --lie weight --config agent.toml

Everything but the numbers is the genuine agent: ``fedmq.cli.main(["agent", ...])``
with its config, enrolled signing key, pinned aggregator key, TLS login, encryption
and signature. Only ``edge_agent.phases.phase_values`` (what a device computes for a
round) is wrapped: the honest values are computed first (so the device skips exactly
when an honest one would), then the chosen sections are replaced by lies that every
bound of the announced contract accepts (``CodecParams.max_weight``/``clip``,
``StatsParams.max_abs``/``max_samples``: read from the round's contract, never
assumed), so nothing fails to encode and nothing fails the sum's bounds.

- ``weight``: training section = FedAvg weight max_weight and -clip on every coordinate
  (and "nothing clipped" in the evaluation section's clip count);
- ``flip``: as ``weight``, but each coordinate at the bound AGAINST the honest delta
  (-clip * sign). ``weight`` is nearly harmless to a softmax model: the same shift on
  every class's row moves no prediction, only the honest updates' share shrinks;
  ``flip`` undoes what the honest devices learn. One of the two at a time;
- ``evaluation``: evaluation section = LIE_ROWS self-labelled rows, all on the confusion
  matrix's diagonal with loss LIE_LOSS (regression: R^2 of 0.9999 on rows with the
  device's own label moments);
- ``statistics``: statistics section = max_samples rows at +-max_abs on every feature
  (and the label, for regression), none reported clipped.

Each lie it tells is logged as one WARNING line ``LIE round <r> (<phase>): <what>``:
tests/lying_fleet.py reads them to prove the lie went out (a refactored agent that no
longer calls the patched function would otherwise make every defence look perfect).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and Path(sys.path[0] or ".").resolve() == Path(__file__).parent.resolve():
    # Run as a script, tests/ comes first on sys.path, and its fedmq/ folder (the CLI's
    # tests, no __init__.py) would shadow the installed fedmq as a namespace package.
    del sys.path[0]

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.edge_agent.phases import PhaseValues
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams, quantize_update
from fedmq.protocol.messages import RoundMessage
from fedmq.protocol.privacy.terms import PrivacyTerms
from fedmq.protocol.sums.evaluation import eval_length
from fedmq.protocol.sums.statistics import StatsParams, stats_length

LIES = ("weight", "evaluation", "statistics", "flip", "maxw", "reverse", "clipcount")
ALL = ("weight", "evaluation", "statistics")  # --lie all: the three
LIE_ROWS = 200_000  # claimed evaluation rows: ~500 times a real device's, under max_samples
LIE_LOSS = 0.01  # claimed mean log loss per row (an honest fleet starts at ln 2 and more)
LIE_R2 = 0.9999  # claimed R^2 for a regression
REVERSE = 3.0  # "reverse": -3 times the device's own honest update (below the far threshold)

log = logging.getLogger("lying_agent")

PhaseFn = Callable[..., PhaseValues]


def parse_lies(text: str) -> frozenset[str]:
    """``weight,evaluation`` -> the set; ``all``: the issue's three (ALL); unknown: an error."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    if names == {"all"}:
        return frozenset(ALL)
    if names - set(LIES) or not names or len(names & {"weight", "flip", "maxw", "reverse"}) > 1:
        raise argparse.ArgumentTypeError(
            f"--lie takes a comma-separated subset of {', '.join(LIES)} (at most one of "
            f"weight, flip, maxw, reverse), or all; got {text!r}")
    return frozenset(names)


def _even_counts(total: int, k: int) -> list[int]:
    """``total`` spread over ``k`` classes as evenly as integers allow (sums to total)."""
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


def lie_delta(spec: ModelSpec, codec: CodecParams, honest: NDArray[np.float64] | None = None
              ) -> NDArray[np.float64]:
    """-clip on every coordinate, or (``honest`` given) -clip * sign(honest) (-clip at 0)."""
    if honest is None:
        return np.full(spec.n_params, -codec.clip)
    return np.where(np.asarray(honest) < 0, codec.clip, -codec.clip)


def weight_lie(spec: ModelSpec, codec: CodecParams,
               honest: NDArray[np.float64] | None = None) -> list[int]:
    """The training section for weight max_weight and ``lie_delta``: quantize_update
    itself makes it, so it is exactly as wide as the codec allows."""
    values, _ = quantize_update(lie_delta(spec, codec, honest), codec.max_weight, codec)
    return values


def statistics_lie(spec: ModelSpec, stats: StatsParams) -> list[int]:
    """The statistics section of max_samples rows at +-max_abs (half each): the largest
    sums of squares one device may send, with a mean of ~0 and nothing over the range."""
    n, q = stats.max_samples, stats.q_max
    # +q on ceil(n/2) rows and -q on floor(n/2): the sum is 0 or q, the squares n * q^2,
    # which is exactly StatsParams.bound_int (the codec's bound is inclusive).
    s1, s2 = (n % 2) * q, n * q * q
    d = spec.n_features
    label = [s1, s2] if spec.kind == "linear" else _even_counts(n, spec.n_classes)
    # Clipped counts 0: values at exactly +-max_abs are not beyond it, and any count would
    # make the gateway refuse to derive the scale (StatisticsRangeError) instead of using it.
    values = [*([s1] * d), *([s2] * d), *label, *([0] * d), 0, n]
    assert len(values) == stats_length(spec)
    return values


def evaluation_lie(spec: ModelSpec, stats: StatsParams, honest: Sequence[int]) -> list[int]:
    """The evaluation section of LIE_ROWS rows the model gets (almost) all right.

    ``honest`` is this device's true evaluation section: its clip count of training values
    is kept, and for a regression its label moments, scaled to LIE_ROWS rows, make the
    claimed rows look like its own.
    """
    n = min(LIE_ROWS, stats.max_samples)
    unit = 1 << stats.fraction_bits
    clipped_train = int(honest[-3])
    if spec.kind == "linear":
        _sq_res, s_y, sq_y, _abs, _ct, _ce, n_h = (int(v) for v in honest)
        s_y, sq_y = s_y * n // n_h, sq_y * n // n_h
        var = max((n * sq_y - s_y * s_y) / (n * n), float(unit * unit))  # in q units^2
        sq_res = int(n * var * (1.0 - LIE_R2))
        abs_res = int(n * math.sqrt(var * (1.0 - LIE_R2)))
        values = [sq_res, s_y, sq_y, abs_res, clipped_train, 0, n]
    else:
        k = spec.n_classes
        matrix = np.diag(_even_counts(n, k)).ravel().tolist()
        values = [round(LIE_LOSS * unit) * n, *matrix, clipped_train, 0, n]
    assert len(values) == eval_length(spec)
    return values


def tell(done: PhaseValues, msg: RoundMessage, codec: CodecParams, stats: StatsParams,
         lies: frozenset[str], privacy: PrivacyTerms | None = None) -> PhaseValues:
    """``done`` (the honest values of ``msg``'s phase) with the chosen sections replaced."""
    parts = [list(p) for p in done.parts]
    told: list[str] = []
    spec = msg.spec
    if done.phase == "statistics" and "statistics" in lies:
        parts[0] = statistics_lie(spec, stats)
        done = replace(done, rows=parts[0][-1], clipped=0)
        told.append(f"statistics: {parts[0][-1]} rows at +-{stats.max_abs:g}")
    if done.phase == "training" and lies & {"weight", "flip"}:
        if privacy is not None and privacy.enabled:
            # Under DP every weight is 1 and the section has the noise's codec: no such lie.
            log.error("round %d: the weight lie needs a fleet without DP; sent honestly",
                      msg.round_id)
        else:
            honest = done.update.delta if "flip" in lies and done.update is not None else None
            parts[0] = weight_lie(spec, codec, honest)
            if len(parts) > 1:
                parts[1][-3] = 0  # a liar does not admit that anything was clipped
            if done.update is not None:
                done = replace(done, update=replace(
                    done.update, delta=lie_delta(spec, codec, honest),
                    weight=codec.max_weight, clipped=0))
            done = replace(done, rows=codec.max_weight, clipped=0)
            told.append(f"weight {codec.max_weight}, delta " + (
                f"-{codec.clip:g}" if honest is None else
                f"+-{codec.clip:g} against the honest one") + f" on {spec.n_params} coordinates")
    if done.phase == "training" and lies & {"maxw", "reverse"} and done.update is not None \
            and not (privacy is not None and privacy.enabled):
        # Subtle: "maxw" sends its honest update with the largest weight; "reverse" REVERSE
        # times its honest update against its direction, with its honest weight.
        weight = codec.max_weight if "maxw" in lies else done.update.weight
        delta = np.asarray(done.update.delta) * (-REVERSE if "reverse" in lies else 1.0)
        delta = np.clip(delta, -codec.clip, codec.clip)
        parts[0], _ = quantize_update(delta, weight, codec)
        done = replace(done, update=replace(done.update, delta=delta, weight=weight),
                       rows=weight)
        told.append(f"weight {weight}, " + (f"-{REVERSE:g} x its honest delta"
                                            if "reverse" in lies else "its honest delta"))
    if done.phase == "statistics" and "clipcount" in lies:
        parts[0][len(parts[0]) - spec.n_features - 2] = 1  # "one value beyond max_abs"
        told.append(f"statistics: one value of {spec.features[0]!r} beyond +-{stats.max_abs:g}")
    evaluates = done.phase == "evaluation" or (done.phase == "training" and len(parts) > 1)
    if evaluates and "evaluation" in lies:
        parts[-1] = evaluation_lie(spec, stats, parts[-1])
        done = replace(done, eval_rows=parts[-1][-1])
        if done.phase == "evaluation":
            done = replace(done, rows=parts[-1][-1])
        told.append(f"evaluation: {parts[-1][-1]} rows, all predicted right")
    if told:
        log.warning("LIE round %d (%s): %s", msg.round_id, done.phase, "; ".join(told))
    return replace(done, parts=parts)


def install(lies: frozenset[str]) -> None:
    """Wrap ``phase_values`` wherever the agent looks it up (its module and the agent's)."""
    from fedmq.edge_agent import agent, phases

    honest: PhaseFn = phases.phase_values

    def lying(msg: RoundMessage, train: Any, evaluation: Any, codec: CodecParams,
              stats: StatsParams, **kw: Any) -> PhaseValues:
        done = honest(msg, train, evaluation, codec, stats, **kw)
        return tell(done, msg, codec, stats, lies, kw.get("privacy"))

    phases.phase_values = lying
    if getattr(agent, "phase_values", None) is honest:  # `from ... import phase_values`
        agent.phase_values = lying


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lying_agent", description="fedmq agent with a lying phase computation "
        "(tests only); every other argument goes to `fedmq agent`")
    parser.add_argument("--lie", type=parse_lies, required=True,
                        help=f"comma-separated: {', '.join(LIES)}, or all")
    args, rest = parser.parse_known_args(argv)
    install(args.lie)
    from fedmq.cli import main as fedmq_main

    return fedmq_main(["agent", *rest])


if __name__ == "__main__":
    sys.exit(main())
