"""Device-level distributed differential privacy: the "ddg/1" mechanism (pure).

Each device clips its whole model delta to L2 norm C, quantizes it to integers
with the fleet's precision and adds its own share of discrete Gaussian noise;
the shares are summed under Paillier with everybody else's, so the aggregator
only ever decrypts an already-noised total.

Integer domain (d = number of model parameters, p = precision_bits):
q = rint(clip_C(delta) * 2^p / C). Rounding moves each coordinate by <= 1/2, so
||q||_2 <= 2^p + sqrt(d)/2 =: D2 (the L2 sensitivity of the sum) and
|q_j| <= 2^p. Every device adds N_Z(0, s^2) iid per coordinate with
s = z * D2 / sqrt(quorum - c), c = ``colluding_devices`` (0 by default): any sum
of at least ``quorum`` devices carries noise of variance >= (z * D2)^2 from its
honest devices alone, even if c of them collude with the aggregator and subtract
their own shares (Truex et al. 2019, "A hybrid approach to privacy-preserving
federated learning", arXiv:1812.03224), so a round closed by the quorum is never
under-noised; accounting uses the m devices that actually reported, of which only
m - c shares are counted as noise (the colluding view; whoever does not collude
sees m shares, m / (m - c) times the variance charged).

Neighbouring relation: zero-out (Kairouz et al. 2021, "Practical and private
(deep) learning without sampling or shuffling", arXiv:2103.00039, Def. 1.1;
dp_accounting's NeighboringRelation.REPLACE_SPECIAL): one device's update is
replaced by the zero vector. Who reports is public (the gateway sees it), so the
count m in the sum is not secret and dividing by it is post-processing; every
device has weight 1 (sample-count weights would make the sensitivity unbounded).

Privacy of one round (Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation", ICML 2021,
arXiv:2102.06387): for Z the sum of m iid N_Z(0, s^2)^d shares, s >= 1/2, and
an integer shift with ||Delta||_2 <= D2, Proposition 14 (Eq. 17, as coded by the
authors in google-research/federated distributed_dp/accounting_utils.py,
``compute_rdp_dgaussian`` term_1) bounds the Renyi divergence of order alpha by
alpha * D2^2 / (2 m s^2) + tau * d, tau = 10 * sum_{k=1}^{m-1} exp(-2 pi^2 s^2
k/(k+1)); Theorem 1 states the zCDP form rho = D2^2/(2 m s^2) + tau*d/4. We
charge rho = D2^2 / (2 m s^2) + tau * d, which dominates both for every
alpha >= 1 (all RDP orders dp_accounting uses), so it is an upper bound whichever
reading is right; with fedmq's scales (s >> 1) tau underflows to 0 and rho is
exactly the continuous Gaussian's 1 / (2 z_eff^2), z_eff = z * sqrt(m / quorum).
With colluders the theorem is applied to the m - c honest shares (the c known
shares are a public shift: post-processing), so a round of m reporting devices
costs the rho above with m - c in place of m, and z_eff = z * sqrt((m - c) /
(quorum - c)): exactly z for a round closed by the quorum, as without colluders.

Tail: a share with |x| > ceil(tail * s) is redrawn, i.e. each value is drawn
from N_Z conditioned on |x| <= T. One value is truncated with probability
< 2 exp(-tail^2/2) (~1.1e-31 for tail 12), so the noised sum is within total
variation eta <= m * d * 2 exp(-tail^2/2) per round of the analysed mechanism,
which adds at most (1 + e^eps) * rounds * eta to delta. In exchange every value
a device sends lies in [-B, B], B = 2^p + ceil(tail * s): the slot headroom
derives from B, and a decoded sum beyond m * B is overflow or a forgery.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.protocol.crypto.codec import mean_from_sums
from fedmq.protocol.errors import CodecError, ProtocolError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

MECHANISMS = ("ddg/1",)


@dataclass(frozen=True)
class DpParams:
    """The fleet's device-level DP contract, announced with the public key."""

    epsilon: float  # the run's budget at ``delta``
    delta: float
    noise_multiplier: float  # z: noise std of a quorum's sum / the L2 sensitivity
    clip: float  # C: L2 norm a device's whole delta is clipped to
    quorum: int  # fewest devices that can close a round; shares are sized for it
    precision_bits: int = 20
    tail: float = 12.0
    mechanism: str = "ddg/1"
    # c: devices of a sum that may collude with the aggregator (reveal their own shares);
    # shares are sized for the quorum less them. Left out of to_dict when 0, so a fleet
    # without colluders keeps the contract (digest) it had before the field existed.
    colluding_devices: int = 0

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise CodecError(f"unknown DP mechanism {self.mechanism!r}; known: "
                             f"{', '.join(MECHANISMS)}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise CodecError(f"privacy epsilon must be a positive number, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise CodecError(f"privacy delta must lie in (0, 1), got {self.delta}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise CodecError(f"noise_multiplier must be a positive number, "
                             f"got {self.noise_multiplier}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise CodecError(f"privacy clip must be a positive finite number, got {self.clip}")
        if not 1 <= self.quorum <= 1 << 24:
            raise CodecError(f"privacy quorum must be between 1 and 2^24, got {self.quorum}")
        if not 8 <= self.precision_bits <= 40:
            raise CodecError(f"privacy precision_bits must be between 8 and 40, "
                             f"got {self.precision_bits}")
        # Below 8 the truncation would cost a visible share of delta (2 e^-32 per value).
        if not 8 <= self.tail <= 64:
            raise CodecError(f"privacy tail must be between 8 and 64, got {self.tail}")
        c = self.colluding_devices
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < self.quorum:
            raise CodecError(f"privacy colluding_devices must be an integer from 0 to the "
                             f"quorum less one ({self.quorum - 1}), got {c!r}")

    @property
    def honest_quorum(self) -> int:
        """quorum - c: the fewest honest noise shares in a sum of at least the quorum; the
        shares are sized so that these alone carry the full noise."""
        return self.quorum - self.colluding_devices

    def sensitivity(self, d: int) -> float:
        """D2: the largest L2 norm of one device's quantized, clipped update."""
        _check_dim(d)
        return float(2**self.precision_bits) + math.sqrt(d) / 2

    def device_sigma(self, d: int) -> float:
        """s: the std of each device's noise share, per coordinate."""
        return self.noise_multiplier * self.sensitivity(d) / math.sqrt(self.honest_quorum)

    def tail_bound(self, d: int) -> int:
        """The largest |noise share| a device ever adds."""
        return math.ceil(self.tail * self.device_sigma(d))

    def bound_int(self, d: int) -> int:
        """B: the largest |integer| one device sends in the DP section."""
        return (1 << self.precision_bits) + self.tail_bound(d)

    def round_rho(self, d: int, reporting: int) -> float:
        """zCDP rho of one round whose sum holds ``reporting`` devices (see module doc).

        Stated against the aggregator colluding with ``colluding_devices`` of them: only
        the other reporting - c shares count as noise.
        """
        if reporting < 1:
            raise ProtocolError(f"a round needs at least one reporting device, got {reporting}")
        honest = reporting - self.colluding_devices
        if honest < 1:
            raise ProtocolError(f"a sum of {reporting} devices, {self.colluding_devices} of "
                                "them possibly colluding, holds no honest noise share")
        return self.shares_rho(d, honest)

    def shares_rho(self, d: int, shares: int) -> float:
        """zCDP rho of a release whose noise is ``shares`` device shares unknown to the
        adversary (e.g. 1: one update decrypted alone, protected by its own share only)."""
        if shares < 1:
            raise ProtocolError(f"a release needs at least one noise share, got {shares}")
        s = self.device_sigma(d)
        if s < 0.5:  # the theorem's precondition
            raise ProtocolError(f"device noise std {s:.3g} below 1/2: raise noise_multiplier")
        tau = 10.0 * sum(math.exp(-2 * math.pi**2 * s**2 * k / (k + 1))
                         for k in range(1, shares))
        return self.sensitivity(d) ** 2 / (2 * shares * s**2) + tau * d

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        if not self.colluding_devices:  # the wire format (and digest) from before the field
            del doc["colluding_devices"]
        return doc

    @classmethod
    def from_dict(cls, data: Any) -> DpParams:
        if not isinstance(data, dict):
            raise ProtocolError("privacy parameters must be an object")
        try:
            return cls(epsilon=float(data["epsilon"]), delta=float(data["delta"]),
                       noise_multiplier=float(data["noise_multiplier"]),
                       clip=float(data["clip"]), quorum=_int(data["quorum"]),
                       precision_bits=_int(data["precision_bits"]),
                       tail=float(data["tail"]), mechanism=str(data["mechanism"]),
                       colluding_devices=_int(data.get("colluding_devices", 0)))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"bad privacy parameters: {exc}") from exc


def _int(value: Any) -> int:
    # JSON may carry 5.0 for 5; a fractional or boolean count is a malformed contract.
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _check_dim(d: int) -> None:
    if d < 1:
        raise CodecError(f"an update needs at least one value, got dimension {d}")


@dataclass(frozen=True)
class DpContract:
    """What a slot codec needs to pack a DP section: the per-device bound and summands."""

    params: DpParams
    d: int
    max_agents_: int

    @property
    def bound_int(self) -> int:
        return self.params.bound_int(self.d)

    @property
    def max_agents(self) -> int:
        return self.max_agents_


def fresh_rng() -> np.random.Generator:
    """A generator seeded from OS entropy: shares independent across devices and rounds."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator, *,
                      bound: int | None = None) -> IntArray:
    """``size`` iid draws of N_Z(0, sigma^2) (optionally conditioned on |x| <= bound).

    Canonne, Kamath, Steinke 2020 ("The Discrete Gaussian for Differential
    Privacy", arXiv:2004.00010, Algorithm 3): with t = floor(sigma) + 1, draw Y
    from the discrete Laplace P(y) ~ exp(-|y|/t) and keep it with probability
    exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)). The discrete Laplace is a geometric
    magnitude with a fair sign, rejecting "-0" so zero is not counted twice.
    Vectorised: candidates are drawn in batches and filtered. The acceptance
    probabilities and the geometric's parameter are floats (the paper's exact
    version uses rationals); the error is at the float rounding level.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise CodecError(f"discrete Gaussian sigma must be positive, got {sigma}")
    t = math.floor(sigma) + 1
    p_geom = -math.expm1(-1.0 / t)  # P(stop) of a geometric with P(x) ~ exp(-x/t)
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        batch = 2 * (size - filled) + 64  # acceptance is well above 1/2
        magnitude = rng.geometric(p_geom, batch).astype(np.int64) - 1
        negative = rng.random(batch) < 0.5
        keep = ~(negative & (magnitude == 0))
        accept = np.exp(-((magnitude - sigma**2 / t) ** 2) / (2 * sigma**2))
        keep &= rng.random(batch) < accept
        if bound is not None:
            keep &= magnitude <= bound
        got = np.where(negative, -magnitude, magnitude)[keep][: size - filled]
        out[filled:filled + got.size] = got
        filled += got.size
    return out


