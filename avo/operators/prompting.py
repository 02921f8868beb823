"""Prompt templates (avo/operators/prompts/*.md) and the text views of a lineage that fill them.
Placeholders are `{{name}}`; a placeholder left unfilled is an error (a template typo must not
reach the model silently). Kernel sources contain braces, so str.format is not used."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from avo.operators.base import AttemptView, LineageView

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
_SLOT = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


class PromptError(Exception):
    pass


def render(name: str, **values: Any) -> str:
    path = PROMPTS_DIR / f"{name}.md"
    text = path.read_text()
    missing = sorted({m for m in _SLOT.findall(text) if m not in values})
    if missing:
        raise PromptError(f"prompt {path.name}: no value for {', '.join(missing)}")
    return _SLOT.sub(lambda m: str(values[m.group(1)]), text)


def fmt(x: Optional[float], spec: str = ".3f", suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def task_summary(task_name: str) -> str:
    """The task's definition in a few lines (inputs/outputs, in-place, tolerance, GPU shapes)."""
    try:
        from avo.tasks import load_task
        task = load_task(task_name)
    except Exception:  # a foreign problem dir that is not loadable by name: the kernel speaks for itself
        return f"Task `{task_name}`."
    d = task.definition
    # A scalar input (attention's `causal`) has shape None.
    io = lambda specs: ", ".join(f"{n} {s.dtype}" + (f"[{', '.join(map(str, s.shape))}]" if s.shape is not None else " (scalar)")
                                 for n, s in specs.items())
    lines = [f"Task `{d.name}` ({d.op_type}): {d.description}".rstrip(),
             f"inputs: {io(d.inputs)}", f"outputs: {io(d.outputs) or '(none: in place)'}"]
    if d.inplace:
        lines.append(f"in place: {', '.join(d.inplace)}")
    lines.append(f"tolerance: atol {d.tolerance.atol:g}, rtol {d.tolerance.rtol:g}")
    gpu = task.select("gpu")
    if gpu:
        # By uuid (what `avo eval --workloads` and the latencies name), with the scalar inputs:
        # two workloads can share every axis and differ only in a flag (attention's causal).
        def gpu_line(w):
            scalars = [f"{n}={i.value}" for n, i in w.inputs.items() if getattr(i, "type", "") == "scalar"]
            return (f"{w.uuid} (" + ", ".join([f"{k}={v}" for k, v in w.axes.items()] + scalars) + ")"
                    + (f" {w.dtypes}" if w.dtypes else ""))
        lines.append("GPU workloads (what the gate times on a GPU): " + "; ".join(gpu_line(w) for w in gpu[:8]))
    cpu = task.select("cpu")
    if cpu:
        lines.append("CPU (interpreter) workloads: " + "; ".join(w.uuid for w in cpu[:8]))
    return "\n".join(lines)


def format_attempt(a: AttemptView, width: int = 300) -> str:
    gain = f"{a.gain:+.2%}" if a.gain is not None else "-"
    err = " ".join(a.error.split())[-width:] if a.error else ""
    return (f"- {a.id} {a.status}{' (accepted)' if a.accepted else ''} gain {gain}: {a.note or '(no note)'}"
            + (f"\n  error: {err}" if err else ""))


def format_recent(view: LineageView, n: int = 12) -> str:
    return "\n".join(format_attempt(a) for a in view.recent[-n:]) or "(none yet)"


def format_elites(view: LineageView, n: int = 5) -> str:
    rows = [f"- {v.commit[:10]} speedup vs seed {fmt(v.speedup_vs_seed)}: {v.note or '(no note)'}"
            for v in view.elites[:n] if v.commit != view.best.commit]
    return "\n".join(rows) or "(none besides the best)"


def format_directions(view: LineageView) -> str:
    return "\n".join(f"- {d}" for d in view.directions) or "(none: choose your own direction)"


def widen_note(view: LineageView) -> str:
    if view.widen <= 0:
        return ""
    return (f"Exploration level {view.widen}: this island has stagnated. Small knob moves have not "
            "paid off; try a structurally different change (tiling, work per program, persistent "
            "grid, memory access pattern, a different algorithm) rather than another tweak.")


def step_prompt(view: LineageView, max_turns: int, max_evaluations: int) -> str:
    b = view.best
    lat = ", ".join(f"{k} {v:.4f}" for k, v in b.latencies_ms.items()) or "n/a"
    return render("step", task=view.task, island=view.island, task_summary=task_summary(view.task),
                  kernel_name=view.kernel_name, best_commit=b.commit[:10], best_note=b.note or "(seed)",
                  best_vs_seed=fmt(b.speedup_vs_seed, ".3f", "x"), best_vs_baseline=fmt(b.speedup_vs_baseline, ".3f", "x"),
                  best_sol=fmt(b.sol_fraction and 100 * b.sol_fraction, ".1f", "%"), best_latencies=lat,
                  elites=format_elites(view), recent=format_recent(view), directions=format_directions(view),
                  widen_note=widen_note(view), max_turns=max_turns, max_evaluations=max_evaluations)


def device_note(device: str) -> str:
    if device == "interpret":
        return ("This machine has no GPU: the evaluator runs the Triton interpreter on small CPU "
                "workloads. Correctness results are real; timings are not GPU performance, so reason "
                "about the GPU shapes when you choose an optimisation.")
    return ""
