"""The contract agents and aggregator share: topics, messages, codecs, Paillier helpers.

Pure: no MQTT client, no files, no clocks beyond message timestamps.
"""

from fedmq.protocol.crypto.codec import (
    CodecParams,
    PackedCodec,
    PerValueCodec,
    make_codec,
    mean_from_sums,
    quantize_update,
)
from fedmq.protocol.errors import (
    CodecError,
    CodecOverflowError,
    ConfigError,
    FedmqError,
    KeyMismatchError,
    ProtocolError,
)
from fedmq.protocol.topics import Topics

__all__ = [
    "CodecError",
    "CodecOverflowError",
    "CodecParams",
    "ConfigError",
    "FedmqError",
    "KeyMismatchError",
    "PackedCodec",
    "PerValueCodec",
    "ProtocolError",
    "Topics",
    "make_codec",
    "mean_from_sums",
    "quantize_update",
]
