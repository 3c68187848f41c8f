"""fedmq: federated learning for IoT fleets over MQTT."""

__version__ = "0.1.0"
