"""Checks on decrypted group sums: a lying group is flagged, honest non-IID groups are not."""

from __future__ import annotations

import numpy as np

from fedmq.aggregator.consistency import (
    Tolerances,
    datasheet_check,
    evaluation_outliers,
    growth_check,
    rows_check,
    statistics_outliers,
    step_outliers,
)
from fedmq.models import ModelSpec, make_model
from fedmq.protocol.sums.evaluation import local_evaluation
from fedmq.protocol.sums.statistics import StatsParams, local_statistics

SPEC = ModelSpec(kind="logistic", features=("a", "b", "c"), n_classes=2)
PARAMS = StatsParams()
TOL = Tolerances()


def honest_groups(seed: int = 0, groups: int = 4) -> dict[frozenset[str], tuple]:
    """Non-IID groups: each with its own offset, spread and row count."""
    rng = np.random.default_rng(seed)
    out = {}
    for g in range(groups):
        n = int(rng.integers(40, 400))
        X = rng.normal(rng.normal(20, 5, 3), rng.uniform(1, 4, 3), size=(n, 3))
        y = (X[:, 0] + rng.normal(0, 2, n) > 20).astype(float)
        out[frozenset({f"d{g}a", f"d{g}b"})] = (X, y)
    return out


def stats_sums(data):
    return {g: local_statistics(X, y, SPEC, PARAMS).values for g, (X, y) in data.items()}


def eval_sums(data, model):
    return {g: local_evaluation(model, X, y, PARAMS) for g, (X, y) in data.items()}


def test_honest_non_iid_groups_are_not_flagged():
    for seed in range(5):
        data = honest_groups(seed)
        assert statistics_outliers(stats_sums(data), SPEC, PARAMS, TOL) == []
        model = make_model(SPEC).set_params_vector(np.array([0.5, 0.0, 0.0, -10.0]))
        assert evaluation_outliers(eval_sums(data, model), SPEC, PARAMS, TOL) == []


def test_a_group_with_max_abs_values_is_left_out_of_the_center_and_scale():
    data = honest_groups(1)
    sums = stats_sums(data)
    rows = 2000
    lie = np.tile([[PARAMS.max_abs], [-PARAMS.max_abs]], (rows // 2, 3))
    liar = frozenset({"mallory", "d9"})
    sums[liar] = local_statistics(lie, np.zeros(rows), SPEC, PARAMS).values
    flagged = statistics_outliers(sums, SPEC, PARAMS, TOL)
    assert [g for g, _ in flagged] == [liar]
    assert "pooled scale" in flagged[0][1]


def test_evaluation_rows_that_no_honest_device_can_have_are_flagged():
    data = honest_groups(2)
    model = make_model(SPEC).set_params_vector(np.array([0.5, 0.0, 0.0, -10.0]))
    sums = eval_sums(data, model)
    liar = frozenset({"mallory", "d9"})
    n = 200_000  # self-labelled rows: all on the diagonal, tiny loss
    sums[liar] = [n, n // 2, 0, 0, n - n // 2, 0, 0, n]
    assert rows_check(400, n, max_weight=8000) is not None  # trained on 400 rows
    flagged = evaluation_outliers(sums, SPEC, PARAMS, TOL)
    assert [g for g, _ in flagged] == [liar]
    assert "without them" in flagged[0][1]


def test_rows_and_growth_checks_hold_for_honest_totals():
    assert rows_check(400, 200, max_weight=8000) is None
    assert rows_check(8000, 9000, max_weight=8000) is None  # capped: cannot tell
    assert growth_check(900, 300, TOL) is None
    assert growth_check(1300, 300, TOL) is not None
    assert growth_check(1300, None, TOL) is None


def test_a_far_group_is_named_and_close_ones_are_not():
    rng = np.random.default_rng(5)
    means = {frozenset({f"g{i}"}): rng.normal(0, 0.1, 6) for i in range(4)}
    means[frozenset({"liar"})] = np.full(6, -10.0)
    step = np.median(np.stack(list(means.values())), axis=0)
    assert [g for g, _ in step_outliers(means, step)] == [frozenset({"liar"})]


def test_a_center_or_scale_the_datasheet_rules_out_is_replaced_by_the_range():
    derived = ModelSpec(kind="logistic", features=("a", "b", "c"), n_classes=2,
                        center=(20.0, 5.0, 1e-6), scale=(3.0, 1.0, 999_800.0))
    spec, lines = datasheet_check(SPEC, derived, [(0, 50), (0, 10), (-5, 5)])
    assert spec.center == (20.0, 5.0, 0.0) and spec.scale == (3.0, 1.0, 2.5)
    assert len(lines) == 1 and "'c'" in lines[0] and "[-5, 5]" in lines[0]
    assert datasheet_check(SPEC, derived, [(0, 50), (0, 10), (-1e7, 1e7)]) == (derived, [])
