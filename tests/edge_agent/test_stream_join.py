from __future__ import annotations

from fedmq.edge_agent.stream_join import Joiner, Reading

COLS = ("temp", "vib", "fault")


def r(i: int, ts: float, **values: float) -> Reading:
    return Reading(i, 0, ts, dict(values))


def test_readings_of_two_topics_within_the_window_form_one_row():
    j = Joiner(COLS, 2.0)
    out = j.add([r(1, 10.0, temp=20.0), r(2, 11.5, vib=1.0, fault=0.0)])
    assert out.rows == [(11.5, [20.0, 1.0, 0.0])] and sorted(out.used) == [1, 2]
    assert j.open_ids == set()


def test_out_of_order_times_join_with_the_nearest_row():
    j = Joiner(COLS, 2.0)
    j.add([r(1, 10.0, temp=1.0), r(2, 20.0, temp=2.0)])
    out = j.add([r(3, 19.5, vib=5.0, fault=1.0)])  # nearest to 20, not 10
    assert out.rows == [(20.0, [2.0, 5.0, 1.0])]
    # the row anchored at 10 went stale when time 20 arrived
    assert out.stale_rows == 0 and j.open_ids == set()


def test_stale_partial_rows_are_dropped_and_counted():
    j = Joiner(COLS, 2.0)
    first = j.add([r(1, 10.0, temp=1.0)])
    assert first.rows == [] and j.open_ids == {1}
    out = j.add([r(2, 13.0, temp=2.0)])
    assert out.stale_rows == 1 and out.dropped == [1] and j.open_ids == {2}


def test_late_readings_are_dropped():
    j = Joiner(COLS, 2.0)
    j.add([r(1, 100.0, temp=1.0)])
    out = j.add([r(2, 50.0, vib=1.0, fault=0.0)])
    assert out.late == 1 and out.dropped == [2] and out.rows == []


def test_a_column_is_never_overwritten_within_a_row():
    j = Joiner(COLS, 5.0)
    out = j.add([r(1, 1.0, temp=1.0), r(2, 1.5, temp=2.0), r(3, 2.0, vib=0.0, fault=1.0)])
    # temp 2.0 opened a row of its own; the vib reading joins the nearer one in time
    assert out.rows == [(2.0, [2.0, 0.0, 1.0])] and j.open_ids == {1}


def test_single_topic_rows_complete_at_once():
    j = Joiner(("a", "y"), 0.0)
    out = j.add([r(1, 1.0, a=1.0, y=0.0), r(2, 1.0, a=2.0, y=1.0)])
    assert [v for _, v in out.rows] == [[1.0, 0.0], [2.0, 1.0]] and j.open_ids == set()
