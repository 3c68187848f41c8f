"""The ``[predictions]`` table of agent.toml: where local predictions go, checked to stay local."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from msgspec import Meta

from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics
from fedmq.runtime.config import Table

# Home Assistant's discovery topic levels (node_id, object_id) allow only these characters.
_HA_ID = re.compile(r"[^A-Za-z0-9_-]")
MAX_TOPIC_BYTES = 65535  # MQTT 3.1.1: a topic name is a UTF-8 string of at most 65535 bytes


class PredictionsTable(Table, frozen=True):
    enabled: bool = False
    # Default "home/fedmq/<agent id>/prediction"; never under the fleet's own prefix.
    topic: Annotated[str, Meta(min_length=1)] | None = None
    retain: bool = True  # a Home Assistant sensor shows the last prediction after a restart
    qos: Literal[0, 1] = 0  # 0: a burst of readings never waits on acknowledgements
    home_assistant: bool = False  # publish an MQTT-discovery config (retained)
    discovery_prefix: Annotated[str, Meta(min_length=1)] = "homeassistant"
    device_name: Annotated[str, Meta(min_length=1)] | None = None  # default "fedmq <agent id>"
    # The newest rows of a burst that get a prediction each; older ones are counted, not sent.
    max_per_batch: Annotated[int, Meta(ge=1, le=10_000)] = 100


def check_local_topic(topic: str, topics: Topics, what: str) -> str:
    """``topic`` if the agent may publish to it on the local link, else ConfigError (one line).

    Refused: wildcards (a publish names one topic), "$" topics (the broker's own), and
    anything under the fleet's prefix ``<topic_prefix>/<fleet>``: what is published there
    would sit beside the fleet's updates, where the gateway and its ACL expect only those.
    """
    if "+" in topic or "#" in topic:
        raise ConfigError(f"{what} {topic!r} holds an MQTT wildcard (+ or #): name one topic")
    if "\0" in topic or len(topic.encode("utf-8")) > MAX_TOPIC_BYTES or not topic:
        raise ConfigError(f"{what} {topic[:40]!r} is not a valid MQTT topic name")
    if topic.startswith("$"):
        raise ConfigError(f"{what} {topic!r} starts with '$' (the broker's own topics)")
    base = topics.base
    if topic == base or topic.startswith(base + "/"):
        raise ConfigError(f"{what} {topic!r} lies under the fleet's own prefix {base}/: "
                          "predictions stay on local topics (e.g. home/fedmq/<device>/"
                          "prediction)")
    return topic


def ha_id(text: str) -> str:
    """``text`` with every character Home Assistant refuses in a topic id replaced by '_'."""
    return _HA_ID.sub("_", text)


@dataclass(frozen=True)
class PredictionSettings:
    """Validated ``[predictions]``: the topic is never on the fleet's prefix."""

    topic: str
    retain: bool = True
    qos: int = 0
    home_assistant: bool = False
    discovery_prefix: str = "homeassistant"
    device_name: str = "fedmq"
    max_per_batch: int = 100

    def __post_init__(self) -> None:
        if self.qos not in (0, 1):
            raise ConfigError("[predictions] qos must be 0 or 1")
        if not 1 <= self.max_per_batch <= 10_000:
            raise ConfigError("[predictions] max_per_batch must lie in [1, 10000]")
        if "+" in self.discovery_prefix or "#" in self.discovery_prefix \
                or self.discovery_prefix.endswith("/") or not self.discovery_prefix:
            raise ConfigError(f"[predictions] discovery_prefix {self.discovery_prefix!r} must "
                              "be a topic prefix without wildcards or a trailing '/'")

    def check_off_fleet(self, topics: Topics) -> None:
        """ConfigError unless the prediction (and discovery) topics stay off the fleet's prefix."""
        check_local_topic(self.topic, topics, "[predictions] topic")
        if self.home_assistant:
            check_local_topic(self.discovery_prefix + "/sensor", topics,
                              "[predictions] discovery_prefix")


def prediction_settings(table: PredictionsTable, topics: Topics,
                        agent_id: str) -> PredictionSettings | None:
    """The settings the agent predicts with; None when ``enabled = false``."""
    if not table.enabled:
        return None
    settings = PredictionSettings(
        topic=table.topic or f"home/fedmq/{agent_id}/prediction", retain=table.retain,
        qos=table.qos, home_assistant=table.home_assistant,
        discovery_prefix=table.discovery_prefix,
        device_name=table.device_name or f"fedmq {agent_id}", max_per_batch=table.max_per_batch)
    settings.check_off_fleet(topics)
    return settings
