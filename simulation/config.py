"""Schema of simulate.toml's ``[simulate]`` table, also applied to the command-line flags.

``fedmq simulate --agents 0`` and ``agents = "5"`` in the file get the same typed
check and one line each: ``--agents: expected int >= 1, got 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from msgspec import Meta
from msgspec.structs import fields

from fedmq.protocol.errors import ConfigError
from fedmq.runtime.config import Table, convert, load_toml, resolve
from fedmq.simulation.privacy import FLAGS as PRIVACY_FLAGS
from fedmq.simulation.synthetic import MAX_SPARE_SENSORS, MIN_SAMPLES

SCALINGS = ("federated", "datasheet")  # see SimulationOptions.scaling
AtLeastOne = Annotated[int, Meta(ge=1)]
Positive = Annotated[float, Meta(gt=0)]


class SimulateTable(Table, frozen=True):
    """``[simulate]``: defaults are those of fedmq.simulation.options.SimulationOptions."""

    agents: Annotated[int, Meta(ge=1, le=100_000)] = 20
    rounds: AtLeastOne = 10
    iid: bool = False
    task: Literal["fault", "fault_type", "next_temperature"] = "fault"  # TASKS (test checks)
    samples_per_device: Annotated[int, Meta(ge=MIN_SAMPLES)] = 400
    spare_sensors: Annotated[int, Meta(ge=0, le=MAX_SPARE_SENSORS)] = 0  # d = 4 + K (+ 1)
    key_bits: Annotated[int, Meta(ge=512, le=8192)] = 2048
    epochs: AtLeastOne = 2
    batch_size: AtLeastOne = 16
    learning_rate: Positive = 0.1
    l2: Annotated[float, Meta(ge=0)] = 0.0
    # The aggregator's [server] optimizer (fedmq.protocol.server.OPTIMIZERS; a test checks).
    server_optimizer: Literal["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"] = "fedavg"
    # Unset: 1.0, or for an adaptive optimizer the 0.2 fedmq init writes (protocol.server).
    server_lr: Positive | None = None
    server_momentum: Annotated[float, Meta(ge=0, lt=1)] = 0.9  # [server] momentum (fedavgm)
    # Personal models on the devices (aggregator.toml's [training] personal).
    personal: Literal["none", "finetune", "ditto", "intercept"] = "none"
    prox_mu: Annotated[float, Meta(ge=0)] = 0.0  # aggregator.toml's [training] keys
    augment: Literal["none", "oversample", "jitter", "oversample+jitter"] = "none"
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.05
    distill_weight: Annotated[float, Meta(ge=0)] = 0.0
    distill_temperature: Positive = 1.0
    round_timeout: Positive = 20.0
    quorum_fraction: Annotated[float, Meta(gt=0, le=1)] = 0.5
    kill: Annotated[int, Meta(ge=0)] = 0
    kill_after_round: Annotated[int, Meta(ge=0)] = 1
    seed: Annotated[int, Meta(ge=0)] = 0
    out_dir: Annotated[str, Meta(min_length=1)] = "runs"  # relative to the file
    plot: bool = True
    reuse_key: bool = False
    # SCALINGS (a test checks); unset: federated, or datasheet with differential privacy
    scaling: Literal["federated", "datasheet"] | None = None
    # Worker processes for the agents (0: threads of the main process); the CLI's
    # default is os.cpu_count(). broker: embedded, mosquitto or HOST:PORT.
    workers: Annotated[int, Meta(ge=0, le=1024)] = 0
    broker: Annotated[str, Meta(min_length=1)] = "embedded"
    connect_spread: Annotated[float, Meta(ge=0, le=3600)] | None = None  # None: 5 ms/agent
    # Differential privacy (aggregator.toml's [privacy]): device level, sample level.
    dp_epsilon: Positive | None = None
    dp_delta: Annotated[float, Meta(gt=0, lt=1)] = 1e-5
    dp_clip: Positive = 0.5
    dp_noise: Annotated[float, Meta(ge=0)] = 0.0  # 0: calibrated to dp_epsilon
    dp_sample_epsilon: Positive | None = None
    dp_sample_clip: Positive = 1.0
    trustees: Annotated[int, Meta(ge=0, le=16)] = 0
    threshold: Annotated[int, Meta(ge=0, le=16)] = 0
    stream: bool = False  # the devices publish their readings over MQTT
    stream_rate: Positive = 200.0  # readings per second per device


class SimulateFile(Table, frozen=True):
    """Schema of simulate.toml."""

    simulate: SimulateTable = SimulateTable()


# Option name -> the `fedmq simulate` flag that sets it, for error messages.
FLAGS = {"samples_per_device": "--samples", "learning_rate": "--lr", "out_dir": "--out",
         "quorum_fraction": "--quorum", "plot": "--no-plot", **PRIVACY_FLAGS}


def flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def file_options(config: str | Path) -> dict[str, Any]:
    """The options a simulate.toml sets (only those), checked; out_dir relative to it."""
    doc = load_toml(config)
    convert(doc, SimulateFile, source=str(config))
    table = dict(doc.get("simulate", {}))
    if "out_dir" in table:
        table["out_dir"] = resolve(Path(config).resolve().parent, table["out_dir"])
    return table


def check_flags(overrides: Mapping[str, Any]) -> None:
    """Each command-line value passes the same schema as the file's, else one line."""
    known = {f.name for f in fields(SimulateTable)}
    source = "command line"
    for key, value in overrides.items():
        if key not in known:
            continue  # an option the schema does not cover: SimulationOptions checks it
        try:
            convert({"simulate": {key: value}}, SimulateFile, source=source)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(f"{source}: [simulate] {key}:",
                                               f"{flag(key)}:", 1)) from None
