"""One lying device in a real 8-device ``fedmq init`` fleet: the model and the fleet metric hold.

The attack table of the hardening issue, on real processes (tests/lying_fleet.py:
TLS, logins, the topic ACL, 1024-bit keys, 5 rounds, breast_cancer split non-IID over
nine devices, the ninth device's rows held out). One enrolled device runs
tests/lying_agent.py: correctly signed and encrypted updates whose every value lies
inside the announced bounds, so nothing is rejected for its form.

The lies (tests/lying_agent.py): ``weight`` (FedAvg weight max_weight, -clip on every
coordinate), ``flip`` (the same weight, each coordinate at the bound against the honest
delta), ``evaluation`` (200,000 self-labelled rows, all right), ``statistics``
(max_samples rows at +-max_abs) and ``all`` (the issue's three: weight, evaluation,
statistics). What the product must hold under each, against the clean fleet of the same
split and seeds (one module-scoped run):

- the published model's held-out accuracy is within ACCURACY_PP of the clean fleet's;
- the gateway's fleet metric of every round (measured on the devices' own rows, so
  compared with the clean fleet's of the same round, not with the held-out accuracy)
  is within FLEET_PP of the clean fleet's, and that of the final evaluation round within
  FLEET_PP of what the published model really scores on the devices' rows, unless the
  aggregator logged a WARNING or ERROR naming that round and the group it left out.

Without defences these fail (the issue's bug): run ``python tests/lying_fleet.py
--lie <lie>`` for the numbers.
"""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from lying_agent import (
    ALL,
    LIES,
    evaluation_lie,
    parse_lies,
    statistics_lie,
    tell,
    weight_lie,
)
from lying_fleet import FleetOptions, FleetResult, round_table, run_fleet
from support import announcement

from fedmq.aggregator.config import RobustPolicy
from fedmq.aggregator.groups import partition
from fedmq.benchmarks.realdata_fleet import FLEET
from fedmq.edge_agent.phases import PhaseValues
from fedmq.edge_agent.trainer import LocalUpdate
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams, mean_from_sums
from fedmq.protocol.crypto.paillier import generate_keypair
from fedmq.protocol.layout import layout_for
from fedmq.protocol.sums.evaluation import FleetEvaluation
from fedmq.protocol.sums.statistics import FleetStatistics, StatsParams
from fedmq.simulation import datasets

ACCURACY_PP = 0.03
GROUP_PP = 0.01  # against the fleet without the liar's group: what is left when it is out
FLEET_PP = 0.05
CASES = {lie: frozenset({lie}) for lie in LIES} | {"all": frozenset(ALL)}
# What the liar's "LIE round ..." lines say for each lie (proof that it went out).
TOLD = {"weight": "delta -", "flip": "against the honest one", "evaluation": "evaluation: ",
        "statistics": "statistics: ", "maxw": "its honest delta", "reverse": "x its honest",
        "clipcount": "beyond +-"}


# --- the lies themselves: inside every bound of the contract (fast, no fleet) ----------

SPECS = {"logistic": ModelSpec(kind="logistic", features=("a", "b", "c"), n_classes=3),
         "linear": ModelSpec(kind="linear", features=("a", "b"))}
CODEC, STATS = CodecParams(), StatsParams()


@pytest.fixture(scope="module")
def modulus() -> int:
    return generate_keypair(512)[0].n


@pytest.mark.parametrize("kind", list(SPECS))
def test_every_lie_encodes_under_the_announced_contract(kind: str, modulus: int) -> None:
    spec = SPECS[kind]
    honest_eval = ([4 << 48, 30 << 24, 200 << 48, 9 << 24, 2, 0, 20] if kind == "linear"
                   else [5 << 24, 5, 0, 0, 0, 5, 0, 0, 0, 10, 2, 0, 20])
    lies = {"statistics": [statistics_lie(spec, STATS)],
            "training": [weight_lie(spec, CODEC), evaluation_lie(spec, STATS, honest_eval)],
            "evaluation": [evaluation_lie(spec, STATS, honest_eval)]}
    for phase, parts in lies.items():
        layout = layout_for(phase, spec, CODEC, STATS, modulus)
        layout.encode(parts)  # raises beyond any bound
        # ... and the decoded totals (of the liar alone) are what the gateway would use.
        sums = layout.split([v for part in parts for v in part])
        if "training" in sums:
            mean, weight = mean_from_sums(sums["training"], CODEC)
            assert weight == CODEC.max_weight and (mean == -CODEC.clip).all()
        if "evaluation" in sums:
            ev = FleetEvaluation.from_sums(sums["evaluation"], spec, STATS)
            assert ev.n == 200_000 and ev.clipped_eval == 0 and ev.clipped_train == 2
            assert ev.metrics["accuracy" if kind == "logistic" else "r2"] > 0.999
        if "statistics" in sums:
            st = FleetStatistics.from_sums(sums["statistics"], spec, STATS)
            assert st.n == STATS.max_samples and not any(st.clipped)
            assert min(st.std) == pytest.approx(STATS.max_abs)


