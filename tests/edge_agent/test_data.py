from __future__ import annotations

import numpy as np
import pytest

from fedmq.edge_agent.data import DataError, DataFile, load_csv, split_holdout


def write(tmp_path, text):
    path = tmp_path / "d.csv"
    path.write_text(text)
    return path


def test_loads_selected_columns_in_config_order(tmp_path):
    path = write(tmp_path, "t,b,a,label\n1,2.5,3,0\n2,4,5,1\n\n")
    data = load_csv(path, ("a", "b"), "label")
    np.testing.assert_array_equal(data.X, [[3, 2.5], [5, 4]])
    np.testing.assert_array_equal(data.y, [0, 1])
    assert data.n_samples == 2


@pytest.mark.parametrize("text,match", [
    ("", "empty"),
    ("a,label\n", "no rows"),
    ("a,lbl\n1,0\n", r"lacks column\(s\) label; the header's other column\(s\): lbl$"),
    ("a,label\n1,0\n2,x\n", r"d.csv:3: column 'label' is not a number \(could not convert"),
    ("a,b,label\n1,2,0\nz,2,0\n", r"d.csv:3: column 'a' is not a number"),
    ("label,a\n1,0\n1\n", r"d.csv:3: column 'a' is missing \(the row has 1 field\(s\), the "
                           r"header 2\)"),
    ("a,label\n1,nan\n", r"d.csv:2: column 'label' is nan \(1 NaN or infinite value"),
    ("a,label\n1,0\n\n2,1\ninf,0\n-inf,nan\n", r"d.csv:5: column 'a' is inf \(3 NaN"),
])
def test_bad_files_give_clear_errors(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        load_csv(write(tmp_path, text), ("a",), "label")


def test_column_diff_names_only_what_differs():
    from fedmq.edge_agent.data import column_diff

    fleet = tuple(f"f{i}" for i in range(24))
    assert column_diff(fleet, (*fleet[:23], "foo")) == "missing: f23; extra: foo"
    assert column_diff(fleet, fleet[:22]) == "missing: f22, f23"
    assert column_diff(("a",), ("a", "b")) == "extra: b"
    assert column_diff(("a", "b"), ("b", "a")) == "the same columns in another order"


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_csv(tmp_path / "nope.csv", ("a",), "label")


@pytest.mark.parametrize("content,match", [
    (b"a,label\n\x80\x81,0\n", "not a UTF-8 text file"),
    (b"a,label\n1\x00,0\n", r"d.csv:2 holds a NUL byte"),
    (bytes(range(256)) * 4, "NUL byte|not a UTF-8"),
])
def test_binary_files_give_clear_errors(tmp_path, content, match):
    path = tmp_path / "d.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_csv(path, ("a",), "label")


def test_a_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError, match="cannot read data file"):
        load_csv(tmp_path, ("a",), "label")


def _rows(n, seed=0):
    from support import local_data
    return local_data(seed, n)


def _set(data):
    return {tuple(row) for row in np.column_stack([data.X, data.y])}


@pytest.mark.parametrize("n, share, held", [(100, 0.2, 20), (10, 0.5, 5), (7, 0.1, 1),
                                            (2, 0.5, 1), (3, 0.01, 1)])
def test_holdout_keeps_the_share_out_of_training(n, share, held):
    data = _rows(n)
    train, evaluation = split_holdout(data, share, "pi-1")
    assert (train.n_samples, evaluation.n_samples) == (n - held, held)
    assert _set(train) | _set(evaluation) == _set(data)
    assert not _set(train) & _set(evaluation)  # a held-out row is never trained on
    assert (train.features, train.label) == (data.features, data.label)


def test_holdout_zero_evaluates_on_every_row_and_trains_on_every_row():
    data = _rows(30)
    train, evaluation = split_holdout(data, 0.0, "pi-1")
    assert train is data and evaluation is data


def test_holdout_is_deterministic_per_agent_and_stable_when_rows_are_appended():
    data = _rows(200)
    first = split_holdout(data, 0.2, "pi-1")[1]
    assert _set(split_holdout(data, 0.2, "pi-1")[1]) == _set(first)
    assert _set(split_holdout(data, 0.2, "pi-2")[1]) != _set(first)  # seeded by the agent id
    grown = type(data)(X=np.vstack([data.X, _rows(20, seed=5).X]),
                       y=np.concatenate([data.y, _rows(20, seed=5).y]),
                       features=data.features, label=data.label)
    # A logger appended rows: the held-out rows are picked by their own hash, not by
    # position, so nearly all stay held out (a few new rows with smaller hashes displace
    # some); a split by position would shuffle them all.
    evaluation = split_holdout(grown, 0.2, "pi-1")[1]
    assert evaluation.n_samples == 44
    assert len(_set(first) & _set(evaluation)) >= 36


@pytest.mark.parametrize("n, share, match", [
    (1, 0.5, r"holdout = 0.5 of 1 row\(s\) leaves no training rows"),
    (1, 0.1, "needs at least 2 rows"),
    (10, 0.6, r"holdout must lie in \[0, 0.5\]"),
])
def test_a_holdout_that_leaves_a_part_empty_is_one_clear_error(n, share, match):
    with pytest.raises(DataError, match=match):
        split_holdout(_rows(n), share, "pi-1")


def test_data_file_is_read_again_only_when_it_changed(tmp_path):
    path = write(tmp_path, "a,label\n1,0\n2,1\n")
    source = DataFile(path, ("a",), "label")
    assert source.data.n_samples == 2 and not source.refresh()
    with path.open("a") as fh:
        fh.write("3,0\n")
    assert source.refresh() and source.data.n_samples == 3 and not source.refresh()


def test_a_data_file_that_breaks_keeps_failing_until_fixed_then_reloads(tmp_path):
    path = write(tmp_path, "a,label\n1,0\n2,1\n3,1\n4,0\n")
    source = DataFile(path, ("a",), "label", holdout=0.25, seed="pi-1")
    assert (source.train.n_samples, source.evaluation.n_samples) == (3, 1)
    path.write_bytes(b"a,label\n1,\x00\n")
    for _ in range(2):  # every round until fixed, not only the first after the change
        with pytest.raises(DataError, match="NUL byte"):
            source.refresh()
        assert source.data.n_samples == 4  # the last good rows stay in place
    path.write_text("a,label\n1,0\n")  # readable, but too small for the holdout
    with pytest.raises(DataError, match="leaves no training rows"):
        source.refresh()
    path.unlink()
    with pytest.raises(DataError, match="not found"):
        source.refresh()
    path.write_text("a,label\n1,0\n2,1\n3,1\n4,0\n5,0\n6,1\n7,0\n8,1\n")
    assert source.refresh()
    assert (source.train.n_samples, source.evaluation.n_samples) == (6, 2)
