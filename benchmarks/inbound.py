"""``fedmq bench-inbound``: where the aggregator's time goes for one round of N updates.

No broker: the payloads an MQTT client would hand over (benchmarks.inbound_fleet,
real Paillier and Ed25519, distinct keys per agent) go through the aggregator's own
code, stage by stage, on a fresh round each repeat:

- admission: the size check on paho's thread (aggregator.admission);
- decode: header parse, payload hash, every ciphertext validated (range and
  gcd with n, i.e. in Z*_{n^2}) (protocol.wire.decode_update); the line below it
  times the ciphertext validation alone and is part of decode, not added again;
- checks: signature and round rules (RoundState's checks, as offer runs them);
- running product: the homomorphic sum offer keeps (RoundState's add);
- persist (group commit): the accepted payloads committed in batches of
  ``[limits] commit_updates``, one sqlite3 transaction and fsync each
  (aggregator.commit), before they count;
- close: decrypt the sum, decode each section, check its bounds (outcome.close_round).

Then the whole path once more, as the service runs it: Admission.admit then
Inbound.handle for each payload (batches committed as they fill, the last before
the close), and close_round. The baseline, measured in the same run: the same path
with one atomic file and fsync per update, as the aggregator persisted before
group commit; the last column is its time over the group commit's. Wall times,
median of the repeats; the decrypted sum is checked against the plaintext sum
every time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from fedmq.aggregator.admission import Admission
from fedmq.aggregator.checkpoint import Checkpoints
from fedmq.aggregator.config import Limits
from fedmq.aggregator.culprits import Suspects
from fedmq.aggregator.inbound import Inbound
from fedmq.aggregator.outcome import Closing, close_round
from fedmq.aggregator.rounds import RoundState
from fedmq.aggregator.service import BURST
from fedmq.aggregator.verifier import Verifier
from fedmq.benchmarks.inbound_fleet import RUN_ID, BenchFleet, build_fleet
from fedmq.protocol.crypto.codec import mean_from_sums
from fedmq.protocol.crypto.paillier import ciphertext_size, ciphertexts_from_bytes
from fedmq.protocol.sums.evaluation import FleetEvaluation
from fedmq.protocol.wire import decode_update
from fedmq.runtime.files import write_atomic

# The target: 10,000 updates of d = 100 at 2048 bits through admission, decode,
# checks, product and persistence in at most 2.5 s on 2 cores.
TARGET_SIZE = (2048, 100, 10_000)
TARGET_SECONDS = 2.5
STAGES = ("admission", "decode", "checks (signature, round rules)", "running product",
          "persist (group commit)", "close (decrypt, decode)")
PART_OF_DECODE = "  of which ciphertext validation"


@dataclass(frozen=True)
class InboundResult:
    bits: int
    d: int
    updates: int
    ciphertexts: int  # per update
    payload_bytes: int  # per update
    stages: dict[str, float]  # stage -> median seconds for all updates
    validation: float  # seconds of ciphertext validation inside decode
    # As the service runs a burst: Admission.admit, Inbound.handle_many with the
    # signature worker, commits, then close_round; and its part before the close.
    end_to_end: float
    path: float  # admission .. persistence: what the 2.5 s target bounds
    inline: float  # the same end to end with every signature verified inline (Inbound.handle)
    per_update: float  # inline, with one atomic file and fsync per update (the baseline)
    batch: int  # updates per commit
    worker_start: float  # starting the signature worker, once per aggregator run

    @property
    def close(self) -> float:
        return self.end_to_end - self.path

    @property
    def target(self) -> str:
        """Whether the issue's target holds, for the size it is stated for."""
        if (self.bits, self.d, self.updates) != TARGET_SIZE:
            return (f"target: {TARGET_SECONDS} s for admission..persistence is stated for "
                    "10,000 updates of d = 100 at 2048 bits, not this size")
        verdict = "met" if self.path <= TARGET_SECONDS else "NOT met"
        return (f"target {verdict}: admission..persistence of {self.updates} updates in "
                f"{self.path:.2f} s (at most {TARGET_SECONDS} s; close reported separately, "
                f"{self.close:.2f} s)")

    @property
    def speedup(self) -> float:
        """The per-update baseline's end-to-end time over the group commit's (worker)."""
        return self.per_update / self.end_to_end if self.end_to_end else 0.0

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    def table(self) -> str:
        n = self.updates
        lines = [f"\n{self.bits}-bit key, d = {self.d}: {n} updates of {self.ciphertexts} "
                 f"ciphertexts ({self.payload_bytes} bytes each)",
                 f"| {'stage':34s} | {'total s':>8s} | {'per update ms':>13s} | {'share':>6s} |",
                 f"|{'-' * 36}|{'-' * 10}|{'-' * 15}|{'-' * 8}|"]

        def row(name: str, seconds: float) -> str:
            share = seconds / self.total if self.total else 0.0
            return (f"| {name:34s} | {seconds:8.3f} | {seconds / n * 1000:13.3f} | "
                    f"{share:6.1%} |")
        for name, seconds in self.stages.items():
            lines.append(row(name, seconds))
            if name == "decode":
                lines.append(row(PART_OF_DECODE, self.validation))
        lines.append(row("sum of the stages", self.total))
        lines.append(row(f"end to end, commit ({self.batch}) + worker", self.end_to_end))
        lines.append(row("  admission .. persistence", self.path))
        lines.append(row("  close", self.close))
        lines.append(row("end to end, signatures inline", self.inline))
        lines.append(row("end to end, fsync each (before)", self.per_update))
        lines.append(f"group commit: {self.speedup:.1f}x faster end to end than one fsync per "
                     f"update ({self.per_update:.2f} s -> {self.end_to_end:.2f} s for {n} "
                     "updates)")
        lines.append(f"signature worker: end to end {self.inline:.2f} s inline -> "
                     f"{self.end_to_end:.2f} s ({self.inline / self.end_to_end:.2f}x; started "
                     f"once per aggregator run, {self.worker_start:.2f} s, not counted)")
        lines.append(self.target)
        return "\n".join(lines)


