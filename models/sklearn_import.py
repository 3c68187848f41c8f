"""scikit-learn is optional (the ``sklearn`` and ``gateway`` extras): a device never needs it."""

from __future__ import annotations

import importlib
from types import ModuleType


def linear_model() -> ModuleType:
    """``sklearn.linear_model``, or an ImportError that names the extra to install."""
    try:
        return importlib.import_module("sklearn.linear_model")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            'to_sklearn() needs scikit-learn, which is not installed: pip install '
            '"fedmq[sklearn]"', name=exc.name) from exc
