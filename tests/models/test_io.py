from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmq.models import (
    LinearRegressionModel,
    LogisticRegressionModel,
    ModelError,
    ModelSpec,
    load_model,
)
from fedmq.runtime.files import save_model

SPEC = ModelSpec("logistic", ("a", "b"), n_classes=3, center=(1.0, -2.0), scale=(0.5, 3.0))
PARAMS = np.random.default_rng(0).normal(size=SPEC.n_params) * 1e3
META = {"round": 7, "device": "edge-01", "metrics": {"acc": 0.93}, "tags": ["a", "b"]}


@pytest.mark.parametrize("suffix", [".npz", ".json", ".NPZ"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    save_model(path, SPEC, PARAMS, metadata=META)
    spec, params, meta = load_model(str(path))
    assert spec == SPEC
    np.testing.assert_array_equal(params, PARAMS)  # bit-exact, also through JSON text
    assert params.dtype == np.float64
    assert meta == META


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_round_trip_without_metadata_and_optional_spec_fields(tmp_path: Path, suffix: str) -> None:
    spec = ModelSpec("linear", ("x",))
    path = tmp_path / f"m{suffix}"
    save_model(path, spec, [1.5, -0.25])
    loaded_spec, params, meta = load_model(path)
    assert loaded_spec == spec and meta == {}
    np.testing.assert_array_equal(params, [1.5, -0.25])


def test_loaded_params_rebuild_an_equivalent_model(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    save_model(path, SPEC, PARAMS)
    spec, params, _ = load_model(path)
    X = np.array([[0.0, 0.0], [1.0, 5.0]])
    a = LogisticRegressionModel(SPEC).set_params_vector(PARAMS)
    b = LogisticRegressionModel(spec).set_params_vector(params)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_standardized_label_survives_save_and_load(tmp_path: Path, suffix: str) -> None:
    spec = ModelSpec("linear", ("a", "b"), center=(20.0, 1.0), scale=(4.0, 0.5),
                     target_center=60.0, target_scale=0.5)
    model = LinearRegressionModel(spec).set_params_vector([0.8, -0.5, 0.1])
    path = tmp_path / f"m{suffix}"
    save_model(path, spec, model.params_)
    loaded_spec, params, _ = load_model(path)
    assert loaded_spec == spec and loaded_spec.target_affine == (60.0, 0.5)
    X = np.array([[20.0, 1.0], [28.0, 0.0], [12.5, 3.0]])
    loaded = LinearRegressionModel(loaded_spec).set_params_vector(params)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.predict(X)[0] == pytest.approx(60.0 + 0.5 * 0.1)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_model_files_from_before_target_fields_still_load(tmp_path: Path, suffix: str) -> None:
    # A file written before target_center/target_scale existed has no such keys.
    old_spec = {"kind": "linear", "features": ["x"], "n_classes": 0, "center": None,
                "scale": None}
    path = tmp_path / f"old{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"format": "fedmq-model", "version": 1, "spec": old_spec,
                                    "params": [2.0, 1.0], "metadata": {}}))
    else:
        np.savez(path, format=np.array("fedmq-model"), version=np.array(1, dtype=np.int64),
                 spec=np.array(json.dumps(old_spec)), metadata=np.array("{}"),
                 params=np.array([2.0, 1.0]))
    spec, params, _ = load_model(path)
    assert spec.target_affine == (0.0, 1.0)
    model = LinearRegressionModel(spec).set_params_vector(params)
    np.testing.assert_array_equal(model.predict([[3.0]]), [7.0])
    # ...and the same spec is written back byte-for-byte as before.
    assert spec.to_dict() == old_spec


def test_npz_holds_no_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    save_model(path, SPEC, PARAMS, metadata=META)
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            assert archive[key].dtype != object
        assert json.loads(str(archive["spec"])) == SPEC.to_dict()
        assert json.loads(str(archive["metadata"])) == META


