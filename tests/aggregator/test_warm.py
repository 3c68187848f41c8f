"""Warm start: which run's model a new run keeps, and how it fits the new run's spec."""

from __future__ import annotations

import json
import logging

import numpy as np

from fedmq.aggregator.warm import FILE, keep_warm_start, warm_params
from fedmq.models import ModelSpec
from fedmq.runtime.files import save_model

OLD = ModelSpec(kind="logistic", features=("a", "b"), n_classes=2, center=(0.0, 1.0),
                scale=(1.0, 2.0))


def _run(tmp_path, name, status, params=(0.5, -1.0, 0.25)):
    d = tmp_path / name
    d.mkdir()
    if status is not None:
        (d / "run.json").write_text(json.dumps({"status": status}))
    save_model(d / "global_model.npz", OLD, np.array(params), metadata={"model_version": 3})
    return d


def test_only_a_finished_run_is_kept(tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    assert not keep_warm_start(_run(tmp_path, "open", "open"), new)
    assert not (new / FILE).exists()
    assert keep_warm_start(_run(tmp_path, "done", "finished"), new)
    np.testing.assert_array_equal(warm_params(new, OLD), [0.5, -1.0, 0.25])


def test_a_run_killed_before_its_first_round_passes_its_warm_start_on(tmp_path):
    done, killed, new = _run(tmp_path, "done", "finished"), tmp_path / "killed", tmp_path / "n"
    killed.mkdir()
    new.mkdir()
    assert keep_warm_start(done, killed)  # then killed before run.json was written
    assert keep_warm_start(killed, new)
    np.testing.assert_array_equal(warm_params(new, OLD), [0.5, -1.0, 0.25])


def test_new_standardisation_is_mapped_and_another_model_skipped(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    new = tmp_path / "new"
    new.mkdir()
    keep_warm_start(_run(tmp_path, "done", "finished"), new)
    rescaled = ModelSpec(kind="logistic", features=("a", "b"), n_classes=2,
                         center=(1.0, 1.0), scale=(2.0, 2.0))
    mapped = warm_params(new, rescaled)
    assert mapped is not None and not np.allclose(mapped, [0.5, -1.0, 0.25])
    assert "new standardisation" in caplog.text
    other = ModelSpec(kind="logistic", features=("a", "c"), n_classes=2)
    assert warm_params(new, other) is None
    assert "no warm start" in caplog.text
    assert all(r.levelno == logging.INFO for r in caplog.records)
    assert warm_params(tmp_path / "done", OLD) is None  # a run without a warm start
