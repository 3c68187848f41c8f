from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from support import FEATURES, SPEC, announcement

from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.prediction_settings import PredictionSettings, check_local_topic
from fedmq.edge_agent.predictions import PERSONAL_MODEL, Predictor, discovery_config
from fedmq.models import ModelSpec, make_model
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics
from fedmq.runtime.files import save_model

SETTINGS = PredictionSettings(topic="home/fedmq/pi-1/prediction")
BASE = "[agent]\nid='pi-1'\n[data]\npath='d.csv'\nfeatures=['a']\nlabel='y'\n"


class Sent(list[tuple[str, dict, bool]]):
    """What a Predictor handed to its publish callable (the link itself is tested with a
    real broker in test_local_predictions.py)."""

    def __call__(self, topic: str, payload: bytes, retain: bool) -> bool:
        self.append((topic, json.loads(payload), retain))
        return True


def model_round(version: int, *, run_id: str = "r1", spec: ModelSpec = SPEC, seed: int = 0):
    params = np.random.default_rng(seed).normal(size=spec.n_params)
    return replace(announcement(max(version, 1), run_id=run_id, spec=spec),
                   model_version=version, params=tuple(params))


def predictor(tmp_path: Path | None = None, **settings) -> tuple[Predictor, Sent]:
    sent = Sent()
    return Predictor(replace(SETTINGS, **settings), sent, agent_id="pi-1", fleet="f",
                     state_dir=str(tmp_path) if tmp_path else None, clock=lambda: 123.0), sent


def rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(FEATURES)))


def test_predictions_equal_the_model_and_name_its_version():
    p, sent = predictor()
    msg = model_round(3)
    assert p.on_round(msg)
    X = rows(5)
    assert p.on_rows(X, np.arange(5.0)) == 5
    model = make_model(SPEC).set_params_vector(msg.params_array)
    proba, labels = model.predict_proba(X), model.predict(X)
    assert [t for t, _, _ in sent] == [SETTINGS.topic] * 5
    for i, (_, doc, retain) in enumerate(sent):
        assert retain is True
        assert doc["prediction"] == labels[i] and doc["ts"] == float(i)
        assert [doc["probabilities"][c] for c in ("0", "1")] == list(proba[i])
        assert (doc["model"], doc["run"], doc["version"], doc["fleet"]) == ("global", "r1",
                                                                           3, "f")


def test_regression_publishes_the_value():
    spec = ModelSpec(kind="linear", features=FEATURES)
    p, sent = predictor()
    msg = model_round(1, spec=spec)
    p.on_round(msg)
    X = rows(3)
    p.on_rows(X)
    expected = make_model(spec).set_params_vector(msg.params_array).predict(X)
    assert [d["value"] for _, d, _ in sent] == list(expected)
    assert [d["prediction"] for _, d, _ in sent] == list(expected)
    assert all("probabilities" not in d and d["ts"] == 123.0 for _, d, _ in sent)


def test_nothing_is_published_before_the_first_model():
    p, sent = predictor()
    assert p.on_rows(rows(4)) == 0 and p.unmodelled == 4
    # Version 0 is a run's starting point, a statistics round has no model either.
    assert not p.on_round(model_round(0))
    assert p.on_rows(rows(2)) == 0 and sent == [] and p.unmodelled == 6


def test_a_new_model_repredicts_the_latest_reading_with_its_version():
    p, sent = predictor()
    p.on_rows(rows(3))  # before any model: remembered, not published
    assert p.on_round(model_round(1)) and [d["version"] for _, d, _ in sent] == [1]
    assert not p.on_round(model_round(1))  # the retained copy again: nothing new
    assert p.on_round(model_round(2, seed=5)) and [d["version"] for _, d, _ in sent] == [1, 2]
    latest = rows(3)[-1:]
    model = make_model(SPEC).set_params_vector(model_round(2, seed=5).params_array)
    assert sent[-1][1]["prediction"] == model.predict(latest)[0]
    # A new run starting at version 0 keeps the last trained model.
    assert not p.on_round(model_round(0, run_id="r2"))
    assert p.active is not None and p.active.version == 2


def test_a_burst_keeps_its_newest_rows_and_skips_bad_ones():
    p, sent = predictor(max_per_batch=3)
    p.on_round(model_round(1))
    X = rows(6)
    X[4, 1] = np.nan
    assert p.on_rows(X, np.arange(6.0)) == 2
    assert [d["ts"] for _, d, _ in sent] == [3.0, 5.0] and p.dropped == 4