def open_round(fleet: BenchFleet) -> RoundState:
    return RoundState(
        fleet=fleet.topics.fleet, run_id=RUN_ID, round_id=1,
        expected=frozenset(a for a, _ in fleet.payloads), deadline=float("inf"),
        quorum=len(fleet.payloads), layout=fleet.layout, key_fingerprint=fleet.key_fingerprint,
        codec_digest=fleet.codec_digest, max_agents=fleet.codec.max_agents,
        public_key=fleet.public_key, allow_list=fleet.allow_list, opened_at=0.0)


def _admission(fleet: BenchFleet) -> Admission:
    body = fleet.layout.plaintext_count() * ciphertext_size(fleet.public_key)
    admission = Admission(fleet.topics, update_body=body, limits=Limits())
    admission.open_round(1, body)
    return admission


def _close(fleet: BenchFleet, state: RoundState) -> Closing:
    return close_round(state, fleet.private_key, Suspects(), spec=fleet.spec, codec=fleet.codec,
                       statistics=fleet.statistics)


def check_sum(fleet: BenchFleet, closing: Closing) -> None:
    """The decrypted round must equal the plaintext sum of every update, exactly."""
    training, evaluation = fleet.plain_sums
    mean, weight = mean_from_sums(training, fleet.codec)
    want = FleetEvaluation.from_sums(evaluation, fleet.spec, fleet.statistics)
    # With robust groups (aggregator.groups) the step is the weighted mean of the group
    # means: the same as the mean of the sum up to float rounding, no group being far.
    if (len(closing.kept) != len(fleet.payloads) or closing.avg_delta is None
            or closing.total_weight != weight
            or not np.allclose(closing.avg_delta, mean, rtol=0, atol=fleet.codec.resolution)
            or closing.evaluation != want):
        raise AssertionError("the decrypted sum differs from the sum of the plaintexts")


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class PerUpdateFiles(Checkpoints):
    """The store before group commit: each payload its own atomic file, fsynced alone."""

    def save_updates(self, batch: list[tuple[str, bytes]]) -> None:
        for agent, payload in batch:
            write_atomic(self.updates_dir / f"{agent}.fmqu", payload)


def stage_times(fleet: BenchFleet, state_dir: Path, limits: Limits
                ) -> tuple[dict[str, float], float]:
    """One pass, stage by stage: seconds per stage, and of ciphertext validation."""
    admission, state = _admission(fleet), open_round(fleet)
    checkpoints = Checkpoints(state_dir)
    batch: list[tuple[str, bytes]] = []
    t = dict.fromkeys(STAGES, 0.0)
    pub, size = fleet.public_key, ciphertext_size(fleet.public_key)
    count = fleet.layout.plaintext_count()
    validation = 0.0
    clock = time.perf_counter
    for agent, payload in fleet.payloads:
        topic = fleet.topic(agent)
        t0 = clock()
        if not admission.admit(topic, payload):
            raise AssertionError(f"admission dropped {agent}'s genuine update")
        t1 = clock()
        update = decode_update(payload, pub)
        t2 = clock()
        # What offer does, one part at a time (RoundState.offer: checks, commit, add).
        state._check(update, agent)
        t3 = clock()
        state._add(update.agent_id, (update.agent_id,), update.ciphertexts, update.signed_hash)
        t4 = clock()
        batch.append((agent, payload))
        if len(batch) >= limits.commit_updates or agent == fleet.payloads[-1][0]:
            checkpoints.save_updates(batch)
            batch = []
        t5 = clock()
        body = payload[-64 - count * size:-64]
        t6 = clock()
        ciphertexts_from_bytes(pub, body, count)
        validation += clock() - t6
        for name, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                                 strict=False):
            t[name] += seconds
    closing: list[Closing] = []
    t[STAGES[-1]] = _timed(lambda: closing.append(_close(fleet, state)))
    check_sum(fleet, closing[0])
    return t, validation


