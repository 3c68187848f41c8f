"""fedmq predict: the rows the agent would publish, equal to model.predict on a CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fedmq.cli import main
from fedmq.models import ModelSpec, make_model
from fedmq.runtime.files import save_model

FEATURES = ("vibration_rms", "temperature_c", "current_a")
CENTER, SCALE = (1.0, 60.0, 5.0), (0.5, 10.0, 2.0)


@pytest.fixture(params=[("logistic", 3), ("linear", 0)], ids=["softmax", "linear"])
def saved(request, tmp_path):
    kind, k = request.param
    spec = ModelSpec(kind=kind, features=FEATURES, n_classes=k, center=CENTER, scale=SCALE)
    params = np.random.default_rng(3).normal(size=spec.n_params)
    path = tmp_path / "global_model.npz"
    save_model(path, spec, params, metadata={"model_version": 7, "run_id": "run-a"})
    rng = np.random.default_rng(4)
    X = np.asarray(CENTER) + rng.normal(size=(25, 3)) * np.asarray(SCALE)
    return make_model(spec).set_params_vector(params), path, X


def write_csv(path: Path, X: np.ndarray, *, timestamps: bool) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        # Another column order than the model's, and a label the predictions ignore.
        w.writerow([*(["timestamp"] if timestamps else []), "fault", *reversed(FEATURES)])
        for i, row in enumerate(X):
            w.writerow([*([1_700_000_000 + i] if timestamps else []), 0,
                        *map(repr, reversed(row.tolist()))])
    return path


def test_json_rows_equal_model_predict(saved, tmp_path, capsys):
    model, path, X = saved
    data = write_csv(tmp_path / "x.csv", X, timestamps=True)
    assert main(["predict", "--model", str(path), "--data", str(data), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(X)
    assert [r["prediction"] for r in rows] == model.predict(X).tolist()
    assert [r["ts"] for r in rows] == [1_700_000_000.0 + i for i in range(len(X))]
    assert {(r["model"], r["run"], r["version"]) for r in rows} == {("global", "run-a", 7)}
    if model.spec.kind == "logistic":
        proba = [[r["probabilities"][str(c)] for c in range(3)] for r in rows]
        assert proba == model.predict_proba(X).tolist()
    else:
        assert [r["value"] for r in rows] == model.predict(X).tolist()


def test_csv_output_file(saved, tmp_path, capsys):
    model, path, X = saved
    data = write_csv(tmp_path / "x.csv", X, timestamps=False)
    out = tmp_path / "out" / "preds.csv"
    assert main(["predict", "--model", str(path), "--data", str(data), "--out", str(out)]) == 0
    assert f"{len(X)} predictions" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert [int(r["row"]) for r in rows] == list(range(1, len(X) + 1))
    assert "ts" not in rows[0]
    if model.spec.kind == "logistic":
        assert [int(r["prediction"]) for r in rows] == model.predict(X).tolist()
        assert [float(r["p_2"]) for r in rows] == model.predict_proba(X)[:, 2].tolist()
    else:
        assert [float(r["value"]) for r in rows] == model.predict(X).tolist()


def test_bad_inputs_give_one_line(saved, tmp_path, capsys):
    _model, path, X = saved
    good = write_csv(tmp_path / "x.csv", X, timestamps=False)
    lacking = tmp_path / "lacking.csv"
    lacking.write_text("vibration_rms,current_a\n1.0,2.0\n")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    for argv, match in [
        (["--model", str(junk), "--data", str(good)], "junk.npz"),
        (["--model", str(path), "--data", str(lacking)], "lacks column(s) temperature_c"),
        (["--model", str(path), "--data", str(tmp_path / "no.csv")], "no.csv not found"),
    ]:
        assert main(["predict", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fedmq: error:") and match in err[0], err


def test_publish_sends_the_rows_to_the_local_prediction_topic(saved, tmp_path, capsys):
    from mqtt_support import Probe
    from support import wait_until

    from fedmq.broker.config import BrokerSettings
    from fedmq.broker.embedded import EmbeddedBroker, free_port

    model, path, X = saved
    data = write_csv(tmp_path / "x.csv", X, timestamps=True)
    local, fleet = free_port(), free_port()
    config = tmp_path / "agent.toml"
    config.write_text(f"[agent]\nid = 'pi-1'\n[fleet]\nname = 'plant'\n[mqtt]\nport = {fleet}\n"
                      f"[local]\nport = {local}\n[data]\npath = 'x.csv'\n"
                      f"features = {list(FEATURES)!r}\nlabel = 'fault'\n"
                      "[predictions]\nenabled = true\nretain = false\n".replace("'", '"'))
    argv = ["predict", "--model", str(path), "--data", str(data), "--publish"]
    with EmbeddedBroker(BrokerSettings(port=local)):
        home = Probe(local, "home")
        assert home.connect() and home.subscribe("#")
        assert main([*argv, "--config", str(config)]) == 0
        topic = "home/fedmq/pi-1/prediction"
        got = wait_until(lambda: len(home.got(topic)) == len(X) and home.got(topic), "rows")
        home.close()
    docs = [json.loads(p) for p in got]
    assert [d["prediction"] for d in docs] == model.predict(X).tolist()
    assert {(d["device"], d["fleet"], d["version"]) for d in docs} == {("pi-1", "plant", 7)}
    assert f"{len(X)} of {len(X)} predictions" in capsys.readouterr().out
    assert main(argv) == 2  # without --config: one line
    assert "--publish needs --config" in capsys.readouterr().err
