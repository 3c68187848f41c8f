"""Print the crypto benchmark as tables, check the issue's targets, write JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Targets at 2048 bits and d = 1000 (issue: encrypted updates at near-plaintext cost).
TARGET_BITS, TARGET_D = 2048, 1000


def _fmt_ms(ms: float, approx: bool = False) -> str:
    text = f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.2f} ms"
    return ("~" if approx else "") + text


def tables(results: dict[str, Any]) -> str:
    lines = []
    for key in results["keys"]:
        lay = key["layout"]
        lines.append(f"\n{key['bits']}-bit key: {lay['slots']} values per ciphertext "
                     f"({lay['slot_bits']}-bit slots)")
        lines.append(f"{'d':>6} | {'cts':>4} {'bytes':>8} {'x f32':>6} | {'online':>9} "
                     f"{'pre DJN':>9} {'pre std':>9} | {'per-value':>9} {'x f32':>6} "
                     f"{'CPU':>9} | {'speedup DJN':>11} {'std':>6}")
        for a in key["agent"]:
            b = a["baseline"]
            lines.append(
                f"{a['d']:>6} | {a['ciphertexts']:>4} {a['bytes']:>8} "
                f"{a['bytes_per_float32_byte']:>6.2f} | {_fmt_ms(a['online_ms']):>9} "
                f"{_fmt_ms(a['precompute_djn_ms']):>9} {_fmt_ms(a['precompute_std_ms']):>9} | "
                f"{b['bytes']:>9} {b['bytes_per_float32_byte']:>6.1f} "
                f"{_fmt_ms(b['total_ms'], b['extrapolated']):>9} | "
                f"{a['speedup_djn']:>10.0f}x {a['speedup_std']:>5.0f}x")
        lines.append(f"{'d':>6} {'agents':>7} | {'sum+decrypt':>11} {'per-value':>10} | "
                     f"{'max error / clip':>16}")
        for g in key["aggregator"]:
            lines.append(f"{g['d']:>6} {g['agents']:>7} | {_fmt_ms(1000 * g['sum_decrypt_s']):>11} "
                         f"{_fmt_ms(1000 * g['baseline_s'], True):>10} | "
                         f"{g['max_error_rel_clip']:>16.2e}")
    lines.append("\n'~': per-value cost measured on fewer values and scaled linearly. "
                 "CPU = precompute + online.")
    return "\n".join(lines)


def check_targets(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for the targets at 2048 bits, d = 1000."""
    key = next((k for k in results["keys"] if k["bits"] == TARGET_BITS), None)
    if key is None:
        return []
    agent = next((a for a in key["agent"] if a["d"] == TARGET_D), None)
    agg = next((g for g in key["aggregator"] if g["d"] == TARGET_D and g["agents"] == 1000),
               None)
    checks = []
    if agent is not None:
        checks += [
            ("agent crypto >= 50x faster (stretch 100x)", agent["speedup_djn"] >= 50,
             f"{agent['speedup_djn']:.0f}x (standard obfuscators: {agent['speedup_std']:.0f}x)"),
            ("online time < 5 ms", agent["online_ms"] < 5, _fmt_ms(agent["online_ms"])),
            ("<= 3 bytes per float32 byte", agent["bytes_per_float32_byte"] <= 3,
             f"{agent['bytes_per_float32_byte']:.2f}"),
        ]
    if agg is not None:
        checks.append(("aggregator sum+decrypt, 1000 agents < 1 s", agg["sum_decrypt_s"] < 1,
                       _fmt_ms(1000 * agg["sum_decrypt_s"])))
    errors = [g["max_error_rel_clip"] for g in key["aggregator"] if g["d"] == TARGET_D]
    if errors:
        checks.append(("mean error < 1e-6 of clip", max(errors) < 1e-6, f"{max(errors):.2e}"))
    return checks


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
