"""The device's own device-level privacy ledger: it need not trust the gateway's count.

From the announced terms (noise multiplier, clip, quorum) the device computes
what each update it sends costs, composes it with dp-accounting
(protocol.privacy.accounting) and refuses to contribute once a limit would be
passed: the run's announced budget (counted by the device itself, so an
aggregator that miscounts cannot make it overspend within a run), its own
lifetime cap ``[privacy] max_epsilon`` (over every run it served: the same data
answers again in each run) and, if set, ``max_alone_epsilon``.

Each charge assumes the sum the gateway decrypts holds the announced quorum of
noise shares (the fewest that can close a round), of which the announced
``colluding_devices`` c count for nothing (they may reveal theirs to the
aggregator): the device cannot see how many others reported. Its share is sized for
the quorum less c (DpParams.device_sigma), so such a sum carries the full noise and
the charge is rho = round_rho(quorum). That holds only against a gateway that
decrypts sums of at least the quorum; the key holder could decrypt fewer, down to
this update alone (its own share only, which no colluder can subtract: rho_alone =
shares_rho(1) = (quorum - c) * rho at most). So the number of shares the noise is
sized for (quorum - c) is capped (``max_quorum``, checked for every phase before
anything is computed): the gateway cannot shrink a device's share below
1/sqrt(max_quorum) of the full noise, and rho_alone stays below max_quorum times what
the ledger counts. The "alone" count is kept beside the other, logged, and capped by
``max_alone_epsilon``.

The ledger lives in ``state_dir/privacy_ledger.json`` and is written atomically
BEFORE the update is published; without a state_dir it is kept in memory and
the agent says so once. A ledger file that cannot be read stops the device from
contributing under DP (one line naming the file); it is never reset.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from fedmq.edge_agent.health import RoundSkipped
from fedmq.protocol.privacy.accounting import PrivacyLedger, RoundCharge
from fedmq.protocol.privacy.noise import DpParams
from fedmq.runtime.files import write_atomic

log = logging.getLogger("fedmq.edge_agent.privacy")
LEDGER_FILE = "privacy_ledger.json"


@dataclass(frozen=True)
class Entry:
    fleet: str
    run_id: str
    round_id: int
    rho: float  # with the quorum's noise shares in the sum, less the colluding devices'
    rho_alone: float  # this update decrypted on its own: the device's own share only


def _check_entry(e: Entry) -> None:
    """A tampered or broken entry must not lower the count (or crash the agent later)."""
    for name in ("fleet", "run_id"):
        if not isinstance(getattr(e, name), str):
            raise ValueError(f"bad {name} {getattr(e, name)!r}")
    if isinstance(e.round_id, bool) or not isinstance(e.round_id, int) or e.round_id < 0:
        raise ValueError(f"bad round_id {e.round_id!r}")
    for name in ("rho", "rho_alone"):
        value = getattr(e, name)
        if isinstance(value, bool) or not isinstance(value, float) or not (
                math.isfinite(value) and value >= 0):
            raise ValueError(f"bad {name} {value!r}")


class DeviceLedger:
    def __init__(self, state_dir: str | None, *, max_epsilon: float | None,
                 max_quorum: int | None = None,
                 max_alone_epsilon: float | None = None) -> None:
        self.path = None if state_dir is None else Path(state_dir) / LEDGER_FILE
        self.max_epsilon = max_epsilon
        self.max_quorum = max_quorum
        self.max_alone_epsilon = max_alone_epsilon
        self._entries: list[Entry] | None = None

    def admit(self, params: DpParams) -> None:
        """Refuse (RoundSkipped, a refusal) terms that size the noise shares for more than
        ``max_quorum`` devices (the quorum less the colluding devices)."""
        sized = params.honest_quorum
        if self.max_quorum is None or sized <= self.max_quorum:
            return
        c = params.colluding_devices
        quorum = f"{params.quorum} devices" + (f" less {c} colluding ({sized})" if c else "")
        raise RoundSkipped(
            "privacy-budget", f"the gateway sizes the device-level DP noise for a quorum of "
            f"{quorum}, above this device's [privacy] max_quorum = "
            f"{self.max_quorum}: each share would be 1/sqrt({sized}) of the noise, "
            "too little if fewer devices are in a decrypted sum; this device sends nothing "
            "under these terms (charging nothing to its ledger)",
            f"announced DP quorum {params.quorum}"
            + (f" less {c} colluding devices" if c else "")
            + f" is above this device's max_quorum {self.max_quorum}", refusal=True)

    def _load(self) -> list[Entry]:
        if self._entries is not None:
            return self._entries
        if self.path is None:
            log.warning("no [agent] state_dir: this device's privacy ledger lives in memory "
                        "only and starts empty after a restart")
            self._entries = []
            return self._entries
        entries: list[Entry] = []
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_bytes())
                entries = [Entry(**e) for e in doc["entries"]]
                for e in entries:
                    _check_entry(e)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RoundSkipped(
                    "privacy-budget", f"{self.path}: unreadable privacy ledger ({exc}); this "
                    "device contributes no DP updates until it is repaired (it is never reset "
                    "by itself)", "the device's privacy ledger is unreadable") from None
        self._entries = entries
        return entries

    def _epsilon(self, rhos: list[float], delta: float) -> float:
        return PrivacyLedger(delta, [RoundCharge(i, r, 1) for i, r in enumerate(rhos)]
                             ).epsilon()

    def check(self, fleet: str, run_id: str, round_id: int, params: DpParams,
              n_values: int) -> Entry:
        """The charge of this round's update; RoundSkipped if a limit would be passed."""
        entries = self._load()
        entry = Entry(fleet, run_id, round_id, params.round_rho(n_values, params.quorum),
                      params.shares_rho(n_values, 1))
        run = [e.rho for e in entries if (e.fleet, e.run_id) == (fleet, run_id)]
        in_run = self._epsilon([*run, entry.rho], params.delta)
        if in_run > params.epsilon:
            raise RoundSkipped("privacy-budget", f"round {round_id} would reach epsilon "
                               f"{in_run:.3g} in this run, beyond the announced "
                               f"{params.epsilon:g}")
        if self.max_epsilon is not None:
            life = self._epsilon([*(e.rho for e in entries if e.fleet == fleet), entry.rho],
                                 params.delta)
            if life > self.max_epsilon:
                raise RoundSkipped("privacy-budget", f"round {round_id} would reach epsilon "
                                   f"{life:.3g} over this device's runs, beyond its own "
                                   f"max_epsilon {self.max_epsilon:g}")
        if self.max_alone_epsilon is not None:
            alone = self._epsilon(
                [*(e.rho_alone for e in entries if e.fleet == fleet), entry.rho_alone],
                params.delta)
            if alone > self.max_alone_epsilon:
                raise RoundSkipped("privacy-budget", f"round {round_id} would reach epsilon "
                                   f"{alone:.3g} over this device's runs against a key holder "
                                   "decrypting its updates alone, beyond its own "
                                   f"max_alone_epsilon {self.max_alone_epsilon:g}")
        return entry

    def commit(self, entry: Entry, delta: float) -> str:
        """Record ``entry`` (before the update leaves) and return the line to log."""
        entries = self._load()
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, json.dumps(
                    {"entries": [asdict(e) for e in [*entries, entry]]}, indent=1).encode())
            except OSError as exc:  # a full disk: nothing recorded, so nothing is sent
                raise RoundSkipped(
                    "privacy-budget", f"{self.path}: cannot record this round's privacy charge "
                    f"({exc.strerror}); the update is not sent",
                    "the device cannot write its privacy ledger") from None
        entries.append(entry)
        run = [e for e in entries if (e.fleet, e.run_id) == (entry.fleet, entry.run_id)]
        life = [e.rho for e in entries if e.fleet == entry.fleet]
        spent = self._epsilon([e.rho for e in run], delta)
        alone = self._epsilon([e.rho_alone for e in run], delta)
        return (f"privacy (device level, delta {delta:g}): epsilon {spent:.3f} spent in this "
                f"run, {self._epsilon(life, delta):.3f} over all runs; against a key holder "
                f"decrypting these updates alone: {alone:.3f}")
