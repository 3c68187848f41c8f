"""The gateway's side of differential privacy: the announced terms and the run's budget.

The budget is a ledger of one device-level event per closed training round
(protocol.privacy.accounting, dp-accounting's RDP accountant), charged with the number of
devices whose noise shares are in the decrypted sum (of which ``[privacy]
colluding_devices`` count for no noise: the guarantee is stated against the aggregator
colluding with that many of them; DpParams.round_rho). It lives in the run
directory (``privacy.json``, written atomically BEFORE the round's model is saved
or published), so a restarted aggregator resumes with what the run has spent and
never with a fresh budget. A round whose worst case (only the quorum reporting)
would take the run beyond ``[privacy] epsilon`` is never opened.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fedmq.aggregator.schema import PrivacyTable
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.errors import ConfigError, FedmqError, ProtocolError
from fedmq.protocol.privacy.accounting import PrivacyLedger, RoundCharge, calibrate_noise_multiplier
from fedmq.protocol.privacy.noise import DpParams
from fedmq.protocol.privacy.terms import PrivacyTerms, SampleDpParams
from fedmq.runtime.files import write_atomic

log = logging.getLogger("fedmq.aggregator.privacy")
LEDGER_FILE = "privacy.json"


def privacy_terms(table: PrivacyTable, *, spec: ModelSpec, rounds: int, quorum: int,
                  codec: CodecParams) -> PrivacyTerms:
    """The terms aggregator.toml's [privacy] asks for (noise calibrated if not given)."""
    device = sample = None
    colluding = table.colluding_devices
    if colluding >= quorum:
        raise ConfigError(f"colluding_devices = {colluding} must be below [rounds] quorum = "
                          f"{quorum}: each noise share is sized for quorum - colluding_devices "
                          "honest devices, at least one")
    if table.epsilon is not None:
        z = table.noise_multiplier or calibrate_noise_multiplier(
            epsilon=table.epsilon, delta=table.delta, rounds=rounds, d=spec.n_params,
            quorum=quorum, precision_bits=codec.precision_bits, colluding_devices=colluding)
        device = DpParams(epsilon=table.epsilon, delta=table.delta, noise_multiplier=z,
                          clip=table.clip, quorum=quorum, precision_bits=codec.precision_bits,
                          colluding_devices=colluding)
        device.round_rho(spec.n_params, quorum)  # a multiplier too small fails here, at load
    if table.sample_epsilon is not None:
        sample = SampleDpParams(epsilon=table.sample_epsilon, delta=table.sample_delta,
                                clip=table.sample_clip, rounds=rounds)
    return PrivacyTerms(device=device, sample=sample, exact_aggregates=table.exact_aggregates)


class BudgetSpent(FedmqError):
    """The next round would take the run beyond its privacy budget."""


class FleetBudget:
    """The run's device-level privacy ledger, persisted in its run directory."""

    def __init__(self, params: DpParams, n_values: int) -> None:
        self.params, self._d = params, n_values
        self.ledger = PrivacyLedger(params.delta)
        self._path: Path | None = None

    def use(self, run_dir: Path) -> None:
        """Load what the run in ``run_dir`` has spent (nothing if it is new)."""
        self._path = run_dir / LEDGER_FILE
        self.ledger = PrivacyLedger(self.params.delta)
        if not self._path.exists():
            return
        try:
            doc = json.loads(self._path.read_bytes())
            ledger = PrivacyLedger.from_dict(doc)
        except (OSError, ValueError, ProtocolError, ConfigError, KeyError, TypeError) as exc:
            # Never resume with a blank budget: the run stops, the file stays for a look.
            raise ConfigError(f"{self._path}: unreadable privacy ledger ({exc}); the run "
                              "cannot go on without knowing what it has spent; start a new "
                              "run ([output] resume = false)") from None
        if ledger.delta != self.params.delta:
            raise ConfigError(f"{self._path}: the ledger is at delta {ledger.delta:g}, "
                              f"[privacy] delta is {self.params.delta:g}; start a new run")
        self.ledger = ledger
        log.warning("privacy ledger of this run: %d rounds charged, epsilon %.4g of %g "
                    "spent", len(ledger.charges), ledger.epsilon(), self.params.epsilon)

    @property
    def spent(self) -> float:
        return self.ledger.epsilon()

    def check_next(self, round_id: int) -> None:
        """Raise BudgetSpent if round ``round_id`` could take the run beyond epsilon.

        Counted as the devices count it (edge_agent.ledger): every round as if only the
        quorum reported. The ledger's own total (with the devices that did report) is
        lower, but a round every device would refuse must never be opened.
        """
        worst_rho = self.params.round_rho(self._d, self.params.quorum)
        rounds = len(self.ledger.charges) + 1
        worst = PrivacyLedger(self.params.delta, [RoundCharge(i, worst_rho, self.params.quorum)
                                                  for i in range(rounds)]).epsilon()
        if worst > self.params.epsilon:
            c = self.params.colluding_devices
            colluding = f", {c} of them colluding" if c else ""
            raise BudgetSpent(
                f"privacy budget: {rounds} rounds at the quorum ({self.params.quorum} "
                f"devices{colluding}) could spend epsilon {worst:.4g} (at delta "
                f"{self.params.delta:g}), "
                f"beyond [privacy] epsilon = {self.params.epsilon:g}; {self.spent:.4g} spent "
                f"in {rounds - 1} rounds; ending the run before round {round_id} with the "
                "model so far")

    def charge(self, round_id: int, devices: int) -> float:
        """Record round ``round_id``'s release with ``devices`` noise shares; the new total.

        Charged against the colluding view: ``colluding_devices`` of the shares count for
        nothing (DpParams.round_rho), so a round closed by the quorum costs z's full rho.

        A round charged before a crash (charged, then the process died before its model
        was saved) is re-run on resume; the larger of its two charges stands.
        """
        rho = self.params.round_rho(self._d, devices)
        earlier = [c for c in self.ledger.charges if c.round_id == round_id]
        if earlier:  # re-run after a restart: the larger of the two charges stands
            log.warning("round %d was charged before a restart (%d devices); now %d",
                        round_id, earlier[0].devices, devices)
            if earlier[0].rho >= rho:
                return self.spent
            self.ledger = PrivacyLedger(self.params.delta, [
                c for c in self.ledger.charges if c.round_id != round_id])
        self.ledger.charge(round_id, rho, devices)
        if self._path is not None:
            write_atomic(self._path, json.dumps(self.ledger.to_dict(), indent=1).encode())
        return self.spent

    def describe(self) -> dict[str, Any]:
        return {"epsilon": self.spent, "delta": self.params.delta}
