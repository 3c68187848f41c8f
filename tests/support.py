"""Helpers for tests (importable as ``support``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.aggregator.rounds import RoundState
from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.data import LocalData
from fedmq.models import ModelSpec
from fedmq.protocol.attestation import Attestation, Statement, ciphertext_hash
from fedmq.protocol.crypto.codec import CodecParams, make_codec
from fedmq.protocol.crypto.paillier import ciphertexts_to_bytes, encrypt_ints, fingerprint
from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer
from fedmq.protocol.layout import Section, UpdateLayout, contract_digest
from fedmq.protocol.messages import RoundMessage, TrainingSettings
from fedmq.protocol.partial import PartialSum
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttSettings

FEATURES = ("x1", "x2", "x3")
SPEC = ModelSpec(kind="logistic", features=FEATURES, n_classes=2,
                 center=(0.5, -1.0, 0.0), scale=(1.0, 2.0, 0.5))


def spec_toml(spec: ModelSpec = SPEC) -> str:
    """The ``[model]`` table of an aggregator config for ``spec``."""
    d = spec.to_dict()
    return (f'[model]\nkind = "{d["kind"]}"\nfeatures = {list(d["features"])!r}\n'
            f'n_classes = {d["n_classes"]}\ncenter = {list(d["center"])!r}\n'
            f'scale = {list(d["scale"])!r}\n').replace("'", '"')


def announcement(round_id: int, *, run_id: str = "r1", issued_at: float = 1.0,
                 state: str = "training", spec: ModelSpec = SPEC) -> RoundMessage:
    """A round announcement as an agent receives it (unsigned: for the pure parts)."""
    return RoundMessage(fleet="f", round_id=round_id, model_version=round_id, state=state,
                        spec=spec, params=tuple(np.zeros(spec.n_params)), deadline=0.0,
                        settings=TrainingSettings(), key_fingerprint="k" * 64,
                        codec_digest="d" * 32, run_id=run_id, issued_at=issued_at)


def local_data(seed: int, n: int) -> LocalData:
    """A small, learnable, device-specific classification set."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))) * (1.0, 2.0, 0.5) + (0.5 + 0.2 * seed, -1.0, 0.0)
    logits = 1.5 * X[:, 0] - 0.7 * X[:, 1] + 2.0 * X[:, 2] - 0.3
    y = (logits + rng.normal(scale=0.5, size=n) > 0).astype(np.float64)
    return LocalData(X=X, y=y, features=FEATURES, label="y")


AGGREGATOR_SIGNER = Signer.from_seed(b"test-aggregator")
KEY_DIR = Path(tempfile.mkdtemp(prefix="fedmq-test-keys-"))


def signer_for(agent_id: str) -> Signer:
    """Each test agent's Ed25519 key, derived from its id (tests only)."""
    return Signer.from_seed(b"test-agent:" + agent_id.encode())


