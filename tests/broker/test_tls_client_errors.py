"""What a client is told when TLS is on at one end only or its CA does not match the broker.

Real embedded brokers (``tls_files``: a throwaway CA and a certificate for
127.0.0.1); the client is the roles' own transport.
"""

from __future__ import annotations

import time

import pytest

from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.runtime.transport import MqttLink, MqttSettings, TlsMismatch


def link(**settings) -> MqttLink:
    return MqttLink(MqttSettings(connect_timeout=10, **settings), client_id="dev-tls",
                    on_message=lambda t, p: None)


def test_a_plain_client_on_a_tls_port_is_told_to_turn_tls_on(tls_files):
    port = free_port()
    with EmbeddedBroker(BrokerSettings(port=port, tls_cert_file=tls_files["server_cert"],
                                       tls_key_file=tls_files["server_key"])):
        start = time.monotonic()
        with pytest.raises(TlsMismatch) as err:
            link(port=port).connect()
    message = str(err.value)
    assert "no answer within" not in message
    assert f"127.0.0.1:{port}" in message and "is it a TLS port? set [mqtt] tls = true" in message
    assert time.monotonic() - start < 8  # not the 10 s connect timeout


def test_a_tls_client_on_a_plain_port_is_told_it_may_be_a_plain_port(tls_files, broker_port):
    with pytest.raises(TlsMismatch, match="is it a plain MQTT port"):
        link(port=broker_port, tls=True, ca_file=tls_files["ca"]).connect()


def test_a_certificate_from_another_ca_is_named_as_such(tls_files):
    port = free_port()
    with EmbeddedBroker(BrokerSettings(port=port, tls_cert_file=tls_files["server_cert"],
                                       tls_key_file=tls_files["server_key"])), \
            pytest.raises(TlsMismatch, match=r"TLS certificate not accepted .*ca_file"):
        link(port=port, tls=True, ca_file=tls_files["other_ca"]).connect()
