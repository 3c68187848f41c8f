from __future__ import annotations

import logging

import pytest

from fedmq.runtime.quiet import quieted


def test_a_quieted_logger_gets_its_level_back_even_after_an_error(caplog):
    log = logging.getLogger("fedmq.test.quiet")
    log.setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger="fedmq.test.quiet"), \
            pytest.raises(RuntimeError), quieted("fedmq.test.quiet", logging.WARNING):
        log.info("hidden")
        log.warning("shown")
        raise RuntimeError
    assert [r.getMessage() for r in caplog.records] == ["shown"]
    assert log.level == logging.INFO
