"""``fedmq bench-trustees``: what threshold decryption by t-of-k trustees costs per round.

In process, no broker: real Trustee objects (own share, signing key, allow-list file,
fsynced ledger) verify genuine signed updates (benchmarks.inbound_fleet) and answer a
real TrusteePanel; close_round groups the round as the service does. Baselines from
the same run: phe key generation, and the same round closed with the whole key (the
threshold key's own primes), whose results must be equal bit for bit. Trustees work
in parallel on their own machines: the close time they add is estimated as the sum
over requests of the slowest trustee's answer plus the aggregator's part. CPU
seconds of this process (time.process_time), medians of the repeats.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from fedmq.aggregator.culprits import Suspects
from fedmq.aggregator.outcome import Closing, close_round
from fedmq.aggregator.trustees import RoundDecryptor, TrusteeInfo, TrusteePanel, TrusteeSet
from fedmq.benchmarks.inbound import _close, check_sum, open_round
from fedmq.benchmarks.inbound_fleet import BenchFleet, build_fleet
from fedmq.protocol.crypto.paillier import PaillierPrivateKey, PaillierPublicKey, generate_keypair
from fedmq.protocol.crypto.signing import Signer, public_key_hex
from fedmq.protocol.crypto.threshold import (
    KeyShare,
    ThresholdPublic,
    deal,
    deal_from_primes,
    generate_safe_prime,
)
from fedmq.protocol.messages import PubKeyMessage
from fedmq.protocol.wire import decode_update
from fedmq.runtime.quiet import quieted
from fedmq.runtime.transport import MqttSettings
from fedmq.trustee.config import TrusteeConfig
from fedmq.trustee.service import Trustee

AGGREGATOR = Signer.from_seed(b"bench-trustees:aggregator")
clock = time.process_time  # CPU: the machine may be shared (fsync waits are not in it)


@dataclass(frozen=True)
class Ceremony:
    """A threshold key dealt from two safe primes, and the whole key they make (baseline)."""

    public: ThresholdPublic
    shares: tuple[KeyShare, ...]
    private_key: PaillierPrivateKey

    @property
    def public_key(self) -> PaillierPublicKey:
        return self.private_key.public_key


def ceremony(bits: int, trustees: int, threshold: int) -> Ceremony:
    p = q = generate_safe_prime(bits // 2)
    while q == p:
        q = generate_safe_prime(bits // 2)
    public, shares = deal_from_primes(p, q, trustees, threshold)
    return Ceremony(public, tuple(shares), PaillierPrivateKey(public.public_key, p, q))


@dataclass(frozen=True)
class Keygen:
    bits: int
    phe: float  # generate_keypair, median seconds
    deal: float  # deal(bits, k, t): safe primes, shares, verification keys


@dataclass(frozen=True)
class RoundCost:
    """One training round of ``devices`` updates; seconds per round, medians of the repeats."""

    devices: int
    d: int
    ciphertexts: int  # per update, so per request and per partial decryption
    requests: int  # decryptions: each a vote request and a decrypt request
    request_bytes: float  # mean per request
    reply_bytes: float  # mean per reply
    aggregator_keep: float  # baseline: the aggregator decodes, verifies, sums the N updates
    trustee_keep: float  # (a) the slowest trustee's handle() of the N updates
    baseline_close: float  # close_round with the whole key
    trustee_answers: float  # (b) the slowest trustee, all the round's requests
    aggregator_added: float  # (c) requests out, replies in, T proofs each, combine
    added: float  # (e) sum over requests of (slowest trustee + aggregator's part)
    equal: bool  # every repeat: the same Closing, avg_delta bit for bit
    trustees: int = 3

    @property
    def messages(self) -> int:
        """Per decryption: a vote request and a decrypt request, each trustee answering."""
        return 2 * self.requests * (1 + self.trustees)


class Wire:
    """The broker, in process: a request reaches every trustee in turn; replies go back."""

    def __init__(self, trustees: Sequence[Trustee]) -> None:
        self.trustees = trustees
        self.outbox: dict[str, list[bytes]] = {}
        for t in trustees:
            box = self.outbox[t.config.trustee_id] = []
            t._publish = box.append  # type: ignore[method-assign, assignment]
        self.panel: TrusteePanel | None = None
        self.seen: set[bytes] = set()
        self.answers: list[list[float]] = []  # per request: each trustee's seconds
        self.request_bytes: list[int] = []
        self.reply_bytes: list[int] = []
        self.inside = 0.0  # seconds spent in here (the trustees' side)

    def publish(self, topic: str, payload: bytes) -> None:
        if payload in self.seen:  # a re-send (RESEND elapsed while they worked)
            return
        start = clock()
        self.seen.add(payload)
        self.request_bytes.append(len(payload))
        seconds = []
        for t in self.trustees:
            t0 = clock()
            t.handle(topic, payload)
            seconds.append(clock() - t0)
        self.answers.append(seconds)
        assert self.panel is not None
        for tid, box in self.outbox.items():
            for reply in box:
                self.reply_bytes.append(len(reply))
                self.panel.deliver(self.panel.topics.trustee_reply(tid), reply)
            box.clear()
        self.inside += clock() - start


@dataclass(frozen=True)
class Timed:
    """aggregator.culprits.Decryptor: the round's decryptor, the trustees' time taken out."""

    inner: RoundDecryptor
    wire: Wire
    seconds: list[float]

    @property
    def public_key(self) -> PaillierPublicKey:
        return self.inner.public_key

    def decrypt(self, group: frozenset[str], ciphertexts: Sequence[int]) -> list[int]:
        inside, start = self.wire.inside, clock()
        out = self.inner.decrypt(group, ciphertexts)
        self.seconds.append(clock() - start - (self.wire.inside - inside))
        return out


def trustees_for(fleet: BenchFleet, key: Ceremony, root: Path) -> list[Trustee]:
    """One Trustee per share, as ``fedmq trustee`` would load it, having seen the pubkey."""
    allow = root / "allow_list.json"
    root.mkdir(parents=True, exist_ok=True)
    allow.write_text(json.dumps({"schema": "fedmq.allow-list/1", "agents": {
        a: public_key_hex(k) for a, k in fleet.allow_list.items()}}))
    announce = PubKeyMessage(
        fleet=fleet.topics.fleet, n_hex=format(fleet.public_key.n, "x"),
        fingerprint=fleet.key_fingerprint, codec=fleet.codec, statistics=fleet.statistics,
        signing_key=AGGREGATOR.public_hex).to_bytes(AGGREGATOR)
    out = []
    signers = {f"trustee-{s.index}": Signer.from_seed(f"bench-trustees:trustee-{s.index}"
                                                      .encode()) for s in key.shares}
    roster = TrusteeSet(key.public, {f"trustee-{s.index}": TrusteeInfo(
        s.index, signers[f"trustee-{s.index}"].public_key) for s in key.shares})
    for share in key.shares:
        tid = f"trustee-{share.index}"
        config = TrusteeConfig(
            trustee_id=tid, share_file="", signing_key_file="", allow_list_file=str(allow),
            state_dir=str(root / tid), aggregator_signing_key=AGGREGATOR.public_hex,
            mqtt=MqttSettings(), topics=fleet.topics)
        trustee = Trustee(config, share=share, signer=signers[tid], roster=roster)
        trustee.handle(fleet.topics.pubkey, announce)
        out.append(trustee)
    return out


def _same(a: Closing, b: Closing) -> bool:
    return (a.avg_delta is not None and b.avg_delta is not None
            and a.avg_delta.tobytes() == b.avg_delta.tobytes()
            and (a.kept, a.excluded, a.total_weight, a.evaluation, a.groups)
            == (b.kept, b.excluded, b.total_weight, b.evaluation, b.groups))


def one_round(fleet: BenchFleet, key: Ceremony, root: Path) -> RoundCost:
    state = open_round(fleet)
    start = clock()
    for agent, payload in fleet.payloads:
        state.offer(decode_update(payload, fleet.public_key), agent)
    aggregator_keep = clock() - start
    start = clock()
    baseline = _close(fleet, state)
    baseline_close = clock() - start
    check_sum(fleet, baseline)

    trustees = trustees_for(fleet, key, root)
    keep = []
    for t in trustees:
        start = clock()
        for agent, payload in fleet.payloads:
            t.handle(fleet.topic(agent), payload)
        keep.append(clock() - start)
        if any(t.holdings.get(state.run_id, state.round_id, a, state.hashes[a].hex()) is None
               for a, _ in fleet.payloads):
            raise AssertionError(f"{t.config.trustee_id} did not keep every update")
    wire = Wire(trustees)
    infos = {t.config.trustee_id: TrusteeInfo(t.share.index, t.signer.public_key)
             for t in trustees}
    panel = wire.panel = TrusteePanel(TrusteeSet(key.public, infos), fleet.topics, wire.publish,
                                      timeout=3600.0, attempts=0)
    aggregator: list[float] = []
    closing = close_round(state, Timed(panel.for_round(state), wire, aggregator), Suspects(),
                          spec=fleet.spec, codec=fleet.codec, statistics=fleet.statistics)
    # Two requests per decryption: the votes for the log entry, then its partial decryptions.
    if any(t.refused for t in trustees) or 2 * len(aggregator) != len(wire.answers):
        raise AssertionError("a trustee refused, or a request went unanswered")
    phases = [[v + d for v, d in zip(wire.answers[i], wire.answers[i + 1], strict=True)]
              for i in range(0, len(wire.answers), 2)]
    return RoundCost(
        devices=len(fleet.payloads), d=len(fleet.spec.features),
        ciphertexts=fleet.layout.plaintext_count(), requests=len(aggregator),
        request_bytes=statistics.mean(wire.request_bytes),
        reply_bytes=statistics.mean(wire.reply_bytes), aggregator_keep=aggregator_keep,
        trustee_keep=max(keep), baseline_close=baseline_close,
        trustee_answers=max(map(sum, zip(*wire.answers, strict=True))),
        aggregator_added=sum(aggregator),
        added=sum(max(a) + s for a, s in zip(phases, aggregator, strict=True)),
        equal=_same(baseline, closing), trustees=len(trustees))


def measure(fleet: BenchFleet, key: Ceremony, *, repeats: int = 3,
            state_dir: Path | None = None) -> RoundCost:
    """Medians of ``repeats`` rounds, each with fresh trustees (and ledgers)."""
    with tempfile.TemporaryDirectory(prefix="fedmq-trustees-", dir=state_dir) as tmp:
        runs = [one_round(fleet, key, Path(tmp) / f"round-{i}") for i in range(repeats)]
    floats = {f.name: statistics.median(getattr(r, f.name) for r in runs)
              for f in fields(RoundCost) if f.type == "float"}
    return replace(runs[0], **floats, equal=all(r.equal for r in runs))


def keygen(bits: int, trustees: int, threshold: int, repeats: int) -> Keygen:
    def timed(fn: Callable[[], object]) -> float:
        start = clock()
        fn()
        return clock() - start
    return Keygen(bits, statistics.median(timed(lambda: generate_keypair(bits))
                                          for _ in range(repeats)),
                  statistics.median(timed(lambda: deal(bits, trustees, threshold))
                                    for _ in range(repeats)))


def end_to_end(*, agents: int, bits: int, trustees: int, threshold: int, seed: int,
               out: Path) -> tuple[float, float]:
    """Mean training-round seconds of two simulations (same seed): whole key, trustees."""
    from fedmq.simulation.options import SimulationOptions, default_workers
    from fedmq.simulation.run import Simulation

    means = []
    for k, t in ((0, 0), (trustees, threshold)):
        opts = SimulationOptions(agents=agents, rounds=3, key_bits=bits, seed=seed,
                                 trustees=k, threshold=t, plot=False, workers=default_workers(),
                                 out_dir=str(out / ("trustees" if k else "whole-key")))
        rows = Simulation(opts, progress=lambda _line: None).run().rows
        means.append(float(np.mean([r.seconds for r in rows if r.phase == "training"])))
    return means[0], means[1]


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    return ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows)]


def tables(keys: Sequence[Keygen], rounds: Sequence[RoundCost], *, bits: int, trustees: int,
           threshold: int, repeats: int) -> str:
    """CPU seconds, medians of ``repeats``; ratios against the baselines of the same run."""
    out = [f"\nkey generation, {threshold}-of-{trustees} (CPU s, median of {repeats})"]
    out += _table(("bits", "phe generate_keypair", "deal (safe primes, shares)", "x phe"),
                  [(str(k.bits), f"{k.phe:.2f}", f"{k.deal:.2f}", f"{k.deal / k.phe:.1f}")
                   for k in keys])
    out.append(f"\none training round, {bits}-bit key, {threshold}-of-{trustees} trustees, "
               f"robust groups (CPU s, median of {repeats})\n(a) while the round is open: "
               "verify and keep its N updates")
    out += _table(("devices", "d", "cts", "aggregator", "each trustee", "trustee ms/update",
                   "x aggregator"),
                  [(str(r.devices), str(r.d), str(r.ciphertexts), f"{r.aggregator_keep:.3f}",
                    f"{r.trustee_keep:.3f}", f"{1000 * r.trustee_keep / r.devices:.2f}",
                    f"{r.trustee_keep / r.aggregator_keep:.1f}") for r in rounds])
    out.append("\nat the close: (b) slowest trustee, all its answers; (c) aggregator's part "
               "(requests, T proofs each, combine);\n(e) added = sum over requests of "
               "(slowest trustee + aggregator's part)")
    out += _table(("devices", "d", "requests", "whole-key close", "(b) trustee", "(c) aggregator",
                   "(e) added", "x close", "equal"),
                  [(str(r.devices), str(r.d), str(r.requests), f"{r.baseline_close:.3f}",
                    f"{r.trustee_answers:.3f}", f"{r.aggregator_added:.3f}", f"{r.added:.3f}",
                    f"{(r.baseline_close + r.added) / r.baseline_close:.1f}",
                    "yes" if r.equal else "NO") for r in rounds])
    out.append("\n(d) messages added per round: the requests and every trustee's reply to each")
    out += _table(("devices", "d", "requests", "bytes/request", "replies", "bytes/reply",
                   "messages"),
                  [(str(r.devices), str(r.d), str(r.requests), f"{r.request_bytes:,.0f}",
                    str(r.requests * r.trustees), f"{r.reply_bytes:,.0f}", str(r.messages))
                   for r in rounds])
    out.append("x close: (whole-key close + added) / whole-key close. equal: avg_delta bit for "
               "bit (and kept, weight, evaluation) in every repeat.")
    return "\n".join(out)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers") from None


def cmd_bench_trustees(args: argparse.Namespace) -> int:
    start, k, t = time.perf_counter(), args.trustees, args.threshold
    keys = [keygen(b, k, t, args.repeats) for b in args.keygen_bits or [args.bits]]
    key = ceremony(args.bits, k, t)
    rounds = []
    for devices in args.devices:
        for d in args.dims:
            fleet = build_fleet(bits=args.bits, d=d, updates=devices, seed=args.seed,
                                key=(key.public_key, key.private_key))
            with quieted("fedmq.trustee.service", logging.WARNING):  # a line per partial
                rounds.append(measure(fleet, key, repeats=args.repeats))
            print(f"measured {devices} devices, d = {d} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(tables(keys, rounds, bits=args.bits, trustees=k, threshold=t, repeats=args.repeats))
    doc: dict[str, object] = {"keygen": [asdict(x) for x in keys],
                              "rounds": [asdict(r) for r in rounds]}
    if args.end_to_end:
        print(f"end to end: two simulations of {args.e2e_agents} agents ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="fedmq-trustees-e2e-") as tmp, \
                quieted(""), quieted("amqtt"):  # the agents' lines, convergence notes
            whole, split = end_to_end(agents=args.e2e_agents, bits=args.bits, trustees=k,
                                      threshold=t, seed=args.seed, out=Path(tmp))
        doc["end_to_end"] = {"agents": args.e2e_agents, "whole_key_s": whole, "trustees_s": split}
        print(f"\nend to end, {args.e2e_agents} agents, 3 rounds, same seed: mean training "
              f"round {whole:.2f} s with the whole key, {split:.2f} s with {t}-of-{k} "
              f"trustees ({split / whole:.2f}x)")
    print(f"\nbench-trustees took {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if all(r.equal for r in rounds) else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-trustees", help=help_text, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=_ints, default=[20, 1000], help="updates per round")
    p.add_argument("--dims", type=_ints, default=[5, 100], help="features d")
    p.add_argument("--bits", type=int, default=2048, help="Paillier key size")
    p.add_argument("--keygen-bits", type=_ints, help="key sizes to deal (default: --bits)")
    p.add_argument("--trustees", type=int, default=3, help="k: shares dealt")
    p.add_argument("--threshold", type=int, default=2, help="t: shares a decryption needs")
    p.add_argument("--repeats", type=int, default=3, help="medians over this many rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--end-to-end", action="store_true",
                   help="also two simulations (same seed), whole key and trustees")
    p.add_argument("--e2e-agents", type=int, default=20)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench_trustees)
