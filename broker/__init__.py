"""Gateway side: the embedded amqtt broker and its configuration (needs the ``gateway`` extra)."""

from broker.config import BrokerSettings

__all__ = ["BrokerSettings"]
