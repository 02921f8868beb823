"""Commit messages of a lineage, written for plain `git log`: the subject says what changed and
what it gained, the body holds the per-workload table and the gate's verdict, trailers carry the
machine-readable keys (attempt, operator, parent, gain, noise)."""
from __future__ import annotations

from typing import Optional

from avo.lineage_records import VersionMeta
from avo.schema import Trace


def _ms(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4f}"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def workload_table(traces: list[Trace], gate_best_ms: dict[str, float], gate_cand_ms: dict[str, float]) -> str:
    head = f"{'workload':<34} {'best ms':>10} {'new ms':>10} {'gain':>8} {'vs base':>8} {'% SOL':>7}"
    rows = [head, "-" * len(head)]
    for t in traces:
        p = t.evaluation.performance if t.evaluation else None
        u = t.workload.uuid
        a, b = gate_best_ms.get(u), gate_cand_ms.get(u)
        gain = f"{a / b - 1:+.1%}" if a and b else "-"
        vs_base = f"{p.speedup_factor:.2f}x" if p else "-"
        rows.append(f"{u[:34]:<34} {_ms(a):>10} {_ms(b if b is not None else (p.latency_ms if p else None)):>10} "
                    f"{gain:>8} {vs_base:>8} {_pct(p.sol_fraction if p else None):>7}")
    return "\n".join(rows)


def trailers(meta: VersionMeta) -> str:
    rows = [("Avo-Kind", meta.kind), ("Avo-Task", meta.task), ("Avo-Island", str(meta.island)),
            ("Avo-Attempt", meta.attempt), ("Avo-Operator", meta.operator), ("Avo-Parent", meta.parent),
            ("Avo-Speedup-Vs-Seed", f"{meta.scores.speedup_vs_seed:.4f}" if meta.scores.speedup_vs_seed else None),
            ("Avo-Gain", f"{meta.gate.gain:.4f}" if meta.gate else None),
            ("Avo-Noise", f"{meta.gate.noise:.4f}" if meta.gate else None),
            ("Avo-Migrated-From", meta.migrated_from), ("Avo-Transcript", meta.transcript)]
    return "\n".join(f"{k}: {v}" for k, v in rows if v)


def version_message(meta: VersionMeta, traces: list[Trace]) -> str:
    s = meta.scores
    vs_seed = f"{s.speedup_vs_seed:.2f}x vs seed" if s.speedup_vs_seed else "new"
    where = f"{meta.task} island-{meta.island}"
    if meta.kind == "seed":
        subject = f"{where}: seed ({meta.note})"
        body = f"Seed kernel x0, evaluated once on {len(traces)} workloads ({meta.device_mode}, {meta.hardware})."
    else:
        gain = f"{meta.gate.gain:+.1%}" if meta.gate else "?"
        note = meta.note if len(meta.note) <= 60 else meta.note[:57] + "..."
        subject = f"{where}: {note} ({gain}, {vs_seed})"
        if meta.kind == "migration":
            body = f"Migrated the task's best version {meta.migrated_from} onto this stagnant island."
        else:
            body = f"Operator {meta.operator}, attempt {meta.attempt}, from {(meta.parent or '')[:10]}."
        if meta.gate:
            g = meta.gate
            body += (f"\nGate: A/B interleaved against {g.against[:10]}, {g.rounds} rounds: gain {g.gain:+.2%} "
                     f"> max(min_gain {g.min_gain:.2%}, noise {g.noise:.2%}).")
    gate_best = meta.gate.best_ms if meta.gate else {}
    gate_cand = meta.gate.cand_ms if meta.gate else {}
    extra = ""
    if meta.device_mode == "interpret":
        extra = "\n\nTriton interpreter on CPU: timings are not GPU performance."
    return f"{subject}\n\n{body}\n\n{workload_table(traces, gate_best, gate_cand)}{extra}\n\n{trailers(meta)}\n"
