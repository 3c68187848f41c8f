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


def test_a_flood_of_one_topic_keeps_at_most_max_open_rows():
    j = Joiner(COLS, 0.0, max_open=100)
    out = j.add([r(i, 5.0, temp=float(i)) for i in range(1, 1001)])  # constant ts, no partner
    assert len(j.open_ids) == 100 and out.stale_rows == 900
    assert j.open_ids == set(range(901, 1001))  # the oldest went first
    done = j.add([r(2000, 5.0, vib=1.0, fault=0.0)])
    assert done.rows == [(5.0, [901.0, 1.0, 0.0])]


def _reference(columns, join_seconds, batches):
    """The join as first written: a linear scan of every open row (no ties in the data)."""
    open_rows: list[dict] = []
    newest = float("-inf")
    results = []
    for batch in batches:
        rows, late, stale = [], 0, 0
        for x in batch:
            if x.ts < newest - join_seconds:
                late += 1
                continue
            newest = max(newest, x.ts)
            fits = [o for o in open_rows if abs(o["anchor"] - x.ts) <= join_seconds
                    and not o["values"].keys() & x.values.keys()]
            row = min(fits, key=lambda o: abs(o["anchor"] - x.ts)) if fits else None
            if row is None:
                row = {"anchor": x.ts, "ts": x.ts, "values": {}}
                open_rows.append(row)
            row["values"].update(x.values)
            row["ts"] = max(row["ts"], x.ts)
            if len(row["values"]) == len(columns):
                open_rows.remove(row)
                rows.append((row["ts"], [row["values"][c] for c in columns]))
        gone = [o for o in open_rows if o["anchor"] < newest - join_seconds]
        stale += len(gone)
        open_rows = [o for o in open_rows if o not in gone]
        results.append((rows, late, stale))
    return results


def test_the_indexed_join_matches_a_linear_scan():
    import random

    rng = random.Random(7)
    shapes = [{"temp": 0.0}, {"vib": 0.0, "fault": 0.0}, {"temp": 0.0, "vib": 0.0, "fault": 0.0}]
    batches, n = [], 0
    for b in range(60):
        batch = []
        for _ in range(rng.randint(1, 30)):
            n += 1
            values = {k: rng.random() for k in rng.choice(shapes)}
            batch.append(r(n, b * 3.0 + rng.uniform(-4.0, 4.0), **values))
        batches.append(batch)
    j = Joiner(COLS, 1.5)
    got = [(o.rows, o.late, o.stale_rows) for o in (j.add(batch) for batch in batches)]
    assert got == _reference(COLS, 1.5, batches)
    assert sum(len(rows) for rows, _, _ in got) > 50
