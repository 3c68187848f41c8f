"""runtime.locks: one holder at a time; a place that cannot hold a lock is one clear line."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fedmq.protocol.errors import ConfigError
from fedmq.runtime.locks import locked


def test_a_second_holder_waits_and_a_timeout_names_the_file(tmp_path: Path) -> None:
    path, order = tmp_path / "state" / "allow.json", []

    def second() -> None:
        with locked(path):
            order.append("second")

    with locked(path):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        order.append("first")
        with pytest.raises(ConfigError, match=r"allow\.json is locked by another fedmq command"), \
                locked(path, timeout=0.1):
            pass
    thread.join(5)
    assert order == ["first", "second"]


def test_a_file_where_the_folder_should_be_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot make the folder .*state for .*p\.key: a "
                                          "file of that name is in the way"), \
            locked(tmp_path / "state" / "p.key"):
        pass
