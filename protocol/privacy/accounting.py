"""Privacy accounting with Google's dp-accounting: ledgers that compose and persist.

Two levels, each with its own neighbouring relation:

- device level (``PrivacyLedger``): one zCDP event per closed round of the
  distributed discrete Gaussian (protocol.privacy.noise), composed by the RDP
  accountant under REPLACE_SPECIAL ("zero-out": one device's update replaced by
  zeros). The aggregator keeps one in its checkpoint, every device its own.
- sample level (``sample_level_event``, ``epsilon_spent``): DP-SGD on one device,
  Poisson-sampled Gaussian steps, RDP accountant under ADD_OR_REMOVE_ONE (one example);
  the device's ledger of them is edge_agent.sample_privacy.

dp_accounting (and the scipy it pulls) is imported inside the functions, so a
device of a fleet without DP imports this module without the ``dp`` extra.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.protocol.privacy.noise import DpParams

if TYPE_CHECKING:
    import dp_accounting

MISSING = "differential privacy needs dp-accounting: pip install 'fedmq[dp]'"


def _dp() -> Any:
    try:
        import dp_accounting
    except ImportError as exc:
        raise ConfigError(MISSING) from exc
    return dp_accounting


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """Mute dp_accounting's per-order convergence warnings (absl): the RDP accountant drops
    an order whose series does not converge, harmlessly (it takes the minimum over the
    others), and says so for every evaluation, dozens of lines a log has no use for."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def _epsilon(event: dp_accounting.DpEvent, delta: float, relation: str) -> float:
    dp = _dp()
    accountant = dp.rdp.RdpAccountant(
        neighboring_relation=getattr(dp.NeighboringRelation, relation))
    with _quiet_absl():
        return float(accountant.compose(event).get_epsilon(delta))


