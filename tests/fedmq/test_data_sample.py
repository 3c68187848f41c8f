"""fedmq.data_sample: a sample CSV's header becomes the fleet's features, label and model."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmq.data_sample import read_columns
from fedmq.edge_agent.data import load_csv
from fedmq.protocol.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "s.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_numeric_columns_but_the_label_are_the_features_in_file_order(tmp_path: Path) -> None:
    names = [f"s{i:02d}" for i in range(23)]
    rows = [",".join([*(str(i * j) for j in range(23)), str(i % 4)]) for i in range(40)]
    path = write(tmp_path, ",".join([*names, "state"]) + "\n" + "\n".join(rows) + "\n")
    cols = read_columns(path, "state")
    assert cols.features == tuple(names) and cols.label == "state"
    assert (cols.kind, cols.n_classes) == ("logistic", 4)
    # what the device then reads with the written config
    assert load_csv(path, cols.features, cols.label).X.shape == (40, 23)


def test_a_continuous_label_is_a_regression(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,y\n1,2,0.5\n3,4,1.25\n5,6,7\n")
    assert read_columns(path, "y").kind == "linear"
    assert read_columns(path, "y").n_classes == 0
    many = write(tmp_path, "a,y\n" + "".join(f"{i},{i}\n" for i in range(200)), "many.csv")
    assert read_columns(many, "y").kind == "linear"  # 200 integer values: a count, not classes


def test_kind_can_be_forced_and_a_forced_classifier_needs_class_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n1,0\n2,1\n3,1\n")
    assert read_columns(path, "y", kind="linear").kind == "linear"
    assert read_columns(write(tmp_path, "a,y\n1,0\n", "one.csv"), "y").n_classes == 2
    with pytest.raises(ConfigError, match="class numbers"):
        read_columns(write(tmp_path, "a,y\n1,0.5\n", "f.csv"), "y", kind="logistic")


def test_n_classes_covers_classes_the_sample_does_not_show(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n1,0\n2,1\n")
    assert read_columns(path, "y", n_classes=5).n_classes == 5
    assert read_columns(path, "y", n_classes=5).kind == "logistic"
    with pytest.raises(ConfigError, match=r"--n-classes 1: .* needs 2 to 1000 classes"):
        read_columns(path, "y", n_classes=1)


def test_n_classes_makes_a_classifier_and_refuses_a_regression_target(tmp_path: Path) -> None:
    counts = write(tmp_path, "a,y\n" + "".join(f"{i},{i}\n" for i in range(60)), "c.csv")
    assert read_columns(counts, "y").kind == "linear"  # 60 values: a count by default
    assert (read_columns(counts, "y", n_classes=80).kind, read_columns(
        counts, "y", n_classes=80).n_classes) == ("logistic", 80)
    with pytest.raises(ConfigError, match="--n-classes goes with a classifier, and 'y' is a "
                                          "regression target here"):
        read_columns(counts, "y", n_classes=80, kind="linear")
    with pytest.raises(ConfigError, match="not all class numbers"):
        read_columns(write(tmp_path, "a,y\n1,0.5\n", "f.csv"), "y", n_classes=3)


def test_text_columns_are_left_out_and_said_so(tmp_path: Path) -> None:
    path = write(tmp_path, "time,device,temp,rpm,y\n2024-01-01,pump-3,20.5,1500,0\n"
                           "2024-01-02,pump-3,,1490,1\n")
    cols = read_columns(path, "y")
    assert cols.features == ("rpm",)  # temp has an empty cell: the device would refuse it
    assert any("'time'" in line and "2024-01-01" in line for line in cols.notes)


def test_a_numeric_time_or_row_id_is_kept_but_named(tmp_path: Path) -> None:
    """A numeric column could be a reading: it stays a feature, with a note to --exclude it."""
    path = write(tmp_path, "epoch,sample_no,temp,y\n1700000000,3,20.5,0\n1700000060,1,21,1\n"
                           "1700000120,2,22,0\n")
    cols = read_columns(path, "y")
    assert cols.features == ("epoch", "sample_no", "temp")
    notes = "\n".join(cols.notes)
    assert "'epoch' looks like a time or a row id (its name)" in notes
    assert "sample_no" not in notes and "'temp'" not in notes
    rising = write(tmp_path, "counter,temp,y\n" + "".join(
        f"{3 * i + 1},{20 + i % 3},{i % 2}\n" for i in range(12)), "r.csv")
    assert "'counter' looks like a time or a row id (it rises on every row): --exclude counter" \
        in "\n".join(read_columns(rising, "y").notes)


def test_exclude_and_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, "row;a;b;c, d;y\n1;2;3;4;0\n2;3;4;5;1\n")
    cols = read_columns(path, "y", delimiter=";", exclude=("row,a", "c, d"))
    assert cols.features == ("b",) and cols.delimiter == ";"
    with pytest.raises(ConfigError, match="--exclude nope: not a column"):
        read_columns(path, "y", delimiter=";", exclude=("nope",))
    tabbed = write(tmp_path, "a\tb\ty\n1\t2\t0\n", "t.csv")
    for typed in ("\\t", "tab", "\t"):  # as a shell passes '\t', tab, or a real tab
        assert read_columns(tabbed, "y", delimiter=typed).features == ("a", "b")
    with pytest.raises(ConfigError, match="--delimiter ';;': one character"):
        read_columns(tabbed, "y", delimiter=";;")


def test_a_byte_order_mark_is_read_as_the_agent_reads_it(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: init and the device must agree on column 1."""
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffa,b,y\n1,2,0\n3,4,1\n".encode())
    cols = read_columns(path, "y")
    assert cols.features == ("a", "b")
    assert load_csv(path, cols.features, cols.label).X.tolist() == [[1, 2], [3, 4]]


