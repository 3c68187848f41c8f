"""`fedmq bench-scale`: a tiny real run through `fedmq simulate` (own process, real broker)."""

from __future__ import annotations

import json

import pytest

from fedmq.cli import main


@pytest.mark.slow
def test_spare_sensors_pass_through_and_the_row_says_d(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["bench-scale", "--agents", "3", "--brokers", "embedded", "--workers", "1",
                 "--rounds", "1", "--key-bits", "512", "--spare-sensors", "3",
                 "--json", str(out)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.startswith("| agents |    d |")
    assert row.startswith("|      3 |    8 | embedded  |")
    [saved] = json.loads(out.read_text())
    assert saved["d"] == 8 and saved["ok"] and len(saved["round_seconds"]) == 1
    assert saved["puback_timeouts"] == 0 and saved["gave_up"] == 0