def _count(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ProtocolError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _positive(value: Any, what: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ProtocolError(f"{what} must be a {'non-negative' if zero else 'positive'} "
                            f"finite number, got {value!r}")
    return float(value)


def _delta(value: Any) -> float:
    delta = _positive(value, "ledger delta")
    if delta >= 1:
        raise ProtocolError(f"ledger delta must lie in (0, 1), got {delta}")
    return delta


@dataclass(frozen=True)
class RoundCharge:
    """One closed round: its zCDP rho, given the devices that were in the sum."""

    round_id: int
    rho: float
    devices: int

    def __post_init__(self) -> None:
        _count(self.round_id, "round_id")
        _positive(self.rho, "rho", zero=True)
        _count(self.devices, "devices", 1)


class PrivacyLedger:
    """Device-level budget: the rounds charged so far, composed by dp-accounting."""

    def __init__(self, delta: float, charges: Iterable[RoundCharge] = ()) -> None:
        self.delta = _delta(delta)
        self._charges: list[RoundCharge] = []
        for c in charges:
            self.charge(c.round_id, c.rho, c.devices)

    @property
    def charges(self) -> tuple[RoundCharge, ...]:
        return tuple(self._charges)

    def charge(self, round_id: int, rho: float, devices: int) -> RoundCharge:
        """Record one closed round; charging a round twice is refused (it would be a bug)."""
        if any(c.round_id == round_id for c in self._charges):
            raise ProtocolError(f"round {round_id} is already charged to the privacy ledger")
        charge = RoundCharge(round_id, rho, devices)
        self._charges.append(charge)
        return charge

    def dp_event(self) -> dp_accounting.DpEvent:
        dp = _dp()
        return dp.ComposedDpEvent([dp.ZCDpEvent(c.rho) for c in self._charges])

    def epsilon(self) -> float:
        """Epsilon spent at ``delta`` (0.0 before the first round)."""
        return self._eps([c.rho for c in self._charges])

    def epsilon_with(self, rho: float) -> float:
        """What epsilon would be after one more round of ``rho``."""
        return self._eps([c.rho for c in self._charges] + [_positive(rho, "rho", zero=True)])

    def _eps(self, rhos: list[float]) -> float:
        if not rhos:
            return 0.0
        dp = _dp()
        event = dp.ComposedDpEvent([dp.ZCDpEvent(r) for r in rhos])
        return _epsilon(event, self.delta, "REPLACE_SPECIAL")

    def to_dict(self) -> dict[str, Any]:
        return {"level": "device", "delta": self.delta,
                "charges": [asdict(c) for c in self._charges]}

    @classmethod
    def from_dict(cls, data: Any) -> PrivacyLedger:
        rows = _rows(data, "device")
        try:
            return cls(data["delta"], [RoundCharge(r["round_id"], r["rho"], r["devices"])
                                       for r in rows])
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed privacy ledger: {exc}") from exc


def _rows(data: Any, level: str) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or data.get("level") != level:
        raise ProtocolError(f"a {level}-level privacy ledger must be an object with "
                            f"level {level!r}")
    rows = data.get("charges")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ProtocolError("privacy ledger charges must be a list of objects")
    return rows


def _smallest(epsilon_of: Callable[[float], float], target: float, what: str) -> float:
    """Bisection (in log space, 1e-6 relative) for the smallest noise meeting ``target``.

    Epsilon decreases in the noise multiplier; the returned end of the bracket
    always meets the target, unlike a root finder's estimate.
    """
    lo, hi = 1e-3, 1.0
    if epsilon_of(lo) <= target:
        return lo
    while epsilon_of(hi) > target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ConfigError(f"no {what} up to 1e6 reaches epsilon {target}")
    while hi / lo > 1 + 1e-6:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if epsilon_of(mid) <= target else (mid, hi)
    return hi


def calibrate_noise_multiplier(*, epsilon: float, delta: float, rounds: int, d: int,
                               quorum: int, clip: float = 1.0, precision_bits: int = 20,
                               tail: float = 12.0, colluding_devices: int = 0) -> float:
    """Smallest z such that ``rounds`` rounds closed by ``quorum`` devices spend <= epsilon.

    Spent as DpParams.round_rho counts it: against the aggregator with
    ``colluding_devices`` of the quorum (whose shares are sized for the others), so z
    barely depends on them; the shares do. ``clip`` does not change z (the noise scales
    with it); it only fills the contract.
    """
    if rounds < 1:
        raise ConfigError(f"calibration needs rounds >= 1, got {rounds}")

    def spent(z: float) -> float:
        p = DpParams(epsilon=epsilon, delta=delta, noise_multiplier=z, clip=clip,
                     quorum=quorum, precision_bits=precision_bits, tail=tail,
                     colluding_devices=colluding_devices)
        try:
            rho = p.round_rho(d, quorum)
        except ProtocolError:  # shares below the theorem's sigma >= 1/2: no guarantee
            return math.inf
        return PrivacyLedger(delta).epsilon_with(rounds * rho)

    return _smallest(spent, epsilon, "noise multiplier")


# ---- sample level: DP-SGD on one device ------------------------------------------------

def sample_level_event(noise_multiplier: float, sampling_rate: float,
                       steps: int) -> dp_accounting.DpEvent:
    """``steps`` Poisson-sampled Gaussian steps (rate q, noise std z * clip)."""
    dp = _dp()
    return dp.SelfComposedDpEvent(
        dp.PoissonSampledDpEvent(sampling_rate, dp.GaussianDpEvent(noise_multiplier)), steps)


def calibrate_dpsgd(epsilon: float, delta: float, sampling_rate: float, steps: int) -> float:
    """Smallest DP-SGD noise multiplier whose ``steps`` steps spend <= epsilon."""
    def spent(z: float) -> float:
        return _epsilon(sample_level_event(z, sampling_rate, steps), delta, "ADD_OR_REMOVE_ONE")

    return _smallest(spent, epsilon, "DP-SGD noise multiplier")


def epsilon_spent(events: Sequence[dp_accounting.DpEvent], delta: float) -> float:
    """Epsilon at ``delta`` of sample-level ``events`` composed (add/remove one); 0 if none."""
    if not events:
        return 0.0
    return _epsilon(_dp().ComposedDpEvent(list(events)), delta, "ADD_OR_REMOVE_ONE")


def sample_level_epsilon(noise_multiplier: float, sampling_rate: float, steps: int,
                         delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` DP-SGD steps (0 for no step at all)."""
    if steps == 0:
        return 0.0
    return epsilon_spent([sample_level_event(noise_multiplier, sampling_rate, steps)], delta)