def end_to_end(fleet: BenchFleet, state_dir: Path, limits: Limits | None = None, *,
               per_update: bool = False, verifier: Verifier | None = None
               ) -> tuple[float, float]:
    """The service's path: admit (paho's thread), Inbound.handle (round loop), close;
    seconds up to the last commit and of the close. With ``verifier``, the burst as the
    service's drain sees it: backlogs of BURST messages, Inbound.handle_many with the
    signatures verified by the worker; ``per_update``: one message at a time, with the
    store before group commit (the baseline)."""
    admission, state = _admission(fleet), open_round(fleet)
    limits = limits or Limits()
    if per_update:
        limits = replace(limits, commit_updates=1)
    store = (PerUpdateFiles if per_update else Checkpoints)(state_dir)
    inbound = Inbound(fleet.topics, fleet.public_key, store, limits=limits, verifier=verifier)
    closing: list[Closing] = []
    burst = BURST if verifier is not None else 1
    topics = [(fleet.topic(agent), payload) for agent, payload in fleet.payloads]

    def run() -> None:
        for start in range(0, len(topics), burst):
            inbox = [(topic, payload) for topic, payload in topics[start:start + burst]
                     if admission.admit(topic, payload)]
            inbound.handle_many(state, inbox)  # commits as the round loop does, each message
        inbound.flush(state)  # as before any close

    seconds = _timed(run)
    close = _timed(lambda: closing.append(_close(fleet, state)))
    if len(state.accepted) != len(fleet.payloads):
        raise AssertionError(f"only {len(state.accepted)} of {len(fleet.payloads)} accepted")
    check_sum(fleet, closing[0])
    return seconds, close


def measure(fleet: BenchFleet, *, repeats: int = 3, state_dir: Path | None = None,
            limits: Limits | None = None) -> InboundResult:
    limits = limits or Limits()
    runs, validations, whole, paths, inline, baseline = [], [], [], [], [], []
    verifier = Verifier()
    with tempfile.TemporaryDirectory(prefix="fedmq-inbound-", dir=state_dir) as tmp:
        try:
            # The service starts its worker on its first backlog and keeps it: the
            # rounds after pay nothing, so neither does this measurement.
            worker_start = verifier.start()
            for i in range(repeats):
                stages, validation = stage_times(fleet, Path(tmp) / f"stages-{i}", limits)
                runs.append(stages)
                validations.append(validation)
                path, close = end_to_end(fleet, Path(tmp) / f"path-{i}", limits,
                                         verifier=verifier)
                whole.append(path + close)
                paths.append(path)
                inline.append(sum(end_to_end(fleet, Path(tmp) / f"inline-{i}", limits)))
                baseline.append(sum(end_to_end(fleet, Path(tmp) / f"before-{i}", limits,
                                               per_update=True)))
        finally:
            verifier.close()
    _, first = fleet.payloads[0]
    return InboundResult(
        bits=fleet.public_key.n.bit_length(), d=len(fleet.spec.features),
        updates=len(fleet.payloads), ciphertexts=fleet.layout.plaintext_count(),
        payload_bytes=len(first),
        stages={s: statistics.median(r[s] for r in runs) for s in STAGES},
        validation=statistics.median(validations), end_to_end=statistics.median(whole),
        path=statistics.median(paths), inline=statistics.median(inline),
        per_update=statistics.median(baseline), batch=limits.commit_updates,
        worker_start=worker_start)


def run(*, bits: int, dims: Sequence[int], updates: int, repeats: int, seed: int = 0,
        state_dir: Path | None = None, progress: Callable[[str], None] = print,
        limits: Limits | None = None) -> list[InboundResult]:
    results = []
    for d in dims:
        start = time.perf_counter()
        fleet = build_fleet(bits=bits, d=d, updates=updates, seed=seed)
        progress(f"built {updates} signed updates (d = {d}) in "
                 f"{time.perf_counter() - start:.1f} s")
        result = measure(fleet, repeats=repeats, state_dir=state_dir, limits=limits)
        progress(result.table())
        results.append(result)
    return results


def cmd_bench_inbound(args: argparse.Namespace) -> int:
    results = run(bits=args.bits, dims=args.dims, updates=args.updates, repeats=args.repeats,
                  seed=args.seed, state_dir=args.state_dir,
                  limits=Limits(commit_updates=args.batch))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            [{**asdict(r), "total": r.total, "speedup": r.speedup} for r in results],
            indent=1) + "\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-inbound", help=help_text, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, default=2048, help="Paillier key size")
    p.add_argument("--dims", type=int, nargs="+", default=[100, 10], help="features d")
    p.add_argument("--updates", type=int, default=1000, help="updates (agents) per round")
    p.add_argument("--repeats", type=int, default=3, help="medians over this many passes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-dir", type=Path, default=None,
                   help="where the accepted payloads are persisted (default: a temp dir); "
                        "put it on the gateway's state disk to include its fsync cost")
    p.add_argument("--batch", type=int, default=Limits().commit_updates,
                   help="updates per commit ([limits] commit_updates)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench_inbound)
