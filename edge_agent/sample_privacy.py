"""Sample-level DP-SGD on this device: its noise plan and its own privacy ledger.

The gateway announces (sample_epsilon, sample_delta, sample_clip); the device
knows its row count n, the training settings and the run's number of rounds R,
so it calibrates its own noise multiplier: the budget controls the noise.
Neighbouring data sets differ in one row of THIS device (add/remove one).

The device does not trust anyone's count: every round it trains is charged to
a ledger file in its state dir BEFORE training (a crash after sending can never
lose a charge), and a round whose charge would take the run past sample_epsilon
is refused with skip code "privacy-budget". An unreadable ledger refuses too:
starting from zero would silently reset the budget.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedmq.edge_agent.health import RoundSkipped
from fedmq.models.dpsgd import DpSgd
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.messages import RoundMessage, TrainingSettings
from fedmq.protocol.privacy.accounting import (
    calibrate_dpsgd,
    epsilon_spent,
    sample_level_epsilon,
    sample_level_event,
)
from fedmq.protocol.privacy.terms import SampleDpParams
from fedmq.runtime.files import write_text_atomic

log = logging.getLogger("fedmq.edge_agent.privacy")
LEDGER_FILE = "sample_dp_ledger.json"
SCHEMA = "fedmq.sample-dp-ledger/1"
# Calibration lands a hair below the target; composing the same RDP curve round by
# round may round the other way by ~1e-15, which is no privacy loss worth a refusal.
_SLACK = 1e-9


@dataclass(frozen=True)
class SampleDpPlan:
    """The noise this device adds so that R rounds of DP-SGD spend at most epsilon."""

    params: SampleDpParams
    rounds: int
    sampling_rate: float  # q: each row is in a step's batch with this probability
    steps_per_round: int  # T = ceil(epochs / q): "epochs" of expected batches
    noise_multiplier: float  # z, calibrated for rounds * T steps
    expected_batch: float  # q * n = min(batch_size, n): every step's fixed denominator

    @classmethod
    def build(cls, n: int, settings: TrainingSettings, rounds: int,
              params: SampleDpParams) -> SampleDpPlan:
        if n < 1 or rounds < 1:
            raise ConfigError(f"a sample-DP plan needs n >= 1 and rounds >= 1, got {n}, {rounds}")
        q = min(1.0, settings.batch_size / n)
        steps = math.ceil(settings.epochs / q)
        z = calibrate_dpsgd(params.epsilon, params.delta, q, rounds * steps)
        return cls(params=params, rounds=rounds, sampling_rate=q, steps_per_round=steps,
                   noise_multiplier=z, expected_batch=q * n)

    def dpsgd(self) -> DpSgd:
        """The settings models.dpsgd.fit_dpsgd takes for one round."""
        return DpSgd(clip=self.params.clip, noise_multiplier=self.noise_multiplier,
                     sampling_rate=self.sampling_rate, steps=self.steps_per_round,
                     expected_batch=self.expected_batch)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon (at sample_delta) spent once ``rounds`` rounds are trained with this plan."""
        return sample_level_epsilon(self.noise_multiplier, self.sampling_rate,
                                    rounds * self.steps_per_round, self.params.delta)


@dataclass(frozen=True)
class LedgerEntry:
    """One round this device trained with DP-SGD: the event it released."""

    run_id: str
    round_id: int
    noise_multiplier: float
    sampling_rate: float
    steps: int

    @classmethod
    def from_dict(cls, doc: Any) -> LedgerEntry:
        if not isinstance(doc, dict):
            raise ValueError("an entry is not an object")
        kinds = {"run_id": str, "round_id": int, "noise_multiplier": float,
                 "sampling_rate": float, "steps": int}
        for key, kind in kinds.items():
            value = doc.get(key)
            ok = (isinstance(value, int | float) if kind is float else isinstance(value, kind))
            if not ok or isinstance(value, bool):
                raise ValueError(f"entry field {key!r} missing or not a {kind.__name__}")
        z, q, steps = float(doc["noise_multiplier"]), float(doc["sampling_rate"]), doc["steps"]
        # Ranges too: negative steps would cancel real charges, and a z or q outside the
        # accountant's domain would raise deep inside it on every later round.
        if not (math.isfinite(z) and z >= 0) or not 0 < q <= 1 or steps < 1:
            raise ValueError(f"entry out of range (z {z!r}, q {q!r}, steps {steps!r})")
        return cls(run_id=doc["run_id"], round_id=doc["round_id"], noise_multiplier=z,
                   sampling_rate=q, steps=steps)


