"""The fleet's live page, Prometheus metrics and ``fedmq status``: a read-only view."""