def test_a_failing_local_link_never_raises(caplog):
    def broken(topic: str, payload: bytes, retain: bool) -> bool:
        raise OSError("broker gone")

    p = Predictor(SETTINGS, broken, agent_id="pi-1", fleet="f")
    p.on_round(model_round(1))
    with caplog.at_level(logging.WARNING):
        assert p.on_rows(rows(4)) == 0
    assert p.failed == 4 and len(caplog.records) == 3  # 1st, 2nd, 4th: rate-limited


def test_the_personal_model_is_used_when_it_fits(tmp_path, caplog):
    p, sent = predictor(tmp_path)
    p.on_round(model_round(4))
    personal = np.random.default_rng(9).normal(size=SPEC.n_params)
    save_model(tmp_path / PERSONAL_MODEL, replace(SPEC, center=(0.0, 0.0, 0.0)), personal)
    X = rows(2)
    p.on_rows(X)
    expected = make_model(replace(SPEC, center=(0.0, 0.0, 0.0))).set_params_vector(personal)
    assert [d["model"] for _, d, _ in sent] == ["personal"] * 2
    assert [d["probabilities"]["1"] for _, d, _ in sent] == list(expected.predict_proba(X)[:, 1])
    assert sent[0][1]["version"] == 4  # the global model it was fitted from
    # A personal model of another task (other features) is ignored with one INFO line.
    other = ModelSpec(kind="logistic", features=("a", "b", "c"), n_classes=2)
    save_model(tmp_path / PERSONAL_MODEL, other, personal, metadata={"model_version": 9})
    with caplog.at_level(logging.INFO, logger="fedmq.edge_agent.predictions"):
        p.on_rows(X)
        p.on_rows(X)
    assert [d["model"] for _, d, _ in sent[2:]] == ["global"] * 4
    assert len([r for r in caplog.records if "not derived" in r.message]) == 1
    # As i21-personal writes it: its own standardisation, derived from the fleet's spec.
    own = replace(SPEC, center=(1.0, 1.0, 1.0))
    save_model(tmp_path / PERSONAL_MODEL, own, personal,
               metadata={"base_spec": SPEC.to_dict(), "model_version": 3, "run_id": "r1"})
    p.on_rows(X)
    assert (sent[-1][1]["model"], sent[-1][1]["version"], sent[-1][1]["run"]) == (
        "personal", 3, "r1")
    # ... fitted in an earlier run (the fleet moved on, perhaps without personal models):
    # stale, though its spec is the fleet's.
    save_model(tmp_path / PERSONAL_MODEL, own, personal,
               metadata={"base_spec": SPEC.to_dict(), "model_version": 3, "run_id": "r0"})
    p.on_rows(X)
    assert (sent[-1][1]["model"], sent[-1][1]["run"]) == ("global", "r1")
    # ... derived from an earlier fleet spec (another run's statistics): the global one.
    save_model(tmp_path / PERSONAL_MODEL, own, personal,
               metadata={"base_spec": replace(SPEC, scale=(1.0, 1.0, 1.0)).to_dict()})
    p.on_rows(X)
    assert sent[-1][1]["model"] == "global"
    (tmp_path / PERSONAL_MODEL).write_bytes(b"not a model")
    with caplog.at_level(logging.WARNING):
        p.on_rows(X)
    assert sent[-1][1]["model"] == "global"
    assert any("ignoring the personal model" in r.message for r in caplog.records)


def test_home_assistant_discovery_config():
    settings = replace(SETTINGS, home_assistant=True, device_name="Kitchen Pi")
    topic, config = discovery_config(settings, agent_id="pi.1", fleet="demo")
    assert topic == "homeassistant/sensor/fedmq_demo_pi_1/prediction/config"
    levels = topic.split("/")
    assert len(levels) == 5 and all(c.isalnum() or c in "_-" for c in "".join(levels[2:4]))
    assert {"name", "unique_id", "state_topic", "value_template", "json_attributes_topic",
            "device"} <= set(config)
    assert config["state_topic"] == config["json_attributes_topic"] == SETTINGS.topic
    assert config["value_template"] == "{{ value_json.prediction }}"
    assert config["device"]["identifiers"] == ["fedmq_demo_pi_1"]
    assert config["device"]["name"] == "Kitchen Pi"
    p, sent = predictor(home_assistant=True)
    assert p.publish_discovery() and sent[0][0].endswith("/config") and sent[0][2] is True
    quiet, none = predictor()
    assert not quiet.publish_discovery() and none == []


