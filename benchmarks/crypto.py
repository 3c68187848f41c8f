"""Encrypted-update cost: packed codec + precomputed obfuscators vs one ciphertext per value.

Measures, per key size and parameter count d, in one run on this machine:

- agent online time: from a finished local delta to the bytes ready to publish
  (quantize, pack, encrypt with pooled obfuscators, serialize, sign);
- agent crypto CPU per round including precomputing that round's obfuscators
  (standard r^n and the DJN fixed-base variant), against the per-value codec
  encrypting every value with phe;
- bytes on the wire per update and the ratio to float32 (4 bytes per parameter);
- aggregator sum + decrypt + decode for 10, 100, 1000 agents;
- the largest error of the decoded weighted mean against numpy, relative to clip.

Per-value baselines beyond ``baseline_max`` values are measured on that many
values and scaled linearly (their cost is exactly linear in d); such cells are
flagged ``extrapolated`` in the JSON and marked ``~`` in the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.benchmarks.report import check_targets, tables, write_json
from fedmq.edge_agent.obfuscator_pool import ObfuscatorPool
from fedmq.protocol.crypto.codec import CodecParams, make_codec, mean_from_sums, quantize_update
from fedmq.protocol.crypto.obfuscation import make_obfuscators
from fedmq.protocol.crypto.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    add_ciphertexts,
    decrypt_ints,
    encrypt_ints,
    fingerprint,
    generate_keypair,
)
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.layout import contract_digest
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.wire import UpdateMessage, encode_update

_SIGNER = Signer.generate()  # the online time includes the update's Ed25519 signature
DISTINCT_AGENTS = 8  # distinct encrypted updates; larger fleets cycle through them


@dataclass
class BenchOptions:
    bits: Sequence[int] = (2048, 3072)
    dims: Sequence[int] = (100, 1000, 10_000)
    agents: Sequence[int] = (10, 100, 1000)
    baseline_max: int = 1001
    repeats: int = 5
    seed: int = 0
    progress: Callable[[str], None] = field(default=lambda _msg: None)


def _cpu(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def _wall(fn: Callable[[], Any]) -> tuple[float, Any]:  # elapsed, for latency
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _payload(pub: PaillierPublicKey, params: CodecParams, cts: Sequence[int],
             n_values: int) -> bytes:
    fp = fingerprint(pub)
    return encode_update(UpdateMessage(
        fleet="bench", run_id="0123456789abcdef", round_id=1, agent_id="agent-0001",
        key_fingerprint=fp,
        codec_digest=contract_digest(params, StatsParams(), fp), n_values=n_values,
        ciphertexts=tuple(cts)), pub, _SIGNER)


def _fleet(d: int, params: CodecParams, rng: np.random.Generator
           ) -> tuple[list[np.ndarray], list[int]]:
    deltas = [rng.uniform(-params.clip, params.clip, size=d) for _ in range(DISTINCT_AGENTS)]
    weights = [int(w) for w in rng.integers(1, params.max_weight + 1, size=DISTINCT_AGENTS)]
    return deltas, weights


def bench_agent(pub: PaillierPublicKey, d: int, opts: BenchOptions) -> dict[str, Any]:
    packed = CodecParams()
    per_value = CodecParams(name="per-value/1")
    rng = np.random.default_rng(opts.seed)
    delta = rng.uniform(-packed.clip, packed.clip, size=d)
    weight = 700
    codec = make_codec(packed, pub.n)
    n_cts = codec.plaintext_count(d + 1)

    # Precompute: one round's obfuscators, each source, CPU time.
    djn_table_s, djn = _cpu(lambda: make_obfuscators("djn", pub))
    std = make_obfuscators("standard", pub)
    pre_djn, _ = _cpu(lambda: [djn.next() for _ in range(n_cts)])
    pre_std, _ = _cpu(lambda: [std.next() for _ in range(n_cts)])

    # Online: a full pool, as after an idle period; median of several rounds.
    pool = ObfuscatorPool(djn, target=n_cts * opts.repeats)
    pool.wait_full(timeout=600)

    def online() -> bytes:
        values, _ = quantize_update(delta, weight, packed)
        plaintexts = codec.encode(values)
        cts = encrypt_ints(pub, plaintexts, pool.take(len(plaintexts)))
        return _payload(pub, packed, cts, d + 1)

    online_times, online_cpus, payload = [], [], b""
    for _ in range(opts.repeats):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        payload = online()
        online_times.append(time.perf_counter() - wall_start)
        online_cpus.append(time.process_time() - cpu_start)
    online_cpu = statistics.median(online_cpus)
    assert pool.inline == 0, "the pool ran dry: online time would include precomputation"
    pool.close()

    # Baseline: per-value codec, phe encryption of every value (no precomputation).
    pv_codec = make_codec(per_value, pub.n)
    pv_values, _ = quantize_update(delta, weight, per_value)
    sample = pv_values[:opts.baseline_max]
    pv_cpu, pv_cts = _cpu(lambda: encrypt_ints(pub, pv_codec.encode(sample)))
    scale = len(pv_values) / len(sample)
    # Exact baseline size: d+1 ciphertexts (cycled from the measured ones) in the same format.
    pv_bytes = len(_payload(pub, per_value, [pv_cts[i % len(pv_cts)] for i in range(d + 1)],
                            d + 1))

    total_djn = pre_djn + online_cpu
    total_std = pre_std + online_cpu
    base_total = pv_cpu * scale
    return {
        "d": d, "ciphertexts": n_cts, "bytes": len(payload),
        "bytes_per_float32_byte": len(payload) / (4 * d),
        "online_ms": 1000 * statistics.median(online_times),
        "online_cpu_ms": 1000 * online_cpu,
        "precompute_djn_ms": 1000 * pre_djn, "precompute_std_ms": 1000 * pre_std,
        "djn_table_ms": 1000 * djn_table_s,
        "total_djn_ms": 1000 * total_djn, "total_std_ms": 1000 * total_std,
        "baseline": {"ciphertexts": d + 1, "bytes": pv_bytes,
                     "bytes_per_float32_byte": pv_bytes / (4 * d),
                     "total_ms": 1000 * base_total, "extrapolated": scale > 1,
                     "measured_values": len(sample)},
        "speedup_djn": base_total / total_djn, "speedup_std": base_total / total_std,
        "traffic_reduction": pv_bytes / len(payload),
    }


def bench_aggregator(pub: PaillierPublicKey, priv: PaillierPrivateKey, d: int,
                     opts: BenchOptions) -> list[dict[str, Any]]:
    params = CodecParams()
    codec = make_codec(params, pub.n)
    rng = np.random.default_rng(opts.seed + 1)
    deltas, weights = _fleet(d, params, rng)
    source = make_obfuscators("djn", pub)
    updates = []
    for delta, w in zip(deltas, weights, strict=True):
        plaintexts = codec.encode(quantize_update(delta, w, params)[0])
        updates.append(encrypt_ints(pub, plaintexts, [source.next() for _ in plaintexts]))
    # Per-value baseline: the same d+1 ciphertexts per agent, summed and decrypted one by one.
    pv_pub_cts = encrypt_ints(pub, [1] * min(d + 1, 64))
    pv_add_s, _ = _cpu(lambda: add_ciphertexts(pub, pv_pub_cts, pv_pub_cts))
    pv_dec_s, _ = _cpu(lambda: decrypt_ints(priv, pv_pub_cts))
    per_ct_add, per_ct_dec = pv_add_s / len(pv_pub_cts), pv_dec_s / len(pv_pub_cts)

    rows = []
    for k in opts.agents:
        if k > params.max_agents:
            continue
        opts.progress(f"  aggregator: {k} agents, d={d}")

        def run(k: int = k) -> tuple[np.ndarray, int]:
            total = updates[0]
            for i in range(1, k):
                total = add_ciphertexts(pub, total, updates[i % DISTINCT_AGENTS])
            sums = codec.decode(decrypt_ints(priv, total), d + 1, k)
            return mean_from_sums(sums, params)

        seconds, (mean, total_weight) = _wall(run)
        idx = [i % DISTINCT_AGENTS for i in range(k)]
        fleet_w = np.array([weights[i] for i in idx], dtype=np.float64)
        clipped = [np.clip(deltas[i], -params.clip, params.clip) for i in idx]
        expect = np.average(np.stack(clipped), axis=0, weights=fleet_w)
        assert total_weight == int(fleet_w.sum())
        baseline = (k - 1) * (d + 1) * per_ct_add + (d + 1) * per_ct_dec
        rows.append({"d": d, "agents": k, "sum_decrypt_s": seconds,
                     "baseline_s": baseline, "baseline_extrapolated": True,
                     "max_error_rel_clip": float(np.max(np.abs(mean - expect)) / params.clip)})
    return rows


def run(opts: BenchOptions) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": _machine(), "codec": CodecParams().to_dict(),
                               "keys": []}
    for bits in opts.bits:
        opts.progress(f"{bits}-bit key: generating")
        pub, priv = generate_keypair(bits)
        entry: dict[str, Any] = {"bits": bits, "layout": make_codec(CodecParams(), pub.n)
                                 .describe(), "agent": [], "aggregator": []}
        for d in opts.dims:
            opts.progress(f"  agent: d={d}")
            entry["agent"].append(bench_agent(pub, d, opts))
            entry["aggregator"].extend(bench_aggregator(pub, priv, d, opts))
        results["keys"].append(entry)
    return results


def _machine() -> dict[str, Any]:
    import os
    import platform

    import gmpy2
    import phe

    return {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpus": os.cpu_count(),
            "gmpy2": gmpy2.version(), "phe": getattr(phe, "__version__", "?")}


def cmd_bench(args: argparse.Namespace) -> int:
    if args.quick:
        args.bits, args.dims, args.agents, args.baseline_max = [1024], [100, 1000], [10, 100], 200
    if min(args.bits) < 1024 or min(args.dims) < 1 or min(args.agents) < 1:
        raise ConfigError("bench needs --bits >= 1024, --dims >= 1 and --agents >= 1")
    results = run(BenchOptions(
        bits=args.bits, dims=args.dims, agents=args.agents, baseline_max=args.baseline_max,
        repeats=args.repeats, progress=lambda msg: print(msg, file=sys.stderr, flush=True)))
    print(tables(results))
    checks = check_targets(results)
    if checks:
        print("\nTargets at 2048 bits, d = 1000:")
    for name, met, measured in checks:
        print(f"  [{'met ' if met else 'MISS'}] {name}: {measured}")
    write_json(results, Path(args.json))
    print(f"\nresults written to {args.json}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench", help=help_text,
                       description="Measure agent encryption time, bytes on the wire and "
                       "aggregator sum+decrypt for the packed codec with precomputed "
                       "obfuscators against one ciphertext per value, in one run. Prints a "
                       "table, checks the targets and writes JSON.")
    p.add_argument("--bits", type=int, nargs="+", default=[2048, 3072], help="key sizes")
    p.add_argument("--dims", type=int, nargs="+", default=[100, 1000, 10_000],
                   help="model sizes (parameters)")
    p.add_argument("--agents", type=int, nargs="+", default=[10, 100, 1000],
                   help="fleet sizes for the aggregator")
    p.add_argument("--baseline-max", type=int, default=1001,
                   help="per-value baseline: values encrypted for real; beyond, scaled linearly")
    p.add_argument("--repeats", type=int, default=5, help="online-time repetitions (median)")
    p.add_argument("--quick", action="store_true",
                   help="1024-bit key, d=100/1000, 10/100 agents: a smoke run in seconds")
    p.add_argument("--json", default="runs/bench/crypto.json", help="where to write results")
    p.set_defaults(func=cmd_bench)
