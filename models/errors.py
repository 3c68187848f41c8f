"""Error types shared by the whole ``models`` package."""

from __future__ import annotations

from typing import Literal, TypeAlias

LabelCode: TypeAlias = Literal["bad-labels", "class-outside-model"]
LABEL_CODES: tuple[LabelCode, ...] = ("bad-labels", "class-outside-model")


class ModelError(ValueError):
    """Invalid spec, hyperparameter, input data, parameter vector or model file.

    Subclasses ``ValueError`` so callers that already guard numeric code with
    ``except ValueError`` keep working, while fedmq code can catch precisely this.
    """


class LabelError(ModelError):
    """The labels cannot be used with this model; ``code`` says why, for a device's skip.

    ``"bad-labels"``: not numbers, NaN/infinite, or non-integer class labels.
    ``"class-outside-model"``: integer class labels outside ``[0, n_classes)``.
    The message names ranges only, never individual rows.
    """

    def __init__(self, code: LabelCode, message: str) -> None:
        if code not in LABEL_CODES:
            raise ValueError(f"LabelError code must be one of {LABEL_CODES}, got {code!r}")
        super().__init__(message)
        self.code: LabelCode = code


class DivergedError(ModelError):
    """SGD produced non-finite parameters (learning rate too high for the data's scale)."""
