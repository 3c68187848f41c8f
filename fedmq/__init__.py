"""fedmq: federated learning for IoT fleets over MQTT; here the command line and provisioning.

The roles, the protocol and the simulation are subpackages: fedmq.edge_agent,
fedmq.aggregator, fedmq.broker, fedmq.relay, fedmq.protocol, fedmq.models, fedmq.simulation.
"""

from fedmq.runtime import __version__

__all__ = ["__version__"]
