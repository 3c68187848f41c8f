"""The simulation plot: honest axes, baselines, deadline markers, a cost panel, a title."""

from __future__ import annotations

import pytest

from fedmq.simulation.plot import (
    R2_FLOOR,
    PlotInput,
    PlotRound,
    figure,
    naive_score,
    render,
    score_window,
)


def test_accuracy_axis_reaches_one_and_starts_below_the_majority_class():
    # Issue 9: an axis spanning 0.9125-0.9325 made noise look like a trend.
    win = score_window("accuracy", [0.9125, 0.93, 0.9325], (0.95, 0.89))
    assert win.high >= 1.0
    assert win.low < 0.89
    assert win.high - win.low > 0.1
    assert win.clipped == ()
    assert score_window("accuracy", [0.02], (0.5,)).low == 0.0  # never below 0


def test_r2_axis_is_clipped_and_the_clipped_rounds_are_named():
    # A round-1 R^2 of -16 flattened every later round.
    win = score_window("R^2", [-16.0, 0.2, 0.8, 0.9], (0.99, 0.0))
    assert R2_FLOOR - 0.1 < win.low < R2_FLOOR
    assert 1.0 <= win.high < 1.1
    assert win.clipped == (0,)
    good = score_window("R^2", [0.5, 0.9], (0.99, 0.0))
    assert good.clipped == () and -0.1 < good.low < 0.0  # the mean predictor stays in view


def test_naive_baselines():
    assert naive_score("accuracy", [0, 0, 0, 1]) == 0.75
    assert naive_score("accuracy", [2, 2, 1]) == pytest.approx(2 / 3)
    assert naive_score("R^2", [3.0, 4.0]) == 0.0


def _data(metric: str, scores: list[float], closed: list[str]) -> PlotInput:
    # The last round is the final model's evaluation round; fleet a little above test.
    last = len(scores) - 1
    rounds = tuple(PlotRound(i + 1, s, 1.0 / (i + 1), c, 0.5 + i, 4000, 700,
                             fleet_score=s + 0.01, fleet_loss=0.9 / (i + 1), final=i == last)
                   for i, (s, c) in enumerate(zip(scores, closed, strict=True)))
    return PlotInput(task="fault", metric=metric, agents=37, iid=False, key_bits=1024,
                     codec="packed/1", central_score=0.95, naive_score=0.89, rounds=rounds)


def test_figure_has_title_baselines_log_loss_deadline_marks_and_cost_panel():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    data = _data("accuracy", [0.9125, 0.93, 0.9325], ["all", "deadline", "all"])
    fig = figure(data)
    try:
        title = fig._suptitle.get_text()
        assert "'fault'" in title and "37 agents" in title and "1024-bit" in title
        assert "packed/1" in title
        score_ax, loss_ax, cost_ax = fig.axes[:3]
        low, high = score_ax.get_ylim()
        assert low < 0.89 and high >= 1.0
        labels = score_ax.get_legend_handles_labels()[1]
        assert any("majority class" in lb for lb in labels)
        assert any("centralized" in lb for lb in labels)
        assert "closed at the deadline" in labels
        late = next(ln for ln in score_ax.lines if ln.get_label() == "closed at the deadline")
        assert list(late.get_xdata()) == [2]
        # The fleet's federated evaluation beside the test score, for the same rounds.
        fleet = next(ln for ln in score_ax.lines if "fleet's own rows" in ln.get_label())
        assert list(fleet.get_xdata()) == [1, 2, 3]
        assert list(fleet.get_ydata()) == pytest.approx([0.9225, 0.94, 0.9425])
        assert any("pooled test rows" in lb for lb in labels)
        fleet_loss = next(ln for ln in loss_ax.lines if "fleet" in ln.get_label())
        assert list(fleet_loss.get_ydata()) == pytest.approx([0.9, 0.45, 0.3])
        assert [t.get_text() for t in score_ax.texts] == ["final"]  # round 3: final model
        assert loss_ax.get_yscale() == "log"
        assert "KiB" in cost_ax.get_ylabel()
        assert len(cost_ax.patches) == 6  # updates and model bars for 3 rounds
        assert any("round time" in ax.get_ylabel() for ax in fig.axes)
    finally:
        plt.close(fig)


def test_render_writes_a_png_with_clipped_r2(tmp_path):
    pytest.importorskip("matplotlib")
    data = _data("R^2", [-16.0, 0.5, 0.9], ["deadline", "all", "all"])
    path = tmp_path / "metrics.png"
    render(data, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
