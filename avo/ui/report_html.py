"""The HTML page of `avo report`: run facts, best version per task, the charts, every commit with
its gate measurement, the supervisor's interventions and the attempt outcomes."""
from __future__ import annotations

import html
import json
from collections import Counter

from avo.harness import HARNESS_PHASES, RUNNER_WORK
from avo.lineage import AttemptRecord, Lineage, LineageError

CSS = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:24px auto;color:#222;padding:0 12px}
table{border-collapse:collapse;margin:8px 0 18px;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}code{font-size:12px}
.warn{background:#fff8e1;border-left:4px solid #f9a825;padding:8px 12px}img{max-width:100%;margin:6px 0 18px}"""


def e(x) -> str:
    return html.escape("" if x is None else str(x))


def _x(v, spec=".2f", suffix="x") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _table(head: list[str], rows: list[list[str]], num: set[int] = frozenset()) -> str:
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td class=num>{c}</td>" if i in num else f"<td>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _eval_time(attempts: list[AttemptRecord], elapsed_s: float) -> str:
    """Attempts per hour and where an attempt's evaluator time went (the tracked throughput)."""
    per_hour = len(attempts) / (elapsed_s / 3600)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
    text = f"{per_hour:.0f} attempts per hour of run time; evaluator {mean([a.eval_s for a in attempts]):.1f} s per attempt"
    timed = [a.eval_phases for a in attempts if a.eval_phases]
    if timed:
        keys = [k for k in HARNESS_PHASES + RUNNER_WORK if any(k in p for p in timed)]
        split = ", ".join(f"{k} {mean([p.get(k, 0.0) for p in timed]):.1f} s" for k in keys)
        text += f" (candidate evaluation: {split}; the gate's A/B and the operator take the rest)"
    return e(text) + "."


def render_html(lin: Lineage, attempts: list[AttemptRecord], images: list[str]) -> str:
    try:
        ident = lin.identity()
    except LineageError:
        ident = {}
    run = lin.path.name
    device = ident.get("device", "?")
    parts = [f"<!doctype html><meta charset=utf-8><title>avo report: {e(run)}</title><style>{CSS}</style>",
             f"<h1>avo run <code>{e(run)}</code></h1>"]
    accepted = sum(a.accepted for a in attempts)
    elapsed = max((a.run_elapsed_s for a in attempts), default=0.0)
    cost = sum(a.cost_usd for a in attempts)
    parts.append(f"<p>{len(attempts)} attempts, {accepted} accepted, {elapsed / 60:.1f} minutes of run time, "
                 f"LLM spend ${cost:.2f}. Device: <b>{e(device)}</b>. Lineage: <code>{e(lin.path)}</code> "
                 f"(<code>git -C {e(lin.path)} log --all --graph</code>).</p>")
    if attempts and elapsed > 0:
        parts.append(f"<p>{_eval_time(attempts, elapsed)}</p>")
    if device == "interpret":
        parts.append("<p class=warn>Triton interpreter on a CPU: timings rank candidates in the interpreter; "
                     "they are not GPU performance, and % of SOL is not defined here (speedups over the "
                     "baseline are shown instead).</p>")
    rows = []
    for task in lin.tasks():
        b = lin.best(task)
        s = b.meta.scores
        rows.append([e(task), f"<code>{e(b.sha[:10])}</code>", e(b.meta.island), _x(b.speedup),
                     _x(s.speedup_vs_baseline), _x(s.sol_fraction and 100 * s.sol_fraction, ".1f", "%"), e(b.meta.note)])
    if rows:
        parts.append("<h2>Best per task</h2>" + _table(["task", "commit", "island", "vs seed", "vs baseline", "% SOL", "change"],
                                                        rows, {3, 4, 5}))
    for img in images:
        parts.append(f"<img src='{e(img)}' alt='{e(img)}'>")
    rows = []
    for v in lin.versions():
        m, g = v.meta, v.meta.gate
        rows.append([f"<code>{e(v.sha[:10])}</code>", e(f"{m.task}/island-{m.island}"), e(m.kind), e(m.attempt or ""),
                     e(m.operator), f"{m.run_elapsed_s / 60:.1f}", _x(v.speedup),
                     _x(g and 100 * g.gain, "+.1f", "%"), _x(g and 100 * g.noise, ".1f", "%"), e(m.note)])
    parts.append("<h2>Commits</h2>" + _table(["commit", "island", "kind", "attempt", "operator", "min", "vs seed",
                                               "gate gain", "noise", "change"], rows, {5, 6, 7, 8}))
    ivs = lin.interventions()
    if ivs:
        rows = [[e(r.get("time", "")), e(f"{r.get('task')}/island-{r.get('island')}"), e(r.get("kind")), e(r.get("detail")),
                 e(" | ".join(r.get("directions", [])))] for r in ivs]
        parts.append("<h2>Supervisor interventions</h2>" + _table(["time", "island", "kind", "detail", "directions"], rows))
    counts = Counter(("ACCEPTED" if a.accepted else a.status) for a in attempts)
    if counts:
        parts.append("<h2>Outcomes</h2>" + _table(["status", "attempts"], [[e(k), str(v)] for k, v in counts.most_common()], {1}))
    rows = [[e(a.id), e(f"{a.task}/island-{a.island}"), e(a.operator), e("ACCEPTED" if a.accepted else a.status),
             _x(a.gain and 100 * a.gain, "+.1f", "%"), e(a.note[:90]), e(" ".join(a.error.split())[:140])]
            for a in attempts[-200:]]
    parts.append(f"<h2>Attempts (last {len(rows)})</h2>" +
                 _table(["id", "island", "operator", "outcome", "gain", "note", "error"], rows, {4}))
    parts.append(f"<details><summary>identity</summary><pre>{e(json.dumps(ident, indent=2))}</pre></details>")
    return "\n".join(parts) + "\n"