@dataclass(frozen=True)
class NoisyUpdate:
    values: list[int]  # d noised integers, then the count 1
    norm: float  # L2 norm of the delta before clipping
    clipped: bool


def clip_and_quantize(delta: FloatArray, params: DpParams) -> tuple[IntArray, float, bool]:
    """q = rint(clip_C(delta) * 2^p / C), the delta's norm, whether clipping changed it."""
    delta = np.asarray(delta, dtype=np.float64)
    if delta.ndim != 1 or delta.size < 1 or not np.all(np.isfinite(delta)):
        raise CodecError("a DP update must be a finite, non-empty 1-D vector")
    norm = float(np.linalg.norm(delta))
    clipped = norm > params.clip
    if clipped:
        # The 2^-40 margin keeps the float norm of the result <= C despite rounding.
        delta = delta * (params.clip / norm * (1 - 2.0**-40))
    q = np.rint(delta * (2.0**params.precision_bits / params.clip)).astype(np.int64)
    return q, norm, clipped


def noisy_update(delta: FloatArray, params: DpParams, *,
                 rng: np.random.Generator | None = None) -> NoisyUpdate:
    """The integers a device encrypts: its clipped, quantized delta plus its noise share."""
    q, norm, clipped = clip_and_quantize(delta, params)
    d = q.size
    noise = discrete_gaussian(params.device_sigma(d), d, rng or fresh_rng(),
                              bound=params.tail_bound(d))
    return NoisyUpdate(values=[*(q + noise).tolist(), 1], norm=norm, clipped=clipped)


def mean_from_noisy_sums(sums: Sequence[int], params: DpParams) -> tuple[FloatArray, int]:
    """(noised sum / m, scaled back to floats, m) from the decrypted DP section: every
    device's count is 1, so the codec's weighted mean is the mean over the m devices.

    All m shares are in the sum, colluding devices' too, so the mean's noise has std
    z * D2 * sqrt(m / (quorum - c)) / m per coordinate (in the integer domain): with
    c > 0 more than the m - c honest shares the accounting counts (round_rho).
    """
    return mean_from_sums(sums, params)
