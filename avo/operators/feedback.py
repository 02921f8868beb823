"""The evaluator's report as an agent reads it: short, per workload, with the numbers that
drive the next edit (status, error tail, ms, speedup vs the baseline and vs the island best, %
of speed-of-light). The gate's A/B re-measurement is what decides; this is guidance."""
from __future__ import annotations

import math
from typing import Any, Optional

LOG_TAIL_CHARS = 1500


def _f(x: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def format_report(rep: Any, best_latencies: dict[str, float]) -> tuple[str, Optional[float]]:
    """(text, geomean speedup over the island best on the workloads both were timed on)."""
    n_ok = sum(1 for t in rep.traces if t.passed)
    head = f"status: {rep.status.value}"
    if rep.hack_check:
        head += f" (reward-hack check: {rep.hack_check})"
    head += f"  [{n_ok}/{len(rep.traces)} workloads passed; {rep.hardware}]"
    lines = [head]
    if rep.device_mode == "interpret":
        lines.append("note: Triton interpreter on CPU: correctness is real, timings are not GPU performance")
    rows = [("workload", "status", "ms", "base ms", "vs base", "vs best", "%SOL")]
    logs = []
    ratios = []
    for t in rep.traces:
        e = t.evaluation
        p = e.performance if e else None
        best = best_latencies.get(t.workload.uuid)
        vs_best = best / p.latency_ms if (p and best and p.latency_ms > 0) else None
        if vs_best:
            ratios.append(vs_best)
        rows.append((t.workload.uuid, e.status.value if e else "-", _f(p and p.latency_ms, ".4f"),
                     _f(p and p.reference_latency_ms, ".4f"), _f(p and p.speedup_factor, ".2f", "x"),
                     _f(vs_best, ".3f", "x"), _f(p and p.sol_fraction and 100 * p.sol_fraction, ".1f", "%")))
        if e and e.log and not t.passed and e.log not in logs:
            logs.append(e.log)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    vs_best_geo = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios and rep.passed else None
    if rep.passed:
        geo = rep.speedup_geomean()
        sol = rep.sol_fraction_mean()
        lines.append(f"geomean speedup vs baseline {_f(geo, '.3f', 'x')}; vs island best {_f(vs_best_geo, '.3f', 'x')}"
                     + (f"; mean {100 * sol:.1f}% of SOL" if sol else ""))
    msg = rep.message or (logs[0] if logs else "")
    if msg:
        lines.append("log (tail):\n" + msg[-LOG_TAIL_CHARS:])
    return "\n".join(lines), vs_best_geo
