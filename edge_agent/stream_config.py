"""``[data] source = "mqtt"``: the ``[data.stream]`` schema, checked into a StreamConfig.

Pure (no I/O): topics, the JSON path of every feature/label field, the optional time
path, the label rule, the join window, retention and what a round trains on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from msgspec import Meta

from fedmq.edge_agent.json_path import JsonPath, PathError
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.config import Table

NonEmpty = Annotated[str, Meta(min_length=1)]
MAX_FILTER_BYTES = 65535  # MQTT 3.1.1: a topic filter is a UTF-8 string of at most 65535 bytes
_RULE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(<=|>=|==|!=|<|>)\s*"
                   r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class StreamTopicTable(Table, frozen=True):
    topic: NonEmpty  # an MQTT filter: + and # allowed
    fields: dict[str, NonEmpty]  # column name -> JSON path
    time: NonEmpty | None = None  # overrides [data.stream] time for this topic


class StreamTable(Table, frozen=True):
    topics: Annotated[list[StreamTopicTable], Meta(min_length=1)]
    database: NonEmpty = "readings.sqlite3"  # relative to [agent] state_dir
    keep_rows: Annotated[int, Meta(ge=1, le=100_000_000)] = 100_000
    keep_days: Annotated[float, Meta(gt=0, le=36_500)] = 30.0
    train_on: Literal["latest", "window"] = "latest"
    train_rows: Annotated[int, Meta(ge=1)] | None = None  # latest: default keep_rows
    train_seconds: Annotated[float, Meta(gt=0)] | None = None  # window: required
    join_seconds: Annotated[float, Meta(ge=0, le=3600)] = 2.0
    time: NonEmpty | None = None  # JSON path of the reading's time (epoch s or ms)
    label_rule: NonEmpty | None = None  # "vib > 3.5": label 1 when it holds, else 0
    qos: Annotated[int, Meta(ge=0, le=1)] = 1


@dataclass(frozen=True)
class LabelRule:
    """``feature OP constant``: 1.0 when it holds, else 0.0. No eval: one comparison."""

    feature: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> LabelRule:
        m = _RULE.match(text)
        if m is None:
            raise ConfigError(f"label_rule {text!r} must be one comparison of a feature with "
                              "a number, e.g. \"vib > 3.5\" (operators < <= > >= == !=)")
        return cls(m.group(1), m.group(2), float(m.group(3)))

    def __call__(self, x: float) -> float:
        v = self.value
        holds = {"<": x < v, "<=": x <= v, ">": x > v, ">=": x >= v, "==": x == v,
                 "!=": x != v}[self.op]
        return 1.0 if holds else 0.0


@dataclass(frozen=True)
class TopicMap:
    """One subscribed topic: the columns it carries, each with its path."""

    topic: str
    fields: tuple[tuple[str, JsonPath], ...]
    time: JsonPath | None


@dataclass(frozen=True)
class StreamConfig:
    topics: tuple[TopicMap, ...]
    columns: tuple[str, ...]  # features then the label: the order of a stored row
    database: str
    keep_rows: int = 100_000
    keep_days: float = 30.0
    train_on: str = "latest"
    train_rows: int = 100_000
    train_seconds: float | None = None
    join_seconds: float = 2.0
    label_rule: LabelRule | None = None
    qos: int = 1

    def __post_init__(self) -> None:
        if self.train_on == "window" and self.train_seconds is None:
            raise ConfigError("[data.stream] train_on = \"window\" needs train_seconds")
        carried = [c for t in self.topics for c, _ in t.fields]
        needed = self.columns[:-1] if self.label_rule else self.columns
        missing = [c for c in needed if c not in carried]
        if missing:
            raise ConfigError(f"[data.stream] no topic's fields give {', '.join(missing)} "
                              "(every feature, and the label unless label_rule, needs one)")
        twice = sorted({c for c in carried if carried.count(c) > 1})
        if twice:
            raise ConfigError(f"[data.stream] {', '.join(twice)} come(s) from more than one "
                              "topic; each column from one topic only")
        stray = [c for c in carried if c not in self.columns]
        if stray:
            raise ConfigError(f"[data.stream] field(s) {', '.join(stray)} are neither a "
                              "feature nor the label")
        if self.label_rule and self.label_rule.feature not in self.columns[:-1]:
            raise ConfigError(f"[data.stream] label_rule names {self.label_rule.feature!r}, "
                              "which is not one of [data] features")
        if self.label_rule and self.columns[-1] in carried:
            raise ConfigError("[data.stream] the label comes from label_rule or from a "
                              "topic's field, not both")


def check_filter(topic: str, fleet_base: str | None) -> None:
    """ConfigError (one line) unless ``topic`` is a valid MQTT filter that cannot match
    anything under ``fleet_base`` (``<topic_prefix>/<fleet>``): paho's thread would die on
    the former, and the fleet's own messages are never readings."""
    what = f"[[data.stream.topics]] topic {topic[:60]!r}"
    if not topic or "\0" in topic or len(topic.encode("utf-8")) > MAX_FILTER_BYTES:
        raise ConfigError(f"{what} is not a valid MQTT topic filter")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ConfigError(f"{what}: '#' must be a whole level and the last one "
                              "(e.g. \"zigbee2mqtt/#\")")
        if "+" in level and level != "+":
            raise ConfigError(f"{what}: '+' must be a whole level (e.g. \"shellies/+/status\")")
    if fleet_base is None:
        return
    for i, part in enumerate(fleet_base.split("/")):
        if i >= len(levels) or levels[i] not in ("+", "#", part):
            return  # differs from the fleet's prefix somewhere: cannot match under it
        if levels[i] == "#":
            break
    raise ConfigError(f"{what} matches the fleet's own topics under {fleet_base}/: stream "
                      "topics must be the sensors' topics, never the fleet's")


def stream_config(table: StreamTable, features: tuple[str, ...], label: str,
                  database: str, fleet_base: str | None = None) -> StreamConfig:
    """Check ``[data.stream]`` against ``[data] features``/``label``; ConfigError names the
    key. ``database``: the resolved path of the store; ``fleet_base``: the fleet's topic
    prefix (``Topics.base``), which no stream topic may match."""
    for entry in table.topics:
        check_filter(entry.topic, fleet_base)
    try:
        default_time = JsonPath.parse(table.time) if table.time else None
        topics = tuple(
            TopicMap(t.topic, tuple((name, JsonPath.parse(path))
                                    for name, path in t.fields.items()),
                     JsonPath.parse(t.time) if t.time else default_time)
            for t in table.topics)
    except PathError as exc:
        raise ConfigError(f"[data.stream] {exc}") from None
    for t in topics:
        if not t.fields:
            raise ConfigError(f"[[data.stream.topics]] {t.topic!r}: fields is empty")
    rule = LabelRule.parse(table.label_rule) if table.label_rule else None
    return StreamConfig(
        topics=topics, columns=(*features, label), database=database,
        keep_rows=table.keep_rows, keep_days=table.keep_days, train_on=table.train_on,
        train_rows=min(table.train_rows or table.keep_rows, table.keep_rows),
        train_seconds=table.train_seconds, join_seconds=table.join_seconds,
        label_rule=rule, qos=table.qos)