def test_json_file_is_plain_readable_json(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    save_model(path, SPEC, PARAMS, metadata=META)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["spec"] == SPEC.to_dict()
    assert doc["params"] == PARAMS.tolist()
    assert doc["metadata"] == META


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m{suffix}"
    save_model(path, SPEC, PARAMS)
    save_model(path, SPEC, PARAMS + 1.0, metadata={"v": 2})
    _, params, meta = load_model(path)
    np.testing.assert_array_equal(params, PARAMS + 1.0)
    assert meta == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == [path.name]


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_failed_save_keeps_previous_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m{suffix}"
    save_model(path, SPEC, PARAMS)
    before = path.read_bytes()
    with pytest.raises(ModelError, match="metadata"):
        save_model(path, SPEC, PARAMS, metadata={"bad": object()})
    with pytest.raises(ModelError, match="metadata"):
        save_model(path, SPEC, PARAMS, metadata={"nan": float("nan")})
    with pytest.raises(ModelError, match="length"):
        save_model(path, SPEC, PARAMS[:-1])
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_save_validates_arguments(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="suffix"):
        save_model(tmp_path / "m.pkl", SPEC, PARAMS)
    with pytest.raises(ModelError, match="ModelSpec"):
        save_model(tmp_path / "m.npz", SPEC.to_dict(), PARAMS)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="NaN"):
        save_model(tmp_path / "m.npz", SPEC, np.full(SPEC.n_params, np.nan))
    with pytest.raises(ModelError, match="dict"):
        save_model(tmp_path / "m.json", SPEC, PARAMS, metadata=[1, 2])  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="suffix"):
        load_model(tmp_path / "m.txt")
    with pytest.raises(ModelError, match="not found") as info:
        load_model(tmp_path / "missing.npz")
    assert isinstance(info.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x01garbage", "JSON"),
        (b"\xff\xfe\xfa", "UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'{"format": "fedmq-model", "version": 1}', "missing"),
        (b'{"format": "other", "version": 1, "spec": {}, "params": []}', "format"),
        (b'{"format": "fedmq-model", "version": 99, "spec": {}, "params": []}', "version"),
        (b'{"format": "fedmq-model", "version": true, "spec": {}, "params": []}', "version"),
        (
            b'{"format": "fedmq-model", "version": 1, "params": [],'
            b' "spec": {"kind": "x", "features": ["a"]}}',
            "kind",
        ),
    ],
)
def test_corrupt_json(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(path)


def _edit_json(path: Path, **changes: Any) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.update(changes)
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"params": [1.0, 2.0]}, "length"),
        ({"params": "abc"}, "numeric|1-D"),
        ({"metadata": [1]}, "metadata"),
    ],
)
def test_json_with_inconsistent_fields(tmp_path: Path, changes: Any, message: str) -> None:
    path = tmp_path / "m.json"
    save_model(path, SPEC, PARAMS)
    _edit_json(path, **changes)
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_json_rejects_nan_params(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    save_model(path, SPEC, PARAMS)
    path.write_text(path.read_text().replace(json.dumps(float(PARAMS[0])), "NaN", 1))
    with pytest.raises(ModelError, match="NaN"):
        load_model(path)


def test_corrupt_npz(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ModelError, match="npz"):
        load_model(path)

    np.save(tmp_path / "plain.npy", PARAMS)
    (tmp_path / "plain.npy").rename(path)
    with pytest.raises(ModelError, match="npy"):
        load_model(path)

    save_model(path, SPEC, PARAMS)
    path.write_bytes(path.read_bytes()[:-40])  # truncated download
    with pytest.raises(ModelError):
        load_model(path)


def _rewrite_npz(path: Path, **arrays: Any) -> None:
    with np.load(path, allow_pickle=False) as archive:
        content = {key: archive[key] for key in archive.files}
    content.update(arrays)
    content = {k: v for k, v in content.items() if v is not None}
    with open(path, "wb") as fh:
        np.savez(fh, **content)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"params": None}, "missing"),
        ({"spec": np.array(1.0)}, "unicode"),
        ({"spec": np.array("{not json")}, "JSON"),
        ({"spec": np.array('{"kind": "linear"}')}, "features"),
        ({"format": np.array("zip")}, "format"),
        ({"version": np.array(2)}, "version"),
        ({"params": np.zeros((3, 3))}, "1-D"),
        ({"params": np.array(["x"] * SPEC.n_params)}, "numeric"),
        ({"params": np.array([{"a": 1}], dtype=object)}, "npz"),
        ({"metadata": np.array("[]")}, "metadata"),
    ],
)
def test_npz_with_bad_members(tmp_path: Path, arrays: Any, message: str) -> None:
    path = tmp_path / "m.npz"
    save_model(path, SPEC, PARAMS)
    _rewrite_npz(path, **arrays)
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_npz_member_with_bad_crc(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    save_model(path, SPEC, PARAMS)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("params.npy")
    # Flip a byte in the payload (after the local header) so the zip directory still parses.
    raw[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="corrupt"):
        load_model(path)


def test_binary_npz_names_the_file_and_never_suggests_pickle(tmp_path: Path) -> None:
    path = tmp_path / "global_model.npz"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert str(path) in str(info.value) and "not a readable .npz" in str(info.value)
    assert "pickle" not in str(info.value)
