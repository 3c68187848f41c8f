"""fedmq: federated learning for IoT fleets over MQTT. This package is the command line and
provisioning; the roles, the protocol and the simulation are its subpackages (fedmq.edge_agent,
fedmq.aggregator, fedmq.broker, fedmq.relay, fedmq.protocol, fedmq.models, fedmq.simulation)."""

from fedmq.runtime import __version__

__all__ = ["__version__"]
