"""Gateway side: the embedded amqtt broker and its configuration (needs the ``gateway`` extra)."""

from fedmq.broker.config import BrokerSettings

__all__ = ["BrokerSettings"]
