"""Server optimizers against their update rules, written out here coordinate by coordinate,
and their state surviving a restart bit for bit (aggregator.server_opt, aggregator.optstate)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from fedmq.aggregator.optstate import FILE, ServerOptimizer
from fedmq.aggregator.server_opt import ServerState, initial_state, server_step
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.server import OPTIMIZERS, ServerSettings

SETTINGS = dict(server_lr=0.3, momentum=0.7, beta1=0.85, beta2=0.95, tau=0.02)


def reference(optimizer: str, w0: list[float], deltas: list[list[float]],
              s: dict[str, float]) -> list[float]:
    """Reddi et al. 2021, Algorithm 2 (and server momentum), one coordinate at a time in
    plain Python floats: m_{-1} = 0, v_{-1} = tau^2, no bias correction."""
    w = [float(x) for x in w0]
    deltas = [[float(x) for x in d] for d in deltas]
    m = [0.0] * len(w)
    v = [s["tau"] ** 2] * len(w)
    for d in deltas:
        for i, di in enumerate(d):
            if optimizer == "fedavg":
                w[i] += s["server_lr"] * di
                continue
            if optimizer == "fedavgm":
                m[i] = s["momentum"] * m[i] + di
                w[i] += s["server_lr"] * m[i]
                continue
            m[i] = s["beta1"] * m[i] + (1 - s["beta1"]) * di
            if optimizer == "fedadagrad":
                v[i] = v[i] + di * di
            elif optimizer == "fedadam":
                v[i] = s["beta2"] * v[i] + (1 - s["beta2"]) * di * di
            else:  # fedyogi
                sign = (v[i] > di * di) - (v[i] < di * di)
                v[i] = v[i] - (1 - s["beta2"]) * di * di * sign
            w[i] += s["server_lr"] * m[i] / (math.sqrt(v[i]) + s["tau"])
    return w


def synthetic(steps: int = 8, n: int = 5, seed: int = 3) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    # Shrinking deltas of mixed sign and scale, like a run converging; one coordinate
    # flips sign each step (where momentum and Yogi's sign matter).
    deltas = [rng.normal(0, 1, n) * np.array([1, 0.1, 10, 1e-3, 1]) / (1 + k)
              for k in range(steps)]
    for k, d in enumerate(deltas):
        d[4] = (-1) ** k * 0.5
    return rng.normal(0, 1, n), deltas


def run(settings: ServerSettings, w: np.ndarray, deltas: list[np.ndarray]
        ) -> tuple[np.ndarray, ServerState]:
    state = initial_state(settings, len(w))
    for d in deltas:
        w, state = server_step(settings, state, w, d)
    return w, state


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_follows_its_update_rule(optimizer):
    settings = ServerSettings(optimizer=optimizer, **SETTINGS)
    w0, deltas = synthetic()
    got, state = run(settings, w0, deltas)
    want = reference(optimizer, list(w0), [list(d) for d in deltas], SETTINGS)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert state.t == len(deltas)
    # Not a rule that happens to equal another: each ends elsewhere than plain FedAvg.
    if optimizer != "fedavg":
        plain = reference("fedavg", list(w0), [list(d) for d in deltas], SETTINGS)
        assert not np.allclose(got, plain, rtol=1e-3)


def test_fedavg_is_exactly_params_plus_the_average_delta():
    w0, deltas = synthetic()
    w, state = w0, ServerState()
    for d in deltas:
        expected = w + d
        w, state = server_step(ServerSettings(), state, w, d)
        assert w.tobytes() == expected.tobytes()  # bit for bit today's step
    assert state.m is None and state.v is None


def test_the_first_adaptive_step_moves_about_server_lr_per_coordinate():
    # Why no bias correction is needed: with v_{-1} = tau^2 small against delta^2 the
    # step is server_lr * (1 - beta1) / sqrt(1 - beta2) * sign(delta), for every scale.
    settings = ServerSettings(optimizer="fedadam", server_lr=0.1, tau=1e-9)
    delta = np.array([1e-4, -3.0, 250.0])
    w, _ = server_step(settings, initial_state(settings, 3), np.zeros(3), delta)
    np.testing.assert_allclose(w, 0.1 * 0.1 / math.sqrt(0.01) * np.sign(delta), rtol=1e-4)


def test_state_round_trips_exactly_through_its_dict():
    settings = ServerSettings(optimizer="fedyogi", **SETTINGS)
    _, state = run(settings, *synthetic())
    back = ServerState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert back.equals(state) and back.t == state.t
    assert np.array_equal(back.m, state.m) and np.array_equal(back.v, state.v)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_restart_continues_bit_for_bit(tmp_path, optimizer):
    settings = ServerSettings(optimizer=optimizer, **SETTINGS)
    w0, deltas = synthetic(steps=10)
    straight = ServerOptimizer(settings, len(w0))
    straight.resume(tmp_path / "a", 0)
    (tmp_path / "a").mkdir()
    w_straight = w0
    for version, d in enumerate(deltas):
        w_straight = straight.step(w_straight, d, version)

    (tmp_path / "b").mkdir()
    first = ServerOptimizer(settings, len(w0))
    first.resume(tmp_path / "b", 0)
    w = w0
    for version, d in enumerate(deltas[:4]):
        w = first.step(w, d, version)
    # "Crash" after the optimizer wrote version 5's state but before the model file was
    # saved: the model is at version 4, the round is reopened and closed again.
    first.step(w, deltas[4], 4)
    restarted = ServerOptimizer(settings, len(w0))
    restarted.resume(tmp_path / "b", 4)
    for version, d in enumerate(deltas[4:7], start=4):
        w = restarted.step(w, d, version)
    # And a clean restart at a round boundary.
    again = ServerOptimizer(settings, len(w0))
    again.resume(tmp_path / "b", 7)
    for version, d in enumerate(deltas[7:], start=7):
        w = again.step(w, d, version)
    assert w.tobytes() == w_straight.tobytes() and np.array_equal(w, w_straight)
    assert again.state.equals(straight.state)


def test_a_corrupt_or_wrong_state_file_stops_the_start_with_one_line(tmp_path):
    settings = ServerSettings(optimizer="fedadam")
    opt = ServerOptimizer(settings, 3)
    opt.resume(tmp_path, 0)
    opt.step(np.zeros(3), np.ones(3), 0)
    path = tmp_path / FILE
    good = path.read_text()
    for text, why in [
        ("{not json", "Expecting property name"),
        (json.dumps({"schema": "other"}), "not a fedmq.server-opt/1 file"),
        (good.replace('"t": 1', '"t": "one"'), "integer t"),
        (good.replace("0x", "zz"), "invalid hexadecimal"),
        (good.replace('"0x1.9999999999998p-4"', '"0x1p99999"', 1), "too large"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            ServerOptimizer(settings, 3).resume(tmp_path, 1)
        message = str(err.value)
        assert message.startswith(f"cannot resume from {path}: ") and why in message
        assert "[output] resume = false" in message and "\n" not in message
    path.write_text(good)
    with pytest.raises(ConfigError, match=r"after model version\(s\) 1, not 2"):
        ServerOptimizer(settings, 3).resume(tmp_path, 2)  # the model is ahead of the state
    with pytest.raises(ConfigError, match="its moments have 3 values, the model 4"):
        ServerOptimizer(settings, 4).resume(tmp_path, 1)


def test_another_optimizer_in_the_config_starts_its_moments_afresh(tmp_path, caplog):
    opt = ServerOptimizer(ServerSettings(optimizer="fedavgm"), 2)
    opt.resume(tmp_path, 0)
    w = opt.step(np.zeros(2), np.ones(2), 0)
    adam = ServerSettings(optimizer="fedadam")
    resumed = ServerOptimizer(adam, 2)
    with caplog.at_level(logging.WARNING):
        resumed.resume(tmp_path, 1)
    assert ("run stepped with server optimizer fedavgm until model version 1; [server] now "
            "says fedadam: it starts from fresh moments") in caplog.text
    assert resumed.state.equals(ServerState(t=1, m=np.zeros(2), v=np.full(2, 1e-6)))
    resumed.step(w, np.ones(2), 1)
    # fedavg runs from before [server] existed have no file: a new optimizer starts afresh.
    fresh = ServerOptimizer(adam, 2)
    with caplog.at_level(logging.WARNING):
        fresh.resume(tmp_path / "older-run", 5)
    assert "no server optimizer state (the run stepped with fedavg so far)" in caplog.text
