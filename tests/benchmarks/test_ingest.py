"""``fedmq bench-ingest`` runs end to end (a short stream) and reports its table."""

from __future__ import annotations

from fedmq.benchmarks.ingest import report, run


def test_a_short_ingestion_run_stores_every_reading_and_measures_both_agents(tmp_path):
    result = run(rate=50.0, seconds=4.0, key_bits=512, root=tmp_path)
    assert result.published >= 150 and result.stored == result.published
    assert result.csv_rss_mb > 10 and result.stream_rss_mb > 10
    text = report(result, 50.0)
    assert "rows stored == rows published: yes" in text and "stream / CSV" in text
