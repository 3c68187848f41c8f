"""``fedmq bench-storm`` runs end to end (a small storm) and reports against its target."""

from __future__ import annotations

from fedmq.benchmarks.storm import StormResult, report
from fedmq.cli import main


def test_bench_storm_runs_from_the_cli(capsys):
    assert main(["bench-storm", "--idle", "30", "--half-open", "10", "--rounds", "1",
                 "--settle", "1"]) == 0
    out = capsys.readouterr().out
    assert "30 idle TLS sockets + 10 half-open TLS handshakes per round, 1 rounds" in out
    assert "RSS idle" in out and "within the 20 MB target" in out


def test_the_report_names_a_miss():
    text = report(StormResult(50.0, 230.0, [220.0]), idle=500, half_open=100)
    assert "after / idle x4.40, +170.0 MB (OVER the 20 MB target)" in text


def test_bench_storm_churns_logged_in_clients(capsys):
    assert main(["bench-storm", "--idle", "0", "--half-open", "0", "--churn", "20",
                 "--rounds", "1", "--settle", "1"]) == 0
    out = capsys.readouterr().out
    assert "+ 20 logged-in clients (10 filters subscribed and unsubscribed each)" in out
