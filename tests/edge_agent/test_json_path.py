from __future__ import annotations

import pytest

from fedmq.edge_agent.json_path import JsonPath, PathError, ReadingError, as_number


def test_parse_and_get_nested_fields():
    doc = {"a": {"b": [{"c": 3}, {"c": 4.5}]}, "t": True, "s": " 21.5 ", "x-y": 1}
    assert JsonPath.parse("$.a.b[1].c").steps == ("a", "b", 1, "c")
    assert JsonPath.parse("$.a.b[1].c").number(doc) == 4.5
    assert JsonPath.parse("$.a.b[0].c").number(doc) == 3.0
    assert JsonPath.parse("$.t").number(doc) == 1.0
    assert JsonPath.parse("$.s").number(doc) == 21.5
    assert JsonPath.parse("$.x-y").number(doc) == 1.0
    assert JsonPath.parse("$").get(5) == 5  # a bare number as the whole payload


@pytest.mark.parametrize("text", ["a.b", "$..a", "$.a[", "$.a[-1]", "$.a[*]", "$.a b",
                                  "$['a']", "$.a.__class__()"])
def test_bad_paths_are_refused(text):
    with pytest.raises(PathError):
        JsonPath.parse(text)


@pytest.mark.parametrize(("doc", "path", "reason"), [
    ({"a": 1}, "$.b", "missing-field"),
    ({"a": [1]}, "$.a[1]", "missing-field"),
    ({"a": {"0": 1}}, "$.a[0]", "missing-field"),
    ({"a": None}, "$.a", "not-a-number"),
    ({"a": "warm"}, "$.a", "not-a-number"),
    ({"a": {"v": 1}}, "$.a", "not-a-number"),
    ({"a": "nan"}, "$.a", "not-a-number"),
    ({"a": 1e400}, "$.a", "not-a-number"),
])
def test_unusable_values_name_a_reason(doc, path, reason):
    with pytest.raises(ReadingError) as info:
        JsonPath.parse(path).number(doc)
    assert info.value.reason == reason


def test_as_number_accepts_false_and_exponents():
    assert as_number(False) == 0.0 and as_number("1e3") == 1000.0 and as_number("-.5") == -0.5


def test_an_integer_beyond_float_range_is_not_a_number():
    import json
    with pytest.raises(ReadingError) as info:
        JsonPath.parse("$.a").number(json.loads('{"a": 1' + "0" * 400 + "}"))
    assert info.value.reason == "not-a-number"
