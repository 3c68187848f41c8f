"""Error type shared by the whole ``models`` package."""

from __future__ import annotations


class ModelError(ValueError):
    """Invalid spec, hyperparameter, input data, parameter vector or model file.

    Subclasses ``ValueError`` so callers that already guard numeric code with
    ``except ValueError`` keep working, while fedmq code can catch precisely this.
    """
