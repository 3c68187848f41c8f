"""Raising one logger's level for a block: the run summarises what it would repeat."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quieted(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Hide logger ``name``'s records below ``level`` for the block, then restore it."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)
