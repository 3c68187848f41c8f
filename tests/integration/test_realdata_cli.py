"""Issue 10's acceptance check: real data, non-IID over 8 devices with raw features, through
the real CLI against Mosquitto, within 3 pp (R^2 within 0.05) of centralized scikit-learn.

Every process is the real ``fedmq`` command (init gateway, agent --show-public-key, enroll
--from-file, agent, aggregator) and the broker is Mosquitto configured by ``fedmq broker
mosquitto-config``, TLS and logins on, all on 127.0.0.1 (benchmarks.realdata_fleet).
``pooled`` hands the aggregator the StandardScaler values of all devices' rows pooled:
the baseline. ``none`` is a new user's config with no [model] center/scale: it can only
pass once the federated statistics round derives them (and rounds.csv then carries the
federated metric per round).
"""

from __future__ import annotations

import pytest
from mqtt_support import mosquitto_binary

from benchmarks import realdata
from fedmq import datasets

# COORDINATOR: drop this mark once federated statistics and evaluation are merged.
NOT_YET = pytest.mark.xfail(strict=True, reason="federated statistics not on this branch")
TOLERANCE = {"accuracy": 0.03, "r2": 0.05}


@pytest.mark.slow
@pytest.mark.parametrize("scaling", ["pooled", pytest.param("none", marks=NOT_YET)])
@pytest.mark.parametrize("name", datasets.DEFAULT_DATASETS)
def test_federated_model_is_within_tolerance_of_centralized_sklearn(tmp_path, name, scaling):
    mosquitto_binary()  # skip without Mosquitto (fail with FEDMQ_REQUIRE_MOSQUITTO=1)
    options = realdata.Options(datasets=(name,), broker="mosquitto", devices=8, key_bits=1024,
                               scaling=scaling, round_timeout=20.0)
    result = realdata.run_one(name, options, tmp_path)

    rounds = options.training(name).rounds
    assert [int(r["round"]) for r in result.round_log] == list(range(1, rounds + 1))
    assert all(r["closed_by"] == "all" and r["reported"] == "8" for r in result.round_log)
    assert result.gap <= TOLERANCE[result.metric], realdata.table([result])
    if scaling == "none":
        # The issue asks for the federated metric per round in rounds.csv.
        assert any(result.metric in column for column in result.round_log[0])
