"""Server optimizers on the decrypted average update: FedAvgM, FedAdam, FedYogi, FedAdagrad.

Pure numpy, like aggregator.fedavg. The fleet's average delta (sum n_k (w_k - w) / sum n_k)
is treated as a pseudo-gradient step, as in Reddi et al. 2021, "Adaptive Federated
Optimization", Algorithm 2; FedAvgM is server momentum (Hsu et al. 2019). They cost the
devices nothing: only the gateway's step changes.

Choices (documented in docs/configuration.md, [server]):
- No bias correction. Reddi's Algorithm 2 has none (Flower's FedAdam corrects its lr,
  its FedYogi does not); with v starting at tau^2 the first adaptive step is already about
  server_lr per coordinate in the delta's direction, which a correction would only rescale.
- v starts at tau^2 (Reddi: v_{-1} >= tau^2), m at zero; momentum's m at zero.
- Every operation is float64 and in a fixed order, so a run resumed from ServerState
  (stored exactly, as float.hex) continues bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.server import ServerSettings

FloatArray = NDArray[np.float64]
ADAPTIVE = ("fedadam", "fedyogi", "fedadagrad")


@dataclass(frozen=True)
class ServerState:
    """What a server optimizer carries from round to round: steps taken, first moment
    ``m`` (momentum / Adam's m) and second moment ``v`` (adaptive ones only)."""

    t: int = 0
    m: FloatArray | None = None
    v: FloatArray | None = None

    def __post_init__(self) -> None:
        if isinstance(self.t, bool) or not isinstance(self.t, int) or self.t < 0:
            raise ProtocolError("server optimizer step count t must be an integer >= 0")
        for name in ("m", "v"):
            a = getattr(self, name)
            if a is not None and (not isinstance(a, np.ndarray) or a.dtype != np.float64
                                  or a.ndim != 1 or not np.all(np.isfinite(a))):
                raise ProtocolError(f"server optimizer state {name} must be a finite "
                                    "1-d float64 array")
        if self.m is not None and self.v is not None and self.m.shape != self.v.shape:
            raise ProtocolError("server optimizer state m and v differ in length")

    @property
    def n_params(self) -> int | None:
        """Length of the moments; None while there are none (fedavg, or no step yet)."""
        return None if self.m is None else int(self.m.shape[0])

    def equals(self, other: ServerState) -> bool:
        """Bit for bit (np.array_equal on float64 would call -0.0 == 0.0)."""
        def same(a: FloatArray | None, b: FloatArray | None) -> bool:
            return (a is None) == (b is None) and (a is None or (
                b is not None and a.shape == b.shape and a.tobytes() == b.tobytes()))
        return self.t == other.t and same(self.m, other.m) and same(self.v, other.v)

    def to_dict(self) -> dict[str, Any]:
        """Exact: each float as float.hex (JSON decimals would round)."""
        doc: dict[str, Any] = {"t": self.t}
        for name in ("m", "v"):
            a = getattr(self, name)
            if a is not None:
                doc[name] = [float(x).hex() for x in a]
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> ServerState:
        if not isinstance(doc, dict) or not isinstance(doc.get("t"), int):
            raise ProtocolError("server optimizer state must be an object with an integer t")
        arrays: dict[str, FloatArray | None] = {}
        for name in ("m", "v"):
            values = doc.get(name)
            if values is None:
                arrays[name] = None
                continue
            if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
                raise ProtocolError(f"server optimizer state {name} must be a list of "
                                    "float.hex strings")
            try:
                arrays[name] = np.array([float.fromhex(x) for x in values], dtype=np.float64)
            except (ValueError, OverflowError) as exc:
                raise ProtocolError(f"server optimizer state {name}: {exc}") from None
        return cls(t=doc["t"], m=arrays["m"], v=arrays["v"])


def initial_state(settings: ServerSettings, n_params: int) -> ServerState:
    """The state before the first step: m = 0, v = tau^2 (Reddi's v_{-1} >= tau^2)."""
    if settings.optimizer == "fedavg":
        return ServerState()
    m = np.zeros(n_params, dtype=np.float64)
    if settings.optimizer == "fedavgm":
        return ServerState(m=m)
    return ServerState(m=m, v=np.full(n_params, settings.tau * settings.tau, dtype=np.float64))


def server_step(settings: ServerSettings, state: ServerState, params: FloatArray,
                avg_delta: FloatArray) -> tuple[FloatArray, ServerState]:
    """One server step: the new global parameters and the optimizer's new state.

    ``fedavg``: params + server_lr * avg_delta (exactly params + avg_delta at the default
    server_lr 1, today's step). A state of another length than ``params`` (or an empty
    one) starts from ``initial_state``.
    """
    params = np.asarray(params, dtype=np.float64)
    delta = np.asarray(avg_delta, dtype=np.float64)
    if params.shape != delta.shape or params.ndim != 1:
        raise ValueError(f"params {params.shape} and avg_delta {delta.shape} must be "
                         "1-d of one length")
    lr, kind = settings.server_lr, settings.optimizer
    if kind == "fedavg":
        return params + lr * delta, ServerState(t=state.t + 1)
    if state.n_params != params.shape[0] or (kind in ADAPTIVE) != (state.v is not None):
        state = replace_moments(initial_state(settings, params.shape[0]), state.t)
    assert state.m is not None
    if kind == "fedavgm":
        m = settings.momentum * state.m + delta
        return params + lr * m, ServerState(t=state.t + 1, m=m)
    assert state.v is not None
    b1, b2 = settings.beta1, settings.beta2
    m = b1 * state.m + (1.0 - b1) * delta
    square = delta * delta
    if kind == "fedadagrad":
        v = state.v + square
    elif kind == "fedadam":
        v = b2 * state.v + (1.0 - b2) * square
    else:  # fedyogi: v moves towards delta^2 by at most (1 - beta2) delta^2 a step
        v = state.v - (1.0 - b2) * square * np.sign(state.v - square)
    return params + lr * m / (np.sqrt(v) + settings.tau), ServerState(t=state.t + 1, m=m, v=v)


def replace_moments(fresh: ServerState, t: int) -> ServerState:
    """``fresh``'s moments with step count ``t`` kept (the count is only bookkeeping)."""
    return ServerState(t=t, m=fresh.m, v=fresh.v)


def state_matches(settings: ServerSettings, state: ServerState, n_params: int) -> str | None:
    """Why ``state`` cannot continue under ``settings`` for ``n_params`` parameters, or None."""
    kind = settings.optimizer
    if kind == "fedavg":
        return None
    if state.m is None:
        return None if state.t == 0 else f"it holds no moments for {kind}"
    if state.n_params != n_params:
        return f"its moments have {state.n_params} values, the model {n_params}"
    if (kind in ADAPTIVE) != (state.v is not None):
        return f"its moments are not those of {kind}"
    return None
