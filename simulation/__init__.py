"""The fleet simulation: a whole fleet on one machine (``fedmq simulate``), real MQTT throughout.

``run`` sequences one simulation; ``options``/``config`` read its flags and ``[simulate]``
table; ``broker`` starts the embedded broker or Mosquitto; ``shards`` runs the agents on
threads or worker processes; ``synthetic`` and ``datasets`` make the devices' data;
``tasks``, ``privacy``, ``table``, ``plot`` and ``rundirs`` are what a run learns, spends,
prints and writes. It lies below the command line and above every role.
"""
