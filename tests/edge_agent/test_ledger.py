"""The device's own device-level ledger: it counts, refuses, and is never reset or cheated."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from support import SPEC, local_data

from fedmq.edge_agent.data import split_holdout
from fedmq.edge_agent.health import RoundSkipped
from fedmq.edge_agent.ledger import LEDGER_FILE, DeviceLedger
from fedmq.edge_agent.phases import phase_values
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.messages import RoundMessage, TrainingSettings
from fedmq.protocol.privacy.noise import DpParams
from fedmq.protocol.privacy.terms import PrivacyTerms
from fedmq.protocol.sums.statistics import StatsParams

TRAIN, EVAL = split_holdout(local_data(3, 80), 0.25, "pi-1")


def round_msg(phase: str, round_id: int) -> RoundMessage:
    return RoundMessage(fleet="test", round_id=round_id, model_version=max(round_id, 0),
                        state=phase, spec=SPEC, params=tuple(np.zeros(SPEC.n_params)),
                        deadline=0.0, settings=TrainingSettings(), key_fingerprint="k" * 64,
                        codec_digest="d" * 32, run_id="r1")


DP = DpParams(epsilon=3.0, delta=1e-5, noise_multiplier=2.0, clip=1.0, quorum=2)
D = SPEC.n_params


def test_it_refuses_the_round_that_would_pass_the_run_budget_and_counts_across_runs(
        tmp_path: Path) -> None:
    ledger = DeviceLedger(str(tmp_path), max_epsilon=None)
    entry = ledger.check("f", "run-1", 1, DP, D)
    line = ledger.commit(entry, DP.delta)
    assert "spent in this run" in line and "decrypting these updates alone" in line
    with pytest.raises(RoundSkipped, match="beyond the announced 3") as info:
        ledger.check("f", "run-1", 2, DP, D)  # two rounds at z = 2, quorum 2: epsilon > 3
    assert info.value.code == "privacy-budget"
    ledger.check("f", "run-2", 1, DP, D)  # a new run has its own announced budget ...
    capped = DeviceLedger(str(tmp_path), max_epsilon=3.0)  # ... unless the device caps it
    with pytest.raises(RoundSkipped, match="beyond its own max_epsilon 3"):
        capped.check("f", "run-2", 1, DP, D)


@pytest.mark.parametrize("entry", [
    {"rho": -1.0}, {"rho_alone": "x"}, {"round_id": True}, {"rho": float("nan")},
])
def test_a_tampered_ledger_refuses_and_is_never_reset(tmp_path: Path, entry: dict) -> None:
    good = {"fleet": "f", "run_id": "run-1", "round_id": 1, "rho": 0.1, "rho_alone": 0.2}
    path = tmp_path / LEDGER_FILE
    path.write_text(json.dumps({"entries": [good | entry]}))
    before = path.read_bytes()
    with pytest.raises(RoundSkipped, match="unreadable privacy ledger") as info:
        DeviceLedger(str(tmp_path), max_epsilon=None).check("f", "run-1", 2, DP, D)
    assert str(tmp_path) not in info.value.detail  # the gateway never sees local paths
    assert path.read_bytes() == before


def test_a_ledger_that_cannot_be_written_means_nothing_is_sent(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    ledger = DeviceLedger(str(blocked), max_epsilon=None)
    entry = ledger.check("f", "run-1", 1, DP, D)
    with pytest.raises(RoundSkipped, match="cannot record"):
        ledger.commit(entry, DP.delta)


@pytest.mark.parametrize("phase", ["statistics", "evaluation"])
def test_under_dp_a_device_sends_no_exact_totals_whatever_the_gateway_asks(phase: str) -> None:
    terms = PrivacyTerms(device=DP)
    with pytest.raises(RoundSkipped, match="release none") as info:
        phase_values(round_msg(phase, round_id=0 if phase == "statistics" else 2), TRAIN, EVAL,
                     CodecParams(), StatsParams(), privacy=terms)
    assert info.value.code == "privacy-budget"
    allowed = PrivacyTerms(device=DP, exact_aggregates=True)
    assert phase_values(round_msg(phase, round_id=0 if phase == "statistics" else 2), TRAIN,
                        EVAL, CodecParams(), StatsParams(), privacy=allowed).parts


def test_a_quorum_above_max_quorum_is_refused_before_anything_is_charged(
        tmp_path: Path) -> None:
    ledger = DeviceLedger(str(tmp_path), max_epsilon=None, max_quorum=8)
    ledger.admit(DP)  # quorum 2
    ledger.admit(replace(DP, quorum=8))  # at the cap
    with pytest.raises(RoundSkipped, match="quorum of 1000 devices, above this device's "
                       r"\[privacy\] max_quorum = 8") as info:
        ledger.admit(replace(DP, quorum=1000))
    assert info.value.code == "privacy-budget" and info.value.refusal
    assert info.value.detail == "announced DP quorum 1000 is above this device's max_quorum 8"
    assert not (tmp_path / LEDGER_FILE).exists()
    DeviceLedger(str(tmp_path), max_epsilon=None).admit(replace(DP, quorum=1000))  # no cap


def test_the_alone_charge_is_the_quorum_times_the_charge_and_max_alone_epsilon_caps_it(
        tmp_path: Path) -> None:
    """Decrypted alone, one update carries only its own share: rho times the quorum (the
    cap on the quorum bounds it), which max_alone_epsilon caps over the device's runs."""
    wide = replace(DP, epsilon=50.0, quorum=8)
    entry = DeviceLedger(str(tmp_path), max_epsilon=None).check("f", "run-1", 1, wide, D)
    assert entry.rho_alone == pytest.approx(8 * entry.rho)
    one_alone = DeviceLedger(None, max_epsilon=None)._epsilon([entry.rho_alone], DP.delta)
    capped = DeviceLedger(str(tmp_path), max_epsilon=None, max_alone_epsilon=one_alone * 1.5)
    capped.commit(capped.check("f", "run-1", 1, wide, D), DP.delta)
    with pytest.raises(RoundSkipped, match="decrypting its updates alone, beyond its own "
                       "max_alone_epsilon") as info:
        capped.check("f", "run-2", 1, wide, D)  # counted over every run of the fleet
    assert info.value.code == "privacy-budget" and not info.value.refusal


