"""Ledgers agree with dp-accounting on the same events, persist, and calibrate tightly."""

from __future__ import annotations

import json
import math
from typing import Any

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.protocol.privacy.accounting import (
    PrivacyLedger,
    calibrate_dpsgd,
    calibrate_noise_multiplier,
    epsilon_spent,
    sample_level_event,
)
from fedmq.protocol.privacy.noise import DpParams

REL = dp_accounting.NeighboringRelation
PARAMS = DpParams(epsilon=8.0, delta=1e-5, noise_multiplier=1.1, clip=1.0, quorum=5)
D = 21


def _reference_ledger() -> PrivacyLedger:
    ledger = PrivacyLedger(1e-5)
    for r in range(1, 11):
        m = 5 + r % 3
        ledger.charge(r, PARAMS.round_rho(D, m), m)
    return ledger


def test_device_epsilon_equals_dp_accounting_on_the_same_events() -> None:
    ledger = _reference_ledger()
    direct = RdpAccountant(neighboring_relation=REL.REPLACE_SPECIAL)
    for r in range(1, 11):
        direct.compose(dp_accounting.ZCDpEvent(PARAMS.round_rho(D, 5 + r % 3)))
    assert ledger.epsilon() == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)
    # tau underflows here, so each round is exactly a Gaussian mechanism with z_eff.
    gauss = RdpAccountant(neighboring_relation=REL.REPLACE_SPECIAL)
    for r in range(1, 11):
        gauss.compose(dp_accounting.GaussianDpEvent(1.1 * math.sqrt((5 + r % 3) / 5)))
    assert ledger.epsilon() == pytest.approx(gauss.get_epsilon(1e-5), rel=1e-9)
    assert PrivacyLedger(1e-5).epsilon() == 0.0
    one_more = ledger.epsilon_with(PARAMS.round_rho(D, 5))
    ledger.charge(11, PARAMS.round_rho(D, 5), 5)
    assert ledger.epsilon() == pytest.approx(one_more) and one_more > direct.get_epsilon(1e-5)


def test_ledger_round_trips_through_json_and_keeps_epsilon() -> None:
    ledger = _reference_ledger()
    again = PrivacyLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert again.charges == ledger.charges and again.epsilon() == ledger.epsilon()
    assert isinstance(again.dp_event(), dp_accounting.ComposedDpEvent)
    with pytest.raises(ProtocolError):
        again.charge(3, 0.1, 5)  # a round is charged once


@pytest.mark.parametrize("bad", [
    None, [], {"level": "sample", "delta": 1e-5, "charges": []},
    {"level": "device", "delta": 2.0, "charges": []},
    {"level": "device", "delta": 1e-5, "charges": {}},
    {"level": "device", "delta": 1e-5, "charges": [{"round_id": 1, "rho": 0.1}]},
    {"level": "device", "delta": 1e-5, "charges": [{"round_id": 1, "rho": -1, "devices": 5}]},
    {"level": "device", "delta": 1e-5, "charges": [{"round_id": 1, "rho": "x", "devices": 5}]},
    {"level": "device", "delta": 1e-5, "charges": [{"round_id": 1, "rho": 0.1, "devices": 0}]},
    {"level": "device", "delta": 1e-5, "charges": [{"round_id": 1, "rho": 0.1, "devices": 2},
                                                   {"round_id": 1, "rho": 0.1, "devices": 2}]},
])
def test_a_malformed_ledger_is_refused(bad: Any) -> None:
    with pytest.raises(ProtocolError):
        PrivacyLedger.from_dict(bad)


@pytest.mark.parametrize(("epsilon", "quorum"), [(1.0, 1), (3.0, 5), (8.0, 20)])
def test_calibration_is_tight(epsilon: float, quorum: int) -> None:
    z = calibrate_noise_multiplier(epsilon=epsilon, delta=1e-5, rounds=10, d=D, quorum=quorum)

    def spent(zz: float) -> float:
        p = DpParams(epsilon=epsilon, delta=1e-5, noise_multiplier=zz, clip=1.0, quorum=quorum)
        ledger = PrivacyLedger(1e-5)
        for r in range(10):
            ledger.charge(r, p.round_rho(D, quorum), quorum)
        return ledger.epsilon()

    assert spent(z) <= epsilon < spent(0.99 * z)


def test_sample_level_epsilon_equals_dp_accounting() -> None:
    event = sample_level_event(1.2, 0.05, 300)
    direct = RdpAccountant(neighboring_relation=REL.ADD_OR_REMOVE_ONE)
    direct.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.2)), 300))
    mine = RdpAccountant(neighboring_relation=REL.ADD_OR_REMOVE_ONE).compose(event)
    assert mine.get_epsilon(1e-5) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)
    # Three rounds of 100 steps compose to the 300 steps of one event.
    rounds = [sample_level_event(1.2, 0.05, 100) for _ in range(3)]
    assert epsilon_spent(rounds, 1e-5) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
    assert epsilon_spent([], 1e-5) == 0.0


def test_dpsgd_calibration_is_tight() -> None:
    z = calibrate_dpsgd(3.0, 1e-5, 0.05, 200)

    def eps(zz: float) -> float:
        acc = RdpAccountant(neighboring_relation=REL.ADD_OR_REMOVE_ONE)
        return float(acc.compose(sample_level_event(zz, 0.05, 200)).get_epsilon(1e-5))

    assert eps(z) <= 3.0 < eps(0.99 * z)


def test_without_the_dp_extra_import_works_and_use_names_the_fix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys
    code = ("import sys, protocol.privacy.accounting, protocol.privacy.noise, protocol.layout; "
            "assert 'dp_accounting' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'fedmq\[dp\]'"):
        _reference_ledger().epsilon()


def test_calibration_with_colluding_devices_meets_the_budget_against_them() -> None:
    z = calibrate_noise_multiplier(epsilon=3.0, delta=1e-5, rounds=10, d=D, quorum=5,
                                   colluding_devices=2)
    p = DpParams(epsilon=3.0, delta=1e-5, noise_multiplier=z, clip=1.0, quorum=5,
                 colluding_devices=2)
    ledger = PrivacyLedger(1e-5)
    for r in range(10):
        ledger.charge(r, p.round_rho(D, 5), 5)
    assert ledger.epsilon() <= 3.0
    # The colluding view of a round closed by the quorum is z's full noise, as with no
    # colluders: the multiplier is the same; the shares are what grows.
    plain = calibrate_noise_multiplier(epsilon=3.0, delta=1e-5, rounds=10, d=D, quorum=5)
    assert z == pytest.approx(plain, rel=1e-5)