def test_a_column_that_tells_the_label_is_named(tmp_path: Path) -> None:
    rows = "".join(f"{i * 1.5 % 7},{1 + i % 3 if i % 2 else 0},{i % 2}\n" for i in range(20))
    cols = read_columns(write(tmp_path, "temp,fault_type,fault\n" + rows), "fault")
    assert cols.features == ("temp", "fault_type")
    notes = "\n".join(cols.notes)
    assert "'fault_type' alone tells the label" in notes and "--exclude fault_type" in notes
    assert "'temp'" not in notes


def test_class_counts_are_bounded(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n1,0\n2,1000000000\n")
    with pytest.raises(ConfigError, match="holds class 1000000000; a fleet classifier has at "
                                          "most 1000"):
        read_columns(path, "y", kind="logistic")
    assert read_columns(path, "y").kind == "linear"
    assert "--kind logistic for a classifier" in read_columns(path, "y").why
    with pytest.raises(ConfigError, match=r"--n-classes 100000000: .* 2 to 1000 classes"):
        read_columns(write(tmp_path, "a,y\n1,0\n", "s2.csv"), "y", n_classes=100_000_000)


@pytest.mark.parametrize("text, says", [
    ("a,b\n1,2\n", "has no column 'y' (--label); its columns: 'a', 'b'"),
    ("a;b;y\n1;2;3\n", "give --delimiter"),
    ("", "empty file"),
    ("a,y\n", "a header but no rows"),
    ("a,,y\n1,2,3\n", "column 2 of the header has no name"),
    ("a,a,y\n1,2,3\n", "names 'a' twice"),
    ("a,y\n1,walk\n", "s.csv:2: label 'y' is 'walk', not a number"),
    ("y,t\n1,x\n", "no numeric column besides the label 'y' to learn from (not a feature: "
                    "'t' ("),
    ("y,t,u\n1,,inf\n", "s.csv:2 holds an empty cell); not a feature: 'u'"),
    ("y,t\n1," + "9" * (1 << 20) + "\n", "s.csv:2 is longer than 1,048,576 characters"),
])
def test_a_bad_sample_is_one_line_naming_the_file(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        read_columns(write(tmp_path, text), "y")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_missing_or_binary_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        read_columns(tmp_path / "nope.csv", "y")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ConfigError, match=r"--data-sample .*b\.csv"):
        read_columns(binary, "y")
