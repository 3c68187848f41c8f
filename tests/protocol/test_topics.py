from __future__ import annotations

import pytest

from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics


def test_topic_layout():
    t = Topics("plant-7", prefix="acme/fl")
    assert t.pubkey == "acme/fl/plant-7/pubkey"
    assert t.round == "acme/fl/plant-7/round"
    assert t.update("pi-001") == "acme/fl/plant-7/update/pi-001"
    assert t.status("pi-001") == "acme/fl/plant-7/status/pi-001"
    assert t.updates_filter == "acme/fl/plant-7/update/+"


def test_agent_of_parses_only_its_own_shape():
    t = Topics("f")
    assert t.agent_of("fedmq/f/update/a-1", "update") == "a-1"
    assert t.agent_of("fedmq/f/update/a/b", "update") is None
    assert t.agent_of("fedmq/g/update/a", "update") is None
    assert t.agent_of("fedmq/f/status/a", "update") is None


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "x" * 65, " a"])
def test_names_with_topic_syntax_are_refused(bad):
    with pytest.raises(ConfigError):
        Topics(bad)
    with pytest.raises(ConfigError):
        Topics("ok").update(bad)