@pytest.mark.parametrize("topic,match", [
    ("fedmq/demo/prediction", "fleet's own prefix"),
    ("fedmq/demo", "fleet's own prefix"),
    ("home/+/prediction", "wildcard"),
    ("home/#", "wildcard"),
    ("$SYS/x", "broker's own"),
])
def test_topics_on_the_fleet_prefix_or_with_wildcards_are_refused(topic, match):
    with pytest.raises(ConfigError, match=match):
        check_local_topic(topic, Topics("demo"), "[predictions] topic")
    check_local_topic("fedmq/other-fleet/x", Topics("demo"), "t")  # another fleet's: allowed
    check_local_topic("fedmq/demonstration", Topics("demo"), "t")


LOCAL = "[local]\nport = 1884\n"


def test_the_predictions_table(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text(BASE)
    assert AgentConfig.from_file(path).predictions is None  # off unless enabled
    path.write_text(BASE + LOCAL + "[predictions]\nenabled = true\nhome_assistant = true\n")
    cfg = AgentConfig.from_file(path).predictions
    assert cfg is not None and cfg.topic == "home/fedmq/pi-1/prediction"
    assert (cfg.retain, cfg.qos, cfg.discovery_prefix, cfg.device_name) == (
        True, 0, "homeassistant", "fedmq pi-1")


@pytest.mark.parametrize("extra,match", [
    ("topic = 'fedmq/demo/pi-1/prediction'", r"a.toml: \[predictions\] topic .* fleet's own"),
    ("topic = 'home/+/p'", r"a.toml: \[predictions\] topic .* wildcard"),
    ("discovery_prefix = 'fedmq/demo'\nhome_assistant = true",
     r"\[predictions\] discovery_prefix .* fleet's own"),
    ("qos = 2", r"\[predictions\] qos"),
    ("max_per_batch = 0", r"\[predictions\] max_per_batch"),
])
def test_bad_predictions_tables_give_one_line(tmp_path, extra, match):
    path = tmp_path / "a.toml"
    path.write_text(BASE + LOCAL + f"[predictions]\nenabled = true\n{extra}\n")
    with pytest.raises(ConfigError, match=match) as info:
        AgentConfig.from_file(path)
    assert "\n" not in str(info.value)


def test_a_custom_fleet_prefix_is_guarded_too(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text(BASE + "[fleet]\nname='f1'\ntopic_prefix='acme/fl'\n[predictions]\n"
                    "enabled = true\ntopic = 'acme/fl/f1/pi-1/prediction'\n")
    with pytest.raises(ConfigError, match="acme/fl/f1/"):
        AgentConfig.from_file(path)


def test_the_csv_feed_predicts_appended_rows_only(tmp_path):
    from fedmq.edge_agent.data import DataFile
    from fedmq.edge_agent.prediction_feed import CsvFeed

    path = tmp_path / "d.csv"
    X = rows(6)
    lines = [",".join((*FEATURES, "y"))] + [",".join(map(repr, [*r.tolist(), 0.0])) for r in X]
    path.write_text("\n".join(lines[:5]) + "\n")  # 4 rows
    now = [0.0]
    p, sent = predictor()
    feed = CsvFeed(p, DataFile(path, FEATURES, "y"), every=5.0, clock=lambda: now[0])
    p.on_round(model_round(1))  # the newest row at start gets the first model's prediction
    model = make_model(SPEC).set_params_vector(model_round(1).params_array)
    assert [d["prediction"] for _, d, _ in sent] == model.predict(X[3:4]).tolist()
    path.write_text("\n".join(lines) + "\n")  # a logger appended two rows
    assert feed.poll() == 0  # not due yet
    now[0] = 6.0
    assert feed.poll() == 2
    assert [d["prediction"] for _, d, _ in sent[1:]] == model.predict(X[4:6]).tolist()
    now[0] = 12.0
    assert feed.poll() == 0  # unchanged
    path.write_text("not,a,csv\n")  # broken: the round reports it, the feed waits
    now[0] = 18.0
    assert feed.poll() == 0


def test_predictions_never_reach_the_fleet_broker_by_default(tmp_path):
    """Without [local], its default (127.0.0.1:1883) is the fleet's broker here: refused."""
    path = tmp_path / "a.toml"
    path.write_text(BASE + "[predictions]\nenabled = true\n")
    with pytest.raises(ConfigError, match=r"a.toml: .*add a \[local\] table"):
        AgentConfig.from_file(path)
    # Told to: the same broker named on purpose; or the fleet's broker elsewhere.
    path.write_text(BASE + "[local]\nport = 1883\n[predictions]\nenabled = true\n")
    assert AgentConfig.from_file(path).predictions is not None
    path.write_text(BASE + "[mqtt]\nhost = 'gw.lan'\n[predictions]\nenabled = true\n")
    assert AgentConfig.from_file(path).predictions is not None