def test_with_colluding_devices_the_ledger_uses_the_same_share_size(tmp_path: Path) -> None:
    """Shares sized for quorum - c: the charge at the quorum stays z's rho, the alone
    charge is (quorum - c) times it (the device's own, larger share), and max_quorum caps
    the devices the share is sized for."""
    wide = replace(DP, epsilon=50.0, quorum=8, colluding_devices=3)
    entry = DeviceLedger(str(tmp_path), max_epsilon=None).check("f", "run-1", 1, wide, D)
    z = wide.noise_multiplier
    assert entry.rho == pytest.approx(1 / (2 * z**2), rel=1e-12)
    assert entry.rho == pytest.approx(wide.round_rho(D, wide.quorum), rel=1e-12)
    assert entry.rho_alone == pytest.approx(5 * entry.rho, rel=1e-12)
    assert entry.rho_alone == pytest.approx(
        wide.sensitivity(D) ** 2 / (2 * wide.device_sigma(D) ** 2), rel=1e-12)
    # Against the same quorum without colluders: same charge, smaller alone charge.
    plain = DeviceLedger(None, max_epsilon=None).check(
        "f", "run-1", 1, replace(wide, colluding_devices=0), D)
    assert plain.rho == pytest.approx(entry.rho) and plain.rho_alone > entry.rho_alone
    capped = DeviceLedger(str(tmp_path), max_epsilon=None, max_quorum=5)
    capped.admit(wide)  # shares sized for 8 - 3 = 5 devices: at the cap
    with pytest.raises(RoundSkipped, match=r"quorum of 8 devices less 2 colluding \(6\), "
                       r"above this device's \[privacy\] max_quorum = 5: each share would "
                       r"be 1/sqrt\(6\)") as info:
        capped.admit(replace(wide, colluding_devices=2))
    assert info.value.refusal and info.value.detail == (
        "announced DP quorum 8 less 2 colluding devices is above this device's max_quorum 5")
