"""Privacy accounting with Google's ``dp-accounting`` (RDP accountant, add/remove one).

Only the sample-level DP-SGD part lives here in this branch; the coordinator keeps
one copy of this module when merging. ``dp_accounting`` is imported inside the
functions: a device of a fleet without DP installs no dp extra.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from protocol.errors import ConfigError

if TYPE_CHECKING:
    from dp_accounting import DpEvent
    from dp_accounting.rdp import RdpAccountant

# Calibration tolerance on the noise multiplier: far below anything that moves epsilon
# visibly, and a few dozen accountant evaluations at most.
_TOL = 1e-6


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """Mute dp_accounting's per-order convergence warnings during a calibration.

    The RDP accountant drops an order whose series does not converge (harmless: it
    takes the minimum over the remaining orders) and says so through absl for every
    trial value, dozens of lines a device log has no use for.
    """
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def _check(sampling_rate: float, steps: int) -> None:
    if not (0.0 < sampling_rate <= 1.0):
        raise ConfigError(f"sampling rate must lie in (0, 1], got {sampling_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")


def sample_level_event(noise_multiplier: float, sampling_rate: float, steps: int) -> DpEvent:
    """``steps`` Poisson-sampled Gaussian steps: what DP-SGD on one device releases.

    Poisson sampling amplifies privacy only because every row really is kept
    independently with probability ``sampling_rate`` (models.dpsgd does exactly that).
    """
    import dp_accounting

    _check(sampling_rate, steps)
    if not (noise_multiplier >= 0.0 and math.isfinite(noise_multiplier)):
        raise ConfigError(f"noise multiplier must be a finite number >= 0, "
                          f"got {noise_multiplier!r}")
    step = dp_accounting.PoissonSampledDpEvent(
        sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _accountant() -> RdpAccountant:
    from dp_accounting import NeighboringRelation
    from dp_accounting.rdp import RdpAccountant

    return RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)


def epsilon_spent(events: Sequence[DpEvent], delta: float) -> float:
    """Epsilon at ``delta`` of all ``events`` composed (RDP, add/remove one); 0 if none."""
    import dp_accounting

    if not events:
        return 0.0
    with _quiet_absl():
        composed = dp_accounting.ComposedDpEvent(list(events))
        return float(_accountant().compose(composed).get_epsilon(delta))


def sample_level_epsilon(noise_multiplier: float, sampling_rate: float, steps: int,
                         delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` DP-SGD steps (0 for no step at all)."""
    if steps == 0:
        return 0.0
    return epsilon_spent([sample_level_event(noise_multiplier, sampling_rate, steps)], delta)


def calibrate_dpsgd(epsilon: float, delta: float, sampling_rate: float, steps: int) -> float:
    """The smallest noise multiplier z whose ``steps`` DP-SGD steps stay within epsilon.

    Uses dp_accounting's own calibration (Brent's method on the RDP accountant), which
    guarantees the returned z meets the budget and lies within 1e-6 of the optimum.
    """
    import dp_accounting

    _check(sampling_rate, steps)
    if not (epsilon > 0.0 and math.isfinite(epsilon)):
        raise ConfigError(f"sample_epsilon must be a finite number > 0, got {epsilon!r}")
    if not (0.0 < delta < 1.0):
        raise ConfigError(f"sample_delta must lie in (0, 1), got {delta!r}")
    if steps == 0:
        return 0.0

    with _quiet_absl():
        z = dp_accounting.calibrate_dp_mechanism(
            _accountant, lambda z: sample_level_event(z, sampling_rate, steps), epsilon, delta,
            dp_accounting.LowerEndpointAndGuess(0.0, 1.0), tol=_TOL)
    return float(z)
