"""fedmq: federated learning for IoT fleets over MQTT (CLI and fleet simulation)."""

from fedmq.runtime import __version__

__all__ = ["__version__"]
