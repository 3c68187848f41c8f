"""fedmq export / evaluate: the exported models predict what the fedmq model predicts,
and evaluate prints the metrics scikit-learn computes from the same predictions."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from fedmq.cli import main
from fedmq.models import ModelSpec, make_model
from fedmq.models.export import from_portable, predict_portable, to_portable
from fedmq.runtime.files import save_model

FEATURES = ("vibration_rms", "temperature_c", "current_a")
CENTER, SCALE = (1.0, 60.0, 5.0), (0.5, 10.0, 2.0)


def _data(kind: str, n_classes: int, n: int = 300, seed: int = 1, target=None):
    rng = np.random.default_rng(seed)
    X = np.asarray(CENTER) + rng.normal(size=(n, 3)) * np.asarray(SCALE)
    z = (X - CENTER) / SCALE
    if kind == "linear":
        y = 3.0 * z[:, 0] - 2.0 * z[:, 1] + 0.5 + rng.normal(scale=0.5, size=n)
        # A label like a bearing temperature: around 60, spread 0.5.
        return X, y if target is None else target[0] + target[1] * y / 3.6
    W = rng.normal(size=(n_classes, 3)) * 2
    return X, np.argmax(z @ W.T + rng.gumbel(size=(n, n_classes)), axis=1).astype(float)


CASES = [("logistic", 2, None), ("logistic", 3, None), ("linear", 0, None),
         ("linear", 0, (60.0, 0.5))]


@pytest.fixture(params=CASES, ids=["binary", "softmax", "linear", "linear-standardized-label"])
def trained(request, tmp_path):
    kind, k, target = request.param
    target_center, target_scale = target or (None, None)
    spec = ModelSpec(kind=kind, features=FEATURES, n_classes=k, center=CENTER, scale=SCALE,
                     target_center=target_center, target_scale=target_scale)
    X, y = _data(kind, k, target=target)
    model = make_model(spec, epochs=3, learning_rate=0.05, seed=0).fit(X, y)
    path = tmp_path / "global_model.npz"
    save_model(path, spec, model.params_)
    return spec, model, path, X, y


def _export(path: Path, fmt: str, out: Path) -> Path:
    assert main(["export", "--model", str(path), "--format", fmt, "--out", str(out)]) == 0
    return out


def test_sklearn_export_predicts_identically(trained, tmp_path):
    joblib = pytest.importorskip("joblib")
    spec, model, path, X, _ = trained
    est = joblib.load(_export(path, "sklearn", tmp_path / "m.joblib"))
    if spec.kind == "linear":
        # The estimator folds the standardization into its coefficients: same maths,
        # another rounding order.
        np.testing.assert_allclose(est.predict(X), model.predict(X), rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_array_equal(est.predict(X), model.predict(X))
        np.testing.assert_allclose(est.predict_proba(X), model.predict_proba(X), rtol=1e-12)


def test_onnx_export_predicts_within_float32_tolerance(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    spec, model, path, X, _ = trained
    out = _export(path, "onnx", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    results = session.run(None, {"input": X.astype(np.float32)})
    if spec.kind == "linear":
        np.testing.assert_allclose(results[0].ravel(), model.predict(X), rtol=1e-5, atol=1e-4)
        return
    labels, proba = results
    np.testing.assert_allclose(proba, model.predict_proba(X), atol=1e-5)
    # A label may flip only where the float64 scores tie within float32 precision.
    top2 = np.sort(model.predict_proba(X), axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    np.testing.assert_array_equal(labels[clear], model.predict(X)[clear])


def test_json_export_is_portable_and_round_trips(trained, tmp_path):
    spec, model, path, X, _ = trained
    doc = json.loads(_export(path, "json", tmp_path / "m.json").read_text())
    assert doc["schema"] == "fedmq.model-export/1"
    assert doc["features"] == list(FEATURES) and doc["center"] == list(CENTER)
    assert doc == to_portable(spec, model.params_)
    back_spec, back_params = from_portable(doc)
    if spec.target_scale is None:
        np.testing.assert_array_equal(predict_portable(doc, X), model.predict(X))
        assert back_spec == spec
        np.testing.assert_array_equal(back_params, model.params_)
        return
    # The label's standardization is folded into the coefficients: the portable recipe
    # predicts in label units, and reads back as an equivalent plain spec.
    np.testing.assert_allclose(predict_portable(doc, X), model.predict(X), rtol=1e-12)
    assert back_spec == dataclasses.replace(spec, target_center=None, target_scale=None)
    back = make_model(back_spec).set_params_vector(back_params)
    np.testing.assert_allclose(back.predict(X), model.predict(X), rtol=1e-12)


def _write_csv(path: Path, X: np.ndarray, y: np.ndarray, label: str = "target") -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        # Columns in another order than the model's, plus one it does not use.
        w.writerow(["timestamp", label, *reversed(FEATURES)])
        for i, (row, t) in enumerate(zip(X, y, strict=True)):
            w.writerow([i, repr(float(t)), *map(repr, reversed(row.tolist()))])
    return path


def _printed(out: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^([a-z_0-9 -]+): (.*)$", out, re.M))


def test_evaluate_prints_the_metrics_sklearn_computes(trained, tmp_path, capsys):
    metrics = pytest.importorskip("sklearn.metrics")
    spec, model, path, X, y = trained
    data = _write_csv(tmp_path / "test.csv", X, y)
    assert main(["evaluate", "--model", str(path), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    got = _printed(out)
    pred = model.predict(X)
    if spec.kind == "linear":
        expected = {"mse": metrics.mean_squared_error(y, pred),
                    "mae": metrics.mean_absolute_error(y, pred), "r2": metrics.r2_score(y, pred)}
    else:
        expected = {"accuracy": metrics.accuracy_score(y, pred),
                    "balanced_accuracy": metrics.balanced_accuracy_score(y, pred),
                    "log_loss": metrics.log_loss(y, model.predict_proba(X),
                                                 labels=range(spec.n_classes))}
        recalls = metrics.recall_score(y, pred, average=None)
        assert got["per-class recall"] == ", ".join(
            f"{k}: {r:.6f}" for k, r in enumerate(recalls))
        matrix = metrics.confusion_matrix(y, pred)
        rows = out.split("columns: predicted):\n")[1].splitlines()[1:]
        assert [[int(v) for v in r.split()[1:]] for r in rows] == matrix.tolist()
    for name, value in expected.items():
        assert float(got[name]) == pytest.approx(value, abs=1e-6), name
    assert got["samples"] == str(len(y))
    if spec.target_scale is not None:
        # Label units: a model trained on the standardized label still explains the
        # temperature-like label (predictions in standardized units would give R^2 << 0).
        assert float(got["r2"]) > 0.8 and float(got["mse"]) < 0.05


def one_line(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedmq: error:") and match in err[0], err


def test_bad_inputs_give_one_line(trained, tmp_path, capsys):
    spec, _model, path, X, y = trained
    good = _write_csv(tmp_path / "good.csv", X, y)
    lacking = tmp_path / "lacking.csv"
    lacking.write_text("timestamp,target,vibration_rms,current_a\n0,1,1.0,2.0\n")
    one_line(capsys, ["evaluate", "--model", str(path), "--data", str(lacking)],
             "lacks column(s) temperature_c")
    one_line(capsys, ["evaluate", "--model", str(path), "--data", str(tmp_path / "no.csv"),
                      "--label", "target"], "no.csv not found")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x00\x01PK\x03garbage")
    one_line(capsys, ["evaluate", "--model", str(path), "--data", str(binary), "--label", "x"],
             "binary.csv")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    one_line(capsys, ["evaluate", "--model", str(junk), "--data", str(good)], "junk.npz")
    one_line(capsys, ["export", "--model", str(tmp_path / "none.npz"), "--format", "json",
                      "--out", str(tmp_path / "x.json")], "none.npz")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"schema": "fedmq.model-export/9"}))
    one_line(capsys, ["evaluate", "--model", str(foreign), "--data", str(good)],
             "fedmq.model-export/1")
    two = tmp_path / "two.csv"
    two.write_text("a,b,vibration_rms,temperature_c,current_a\n")
    one_line(capsys, ["evaluate", "--model", str(path), "--data", str(two)], "--label")
    if spec.kind == "logistic":
        _write_csv(tmp_path / "floaty.csv", X, y + 0.5)
        one_line(capsys, ["evaluate", "--model", str(path), "--data",
                          str(tmp_path / "floaty.csv")], "label column 'target'")


def test_missing_onnx_converter_is_one_line(trained, tmp_path, capsys, monkeypatch):
    _, _, path, _, _ = trained
    monkeypatch.setitem(__import__("sys").modules, "skl2onnx", None)  # as if not installed
    one_line(capsys, ["export", "--model", str(path), "--format", "onnx", "--out",
                      str(tmp_path / "m.onnx")], "pip install 'fedmq[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


def test_the_default_model_is_the_one_the_last_simulation_left(tmp_path, monkeypatch, capsys):
    from fedmq.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--agents", "4", "--rounds", "1", "--key-bits", "512",
                 "--no-plot"]) == 0
    assert main(["sample-data", "--devices", "1", "--out", "test-data"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--data", "test-data/dev-000.csv", "--label", "fault"]) == 0
    assert "accuracy" in capsys.readouterr().out