class EnrolledFleet(Mapping[str, Ed25519PublicKey]):
    """An allow-list holding every agent id with its derived key, except 'unenrolled-*'."""

    def __getitem__(self, agent_id: str) -> Ed25519PublicKey:
        if agent_id.startswith("unenrolled"):
            raise KeyError(agent_id)
        return signer_for(agent_id).public_key

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def agent_config(port: int, agent_id: str, **extra: Any) -> AgentConfig:
    key_file = KEY_DIR / f"{agent_id}.key"
    if not key_file.exists():
        key_file.write_bytes(signer_for(agent_id).to_pem())
        key_file.chmod(0o600)
    return AgentConfig(agent_id=agent_id, topics=Topics("test"), data_path="unused",
                       features=FEATURES, label="y", mqtt=MqttSettings(port=port), seed=1,
                       signing_key_file=str(key_file), **extra)


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``target`` on a thread, keeping its return value or exception."""
    out: dict[str, Any] = {}

    def wrapper() -> None:
        try:
            out["result"] = target()
        except BaseException as exc:  # surfaced by the test, not swallowed
            out["error"] = exc

    thread = threading.Thread(target=wrapper, daemon=True)
    thread.start()
    return thread, out


def wait_until(ready: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll ``ready`` until it returns something truthy (returned); fail after ``timeout``."""
    end = time.monotonic() + timeout
    while not (value := ready()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return value


def fedmq_process(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m fedmq ARGS`` as a real process, output appended to ``log``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fedmq", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def agent_process(tmp_path: Path, port: int, agent_id: str, seed: int, *, straggle: float,
                  n_samples: int = 60) -> subprocess.Popen[bytes]:
    """An enrolled agent as a real process: its CSV, key and TOML written to ``tmp_path``;
    its output goes to ``tmp_path/<agent_id>.log``."""
    data = local_data(seed, n_samples)
    csv_path = tmp_path / f"{agent_id}.csv"
    np.savetxt(csv_path, np.column_stack([data.X, data.y]), delimiter=",",
               header=",".join((*FEATURES, "y")), comments="")
    key_file = tmp_path / f"{agent_id}.key"
    key_file.write_bytes(signer_for(agent_id).to_pem())
    config = tmp_path / f"{agent_id}.toml"
    config.write_text(f"""
[agent]
id = "{agent_id}"
signing_key_file = "{key_file}"
[fleet]
name = "test"
[mqtt]
port = {port}
[data]
path = "{csv_path}"
features = {list(FEATURES)!r}
label = "y"
[simulation]
straggle_seconds = {straggle}
""".replace("'", '"'))
    return fedmq_process("agent", "--config", str(config), log=tmp_path / f"{agent_id}.log")


def training_sections(values: list[int], spec: ModelSpec = SPEC) -> list[list[int]]:
    """A training update's sections as an agent makes them: ``values`` (weighted delta and
    weight, from quantize_update) and an evaluation of one row (class 0, predicted 0)."""
    from fedmq.protocol.sums.evaluation import eval_length

    evaluation = [0] * eval_length(spec)
    evaluation[-1] = 1  # rows
    if spec.kind == "logistic":
        evaluation[1] = 1  # confusion[0][0]
    return [values, evaluation]


def training_plaintexts(values: list[int], modulus: int, codec: Any,
                        spec: ModelSpec = SPEC) -> tuple[list[int], int]:
    """(plaintexts, n_values) of a training update with ``values`` under ``codec``."""
    from fedmq.protocol.layout import layout_for
    from fedmq.protocol.sums.statistics import StatsParams

    layout = layout_for("training", spec, codec, StatsParams(), modulus)
    return layout.encode(training_sections(values, spec)), layout.n_values


# A relay's partial sums (protocol.partial): its key and its devices' keys.
PARTIAL_RELAY = Signer.from_seed(b"partial-relay")
PARTIAL_DEVICES = {d: Signer.from_seed(d.encode()) for d in ("d1", "d2", "d3")}
PARTIAL_KEYS = {d: s.public_key for d, s in PARTIAL_DEVICES.items()}


def make_partial(pub: Any, devices: tuple[str, ...] = ("d1", "d2"), *, attest_round: int = 4,
                 signers: dict[str, Signer] | None = None) -> PartialSum:
    """A relay's partial sum of ``devices`` for round 4 of run r1 of fleet f, attested."""
    ciphertexts = tuple(encrypt_ints(pub, [1, 2, 3]))  # stands for the devices' product
    digest = ciphertext_hash(ciphertexts_to_bytes(pub, ciphertexts))
    attestations = tuple(
        Attestation(digest, Statement("f", "r1", attest_round, d, fingerprint(pub), "c" * 32,
                                      3, digest).sign((signers or PARTIAL_DEVICES)[d]))
        for d in devices)
    return PartialSum(fleet="f", run_id="r1", round_id=4, relay_id="relay-a",
                      key_fingerprint=fingerprint(pub), codec_digest="c" * 32, n_values=3,
                      ciphertexts=ciphertexts, contributors=tuple(devices),
                      attestations=attestations)


def small_round(pub: Any, *, expected: tuple[str, ...] = ("a", "b"),
                enrolled: tuple[str, ...] = ("a",), opened_at: float = 0.0) -> RoundState:
    """Round 4 of run1 (fleet "f"), open: updates of two values, the last a weight, at
    most 5 agents; ``enrolled`` signed with ``signer_for``."""
    params = CodecParams(max_agents=5)
    layout = UpdateLayout("training", (Section("training", make_codec(params, pub.n), 2,
                                               params.max_weight),))
    return RoundState(
        fleet="f", run_id="run1", round_id=4, expected=frozenset(expected), deadline=100.0,
        quorum=1, layout=layout, key_fingerprint=fingerprint(pub),
        codec_digest=contract_digest(params, StatsParams(), fingerprint(pub)),
        max_agents=params.max_agents, public_key=pub,
        allow_list={a: signer_for(a).public_key for a in enrolled}, opened_at=opened_at)
