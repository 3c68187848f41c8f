from __future__ import annotations

import numpy as np
import pytest

from edge_agent.data import DataError, load_csv


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
    ("a,lbl\n1,0\n", "lacks column"),
    ("a,label\n1,x\n", r"d.csv:2: not a number"),
    ("a,label\n1,nan\n", "NaN"),
])
def test_bad_files_give_clear_errors(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        load_csv(write(tmp_path, text), ("a",), "label")


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