def test_tell_replaces_only_the_chosen_sections() -> None:
    spec = SPECS["logistic"]
    honest_eval = [5 << 24, 5, 0, 0, 0, 5, 0, 0, 0, 10, 2, 0, 20]
    honest = np.array([0.5, -0.5, 0.0] * (spec.n_params // 3))
    done = PhaseValues("training", [[1] * spec.n_params + [20], honest_eval], rows=20,
                       eval_rows=20, clipped=2, update=LocalUpdate(3, honest, 20, 1.0, 0.5))

    msg = announcement(3, spec=spec)
    weight = tell(done, msg, CODEC, STATS, frozenset({"weight"}))
    assert weight.parts[0] == weight_lie(spec, CODEC) and weight.rows == CODEC.max_weight
    assert weight.parts[1][:-3] == honest_eval[:-3] and weight.parts[1][-3] == 0
    evaluation = tell(done, msg, CODEC, STATS, frozenset({"evaluation"}))
    assert evaluation.parts[0] == done.parts[0] and evaluation.eval_rows == 200_000
    assert tell(done, msg, CODEC, STATS, frozenset({"statistics"})) == done
    flip = tell(done, msg, CODEC, STATS, frozenset({"flip"}))
    # Each coordinate at the bound against the honest delta (a zero one pushed down).
    assert mean_from_sums(flip.parts[0], CODEC)[0].tolist() == [
        -CODEC.clip, CODEC.clip, -CODEC.clip] * (spec.n_params // 3)
    assert parse_lies("all") == frozenset(ALL) and parse_lies("flip") == {"flip"}
    with pytest.raises(ArgumentTypeError):
        parse_lies("weight,flip")  # both replace the training section


# --- the fleets (real processes) --------------------------------------------------------

@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetResult]:
    """The same fleet with every device honest: the baseline of every comparison."""
    yield run_fleet(FleetOptions(), tmp_path_factory.mktemp("clean"))


def liar_group(options: FleetOptions) -> frozenset[str]:
    """The liar's group in a round of the whole fleet (aggregator.groups, the defaults)."""
    ids = datasets.device_ids(options.devices)
    policy = RobustPolicy()
    groups = partition(dict.fromkeys(ids, 1), fleet=FLEET, min_group=policy.min_group,
                       groups=policy.groups)
    return next(g for g in groups if options.liar_id in g)


@pytest.fixture(scope="module")
def without_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetResult]:
    """The honest fleet without the liar's group: what robust aggregation falls back to
    when it leaves that group out (its honest members' rows are lost with it)."""
    options = FleetOptions(lies=frozenset({"weight"}))
    yield run_fleet(FleetOptions(absent=liar_group(options)),
                    tmp_path_factory.mktemp("without"))


def describe(result: FleetResult, clean: FleetResult) -> str:
    return "\n".join([f"clean:    {clean.line()}", round_table(clean),
                      f"attacked: {result.line()}", round_table(result),
                      "aggregator warnings:", *result.warnings])


@pytest.mark.slow
def test_the_clean_fleet_learns(clean: FleetResult) -> None:
    """The baseline is worth comparing with: every round ran, the model is good."""
    rounds = [int(r["round"]) for r in clean.phase_rows("training")]
    assert rounds == list(range(1, clean.options.rounds + 1)), round_table(clean)
    assert clean.held_out >= 0.90 and clean.final_fleet_metric >= 0.90, clean.line()
    # Honest devices' sums give the published model's metric on their rows, exactly (up
    # to the statistics' fixed point): the reference the attacked runs are held to.
    assert clean.final_fleet_metric == pytest.approx(clean.on_devices, abs=1e-6), clean.line()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_one_lying_device_moves_neither_the_model_nor_the_fleet_metric(
        case: str, clean: FleetResult, without_group: FleetResult, tmp_path: Path) -> None:
    lies = CASES[case]
    result = run_fleet(FleetOptions(lies=lies), tmp_path)
    told = "\n".join(result.lies_told)
    missing = [lie for lie in lies if TOLD[lie] not in told]
    assert not missing, (f"the liar never told {missing}: tests/lying_agent.py no longer "
                         f"patches what the agent calls\n{told}")
    rounds = [int(r["round"]) for r in result.phase_rows("training")]
    assert rounds == list(range(1, result.options.rounds + 1)), describe(result, clean)

    problems = []
    # Within ACCURACY_PP of the clean fleet, or (when the liar's group was left out, its
    # honest partner's rows with it) of the clean fleet without that group.
    reference = min(clean.held_out - ACCURACY_PP, without_group.held_out - GROUP_PP)
    if result.held_out < reference:
        problems.append(f"held-out {result.metric} {result.held_out:.4f}, clean fleet "
                        f"{clean.held_out:.4f}, without the liar's group "
                        f"{without_group.held_out:.4f}")
    clean_fleet = clean.fleet_metric()
    for round_id, value in sorted(result.fleet_metric().items()):
        reference = clean_fleet.get(round_id)
        if reference is None or abs(value - reference) <= FLEET_PP:
            continue
        if not result.warned(round_id, "group"):
            problems.append(f"round {round_id}: fleet {result.metric} {value:.4f}, clean "
                            f"fleet {reference:.4f}, and no warning names the round's group")
    # The final evaluation round measures the published model: what it reports must be
    # what that model really does on the devices' rows.
    final = max(result.fleet_metric(), default=None)
    if final is not None and abs(result.final_fleet_metric - result.on_devices) > FLEET_PP \
            and not result.warned(final, "group"):
        problems.append(f"final round {final}: fleet {result.metric} "
                        f"{result.final_fleet_metric:.4f}, the published model's on the "
                        f"devices' rows {result.on_devices:.4f}, and no warning names the group")
    assert not problems, "\n".join([*problems, describe(result, clean)])
