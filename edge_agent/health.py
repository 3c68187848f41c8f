"""Why this device sits out a round: the skip code, the status detail and the fix.

A round the device cannot serve with its data is skipped, not fatal: the agent
says why in its retained status (protocol.health.Skip, for the gateway's
counts) and in one log line with the fix (for whoever looks after the device).
"""

from __future__ import annotations

import re

from fedmq.models.errors import DivergedError, LabelError
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.health import SKIP_CODES

FIXES = {
    "bad-labels": "the label column must hold finite numbers (class numbers 0, 1, ... for a "
                  "classifier); fix the data file, the agent reads it again before each round",
    "class-outside-model": "this device has labels the fleet model has no class for: map them "
                           "to 0..n_classes-1, or raise [model] n_classes on the gateway",
    "feature-mismatch": "set [data] features in agent.toml to the fleet model's features "
                        "(same names, same order) and restart the agent",
    "data-error": "fix the data file; the agent reads it again before each round",
    "diverged": "local training blew up: the gateway should lower [training] learning_rate "
                "or scale the features ([model] center/scale)",
    "privacy-budget": "this device's own privacy limits say no (device level: the run's "
                      "budget or [privacy] max_epsilon, max_alone_epsilon or max_quorum in "
                      "agent.toml; sample level: the run's sample_epsilon or "
                      "max_sample_epsilon): it sits out by design; raise a limit only if the "
                      "gateway's terms are what you agreed to; an unreadable ledger file must "
                      "be restored, it is never reset",
}


class RoundSkipped(ConfigError):
    """This device cannot serve the round with its data; ``code`` is a SKIP_CODES entry.

    ``detail`` goes to the gateway, so it names columns and ranges, never row values
    or local paths; the message (for the local log) may say more. ``refusal``: the
    gateway's terms are outside this device's own limits, not a fault of the device:
    the log says it once per run, as a WARNING (the status still names every round).
    """

    def __init__(self, code: str, message: str, detail: str | None = None, *,
                 refusal: bool = False) -> None:
        if code not in SKIP_CODES:
            raise ValueError(f"skip code must be one of {SKIP_CODES}, got {code!r}")
        super().__init__(message)
        self.code = code
        self.detail = message if detail is None else detail  # Skip.make cuts it to fit
        self.refusal = refusal


def skip_code(exc: BaseException) -> str:
    """The skip code for an error the model raised on local data.

    Label errors carry their reason (models.errors.LabelError.code); a diverging
    step is its own code; anything else about the local data is a data error.
    """
    if isinstance(exc, LabelError):
        return exc.code
    if isinstance(exc, DivergedError):
        return "diverged"
    return "data-error"


def public_detail(message: str, path: str) -> str:
    """A data-file error as the gateway may see it: no local path, no cell values."""
    text = re.sub(r"(data file )?" + re.escape(path) + r":(\d+)", r"data file line \2",
                  message)
    text = text.replace(f"data file {path}", "the data file").replace(path, "the data file")
    # load_csv puts the parser's own words, which quote the offending cell, in parentheses.
    return re.sub(r" \([^()]*\)", "", text)


def skip_line(round_id: int, code: str, message: str) -> str:
    """The one log line for a skipped round: what happened and what fixes it."""
    return f"round {round_id} skipped ({code}): {message}; fix: {FIXES[code]}"
