"""The shared runtime beneath the roles: MQTT transport, file writes, config loading.

Imports run downward: ``fedmq`` (CLI, simulation) -> ``edge_agent``, ``aggregator``,
``broker`` -> ``runtime`` -> ``protocol``, ``models``.
"""

__version__ = "0.1.0"
