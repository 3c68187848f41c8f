"""TLS on the embedded broker: server certificate, and client certificates when required."""

from __future__ import annotations

import pytest

from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.transport import MqttLink, MqttSettings


def tls_broker(tls_files: dict[str, str], **kw) -> BrokerSettings:
    return BrokerSettings(port=free_port(), tls_cert_file=tls_files["server_cert"],
                          tls_key_file=tls_files["server_key"], **kw)


def test_clients_that_trust_the_ca_connect_over_tls(tls_files, probe):
    settings = tls_broker(tls_files)
    with EmbeddedBroker(settings):
        link = MqttLink(MqttSettings(port=settings.port, tls=True, ca_file=tls_files["ca"],
                                     connect_timeout=5),
                        client_id="tls-agent", on_message=lambda t, p: None)
        link.connect()  # the real transport, verifying the certificate and 127.0.0.1
        assert link.publish("t", b"over tls")
        link.close()
        assert not probe(settings.port, "plain").connect(timeout=2)
        assert not probe(settings.port, "wrong-ca", tls={"ca_certs": tls_files["other_ca"]}
                         ).connect(timeout=2)


def test_client_certificates_can_be_required(tls_files, probe):
    settings = tls_broker(tls_files, tls_client_ca_file=tls_files["ca"])
    with EmbeddedBroker(settings):
        with_cert = {"ca_certs": tls_files["ca"], "certfile": tls_files["client_cert"],
                     "keyfile": tls_files["client_key"]}
        assert probe(settings.port, "with-cert", tls=with_cert).connect()
        assert not probe(settings.port, "no-cert", tls={"ca_certs": tls_files["ca"]}
                         ).connect(timeout=2)


def test_client_ca_needs_a_server_certificate(tls_files):
    with pytest.raises(ConfigError, match="tls_client_ca_file needs"):
        BrokerSettings(tls_client_ca_file=tls_files["ca"])