class SampleDpLedger:
    """The rounds this device trained with DP-SGD, kept in ``path`` (JSON, atomic writes).

    The file is read on every charge, so a restarted agent, or a new object, sees
    exactly what the old one charged.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> SampleDpLedger:
        return cls(Path(state_dir) / LEDGER_FILE)

    def entries(self) -> list[LedgerEntry]:
        """Every charged round, all runs; ConfigError (one line naming the file) if unreadable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"privacy ledger {self.path}: cannot read it ({exc})") from exc
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
                raise ValueError(f"not a {SCHEMA} document")
            if not isinstance(doc.get("entries"), list):
                raise ValueError("'entries' is not a list")
            return [LedgerEntry.from_dict(e) for e in doc["entries"]]
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise ConfigError(f"privacy ledger {self.path} is corrupt ({exc}); the device "
                              "refuses sample-DP rounds rather than reset its budget: restore "
                              "the file from a backup") from exc

    def spent(self, run_id: str, delta: float) -> float:
        """Epsilon (at ``delta``) this device has spent in run ``run_id``."""
        return epsilon_spent(self._events(self.entries(), run_id), delta)

    def charge(self, run_id: str, round_id: int, plan: SampleDpPlan, *,
               lifetime_max: float | None = None) -> float:
        """Record that round ``round_id`` is about to be trained; return epsilon spent after it.

        Raises RoundSkipped("privacy-budget") when the round would take the run past
        plan.params.epsilon, or every run in this ledger past ``lifetime_max``, or when
        the ledger cannot be read; nothing is written then.
        A round charged twice (retrained after a restart) costs twice: its first
        update may have left the device.
        """
        try:
            entries = self.entries()
        except ConfigError as exc:
            raise RoundSkipped("privacy-budget", str(exc),
                               detail="the device's privacy ledger is unreadable") from exc
        entry = LedgerEntry(run_id=run_id, round_id=round_id,
                            noise_multiplier=plan.noise_multiplier,
                            sampling_rate=plan.sampling_rate, steps=plan.steps_per_round)
        if lifetime_max is not None:  # every run, judged on the same read as the charge
            events = [sample_level_event(e.noise_multiplier, e.sampling_rate, e.steps)
                      for e in [*entries, entry]]
            life = epsilon_spent(events, plan.params.delta)
            if life > lifetime_max:
                raise RoundSkipped("privacy-budget", f"round {round_id} would take this "
                                   f"device's sample-level epsilon to {life:.3g} over all runs, "
                                   f"beyond its own max_sample_epsilon {lifetime_max:g}")
        budget = plan.params.epsilon
        after = epsilon_spent(self._events([*entries, entry], run_id), plan.params.delta)
        if after > budget * (1 + _SLACK):
            before = epsilon_spent(self._events(entries, run_id), plan.params.delta)
            raise RoundSkipped(
                "privacy-budget",
                f"sample-level privacy budget: this device has spent epsilon {before:.3f} of "
                f"{budget:g} (delta {plan.params.delta:g}) in run {run_id}; round {round_id} "
                f"would take it to {after:.3f}, so it sends nothing more this run")
        doc = {"schema": SCHEMA, "entries": [asdict(e) for e in [*entries, entry]]}
        try:
            write_text_atomic(self.path, json.dumps(doc, indent=1) + "\n")
        except OSError as exc:  # a full disk: nothing recorded, so nothing is trained
            raise RoundSkipped("privacy-budget", f"privacy ledger {self.path}: cannot record "
                               f"this round's charge ({exc.strerror}); not training",
                               "the device cannot write its privacy ledger") from exc
        return after

    @staticmethod
    def _events(entries: list[LedgerEntry], run_id: str) -> list[Any]:
        # Rounds trained with the same (z, q) fold into one event of their summed steps:
        # RDP composes additively, so the epsilon is the same and costs one evaluation.
        steps: dict[tuple[float, float], int] = {}
        for e in entries:
            if e.run_id == run_id:
                key = (e.noise_multiplier, e.sampling_rate)
                steps[key] = steps.get(key, 0) + e.steps
        return [sample_level_event(z, q, t) for (z, q), t in steps.items()]


class SampleDp:
    """What the agent asks each DP-SGD round: the plan, charged to this device's ledger.

    ``max_epsilon`` ([privacy] max_sample_epsilon in agent.toml) caps every run this
    device has trained with DP-SGD together, whatever a gateway announces per run.
    """

    def __init__(self, state_dir: str | None, *, max_epsilon: float | None) -> None:
        self._ledger = None if state_dir is None else SampleDpLedger.in_state_dir(state_dir)
        self._max = max_epsilon
        self._plans: dict[tuple[Any, ...], SampleDpPlan] = {}

    def round(self, msg: RoundMessage, n: int, params: SampleDpParams) -> DpSgd:
        if self._ledger is None:
            raise RoundSkipped("privacy-budget", "sample-level DP needs [agent] state_dir: "
                               "this device keeps its privacy ledger there",
                               "the device has no state_dir for its privacy ledger")
        key = (n, msg.settings, params)
        if (plan := self._plans.get(key)) is None:
            plan = self._plans[key] = SampleDpPlan.build(n, msg.settings, params.rounds, params)
        spent = self._ledger.charge(msg.run_id, msg.round_id, plan, lifetime_max=self._max)
        log.info("round %d: DP-SGD (noise multiplier %.3g, sampling rate %.3g, %d steps): "
                 "sample-level epsilon %.3f of %g spent in this run (delta %g)", msg.round_id,
                 plan.noise_multiplier, plan.sampling_rate, plan.steps_per_round, spent,
                 params.epsilon, params.delta)
        return plan.dpsgd()
