"""``fedmq simulate``'s differential privacy: flags -> the aggregator's [privacy] terms."""

from __future__ import annotations

import argparse
from typing import Any

from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.privacy.terms import PrivacyTerms

FLAGS = {"dp_epsilon": "--dp-epsilon", "dp_delta": "--dp-delta", "dp_clip": "--dp-clip",
         "dp_noise": "--dp-noise", "dp_sample_epsilon": "--dp-sample-epsilon",
         "dp_sample_clip": "--dp-sample-clip"}


def add_privacy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dp-epsilon", type=float, metavar="EPS",
                   help="device-level differential privacy: the run's budget (noise added by "
                   "each device inside the encrypted sum; the run stops before passing it)")
    p.add_argument("--dp-delta", type=float, help="delta of the guarantees (default 1e-5)")
    p.add_argument("--dp-clip", type=float,
                   help="L2 norm bound of one device's update (default 0.5)")
    p.add_argument("--dp-noise", type=float, metavar="Z",
                   help="noise multiplier (default: the smallest that fits --dp-epsilon "
                   "over --rounds rounds at the quorum)")
    p.add_argument("--dp-sample-epsilon", type=float, metavar="EPS",
                   help="sample-level DP-SGD on each device: its budget over the run")
    p.add_argument("--dp-sample-clip", type=float,
                   help="L2 norm bound of one example's gradient (default 1.0)")


def privacy_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}


def simulation_privacy(opts: Any, spec: ModelSpec, quorum: int,
                       codec: CodecParams) -> PrivacyTerms:
    """The terms a simulation's aggregator announces. With datasheet scaling nothing
    exact leaves the devices; with the statistics round ("federated" asked for
    explicitly) its totals and the fleet metrics are released outside the budget."""
    # Here, not at the top: `fedmq --help` and a device's `fedmq agent` build this parser.
    from fedmq.aggregator.privacy import privacy_terms
    from fedmq.aggregator.schema import PrivacyTable

    table = PrivacyTable(epsilon=opts.dp_epsilon, delta=opts.dp_delta, clip=opts.dp_clip,
                         noise_multiplier=opts.dp_noise,
                         sample_epsilon=opts.dp_sample_epsilon, sample_delta=opts.dp_delta,
                         sample_clip=opts.dp_sample_clip,
                         exact_aggregates=opts.scaling == "federated")
    return privacy_terms(table, spec=spec, rounds=opts.rounds, quorum=quorum, codec=codec)
