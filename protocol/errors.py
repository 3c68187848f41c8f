"""The small exception hierarchy shared by every fedmq role.

Callers catch ``FedmqError`` at process boundaries (CLI, MQTT callbacks) and
turn it into one log line or a one-line error; anything else is a bug.
"""

from __future__ import annotations


class FedmqError(Exception):
    """Base class for every error fedmq raises on purpose."""


class ConfigError(FedmqError):
    """A configuration file or option is missing or invalid."""


class ProtocolError(FedmqError):
    """A payload does not follow the wire contract (malformed, foreign, wrong version)."""


class CodecError(ProtocolError):
    """Values cannot be encoded or a decrypted sum cannot be decoded."""


class CodecOverflowError(CodecError):
    """A decoded sum lies outside what the declared bounds allow.

    Raised instead of returning a wrapped, silently wrong number.
    """


class KeyMismatchError(ProtocolError):
    """A payload was made for another Paillier key or other codec parameters."""


class DecryptionUnavailable(FedmqError):
    """The trustees did not decrypt a sum: silent through every extension, or refusing."""
