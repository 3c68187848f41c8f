"""The benchmark itself must keep working (tiny sizes here; real numbers come from `make bench`)."""

from __future__ import annotations

import json

from fedmq.benchmarks.crypto import BenchOptions, run
from fedmq.benchmarks.report import check_targets, tables
from fedmq.cli import main


def test_bench_measures_both_codecs_and_the_decoded_mean_is_accurate():
    results = run(BenchOptions(bits=(512,), dims=(10, 60), agents=(3, 20), baseline_max=20,
                               repeats=2))
    (key,) = results["keys"]
    assert key["layout"] == {"slot_bits": 44, "slots": 11}
    small, large = key["agent"]
    assert small["ciphertexts"] == 1 and large["ciphertexts"] == 6
    assert not small["baseline"]["extrapolated"] and large["baseline"]["extrapolated"]
    assert large["baseline"]["ciphertexts"] == 61
    assert large["bytes"] < large["baseline"]["bytes"] / 5
    assert all(row["max_error_rel_clip"] < 1e-6 for row in key["aggregator"])
    assert [row["agents"] for row in key["aggregator"]] == [3, 20, 3, 20]
    assert "512-bit key" in tables(results)
    assert check_targets(results) == []  # targets are defined at 2048 bits only


def test_fedmq_bench_quick_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1024-bit key" in printed and "sum+decrypt" in printed
    assert json.loads(out.read_text())["keys"][0]["bits"] == 1024
