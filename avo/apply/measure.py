"""Re-measure artifacts on this machine's GPU against the calls they replace:

    python -m avo.apply.measure DIR [DIR ...] [--task T [--baseline FILE.py|xgrammar] [--against NAME]]
                                [--device cuda|interpret] [--out FILE]

For every artifact under each DIR, the evaluator (avo/harness) checks and times its kernel on the
workloads of its traces, with T_b (`--baseline FILE`, else the task's evaluators/<task>/baseline.py
when that task has the same definition, else the definition's reference) timed interleaved,
exactly as at export. T_b should be the call the kernel replaces in the engine: for the attention
tasks baseline.py is torch SDPA, what transformers calls; grammar_bitmask has no baseline.py, so
its T_b is the torch reference, not xgrammar's own kernel: `--task grammar_bitmask --baseline
xgrammar` times xgrammar.apply_token_bitmask_inplace instead, and its rows say `against: xgrammar`,
the call the xgrammar integration replaces (only such rows let it serve). A record's `against` is
"task" for the task's own T_b, the built-in baseline's name, else --against (default: the
--baseline file's stem). Each (kernel, key) becomes a SpeedRecord (avo/apply/speed.py) in
`DIR/speed-<gpu>.jsonl` (or --out),
merged with the rows already there; `enable(DIR)` reads them, a re-measurement overriding the
export's record for the same GPU. A workload that no longer passes writes no row (and is
reported). `--device interpret` runs the CPU interpreter: rows are written, labelled
`device_mode: interpret`, and make no speed claim (for checking the command itself).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from avo.apply.artifact import Artifact, find_artifacts, read_artifact
from avo.apply.keys import call_semantics, canonical_key
from avo.apply.speed import TASK_BASELINE, SpeedRecord, normalize_hardware, now, speed_file_name, write_speed_file

# Built-in T_b for `--baseline NAME`: (task, code), the call an integration replaces. xgrammar takes
# the rows as a Python list: made once per indices tensor (the engine holds a list already), so
# the device-to-host copy is not timed as xgrammar's.
XGRAMMAR_BASELINE = """import xgrammar

_ROWS = {}


def run(logits, bitmask, indices):
    k = (indices.data_ptr(), indices.numel(), indices.device)
    rows = _ROWS.get(k)
    if rows is None:  # the same work whatever rows a reused buffer holds: timing is what T_b is for
        if len(_ROWS) > 64:
            _ROWS.clear()
        rows = _ROWS[k] = indices.tolist()
    xgrammar.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
"""
BUILTIN_BASELINES = {"xgrammar": ("grammar_bitmask", XGRAMMAR_BASELINE)}


def resolve_baseline(baseline, task: Optional[str], against: Optional[str] = None) -> tuple[Optional[str], str, str]:
    """(T_b code or None for the task's own, label for `replaced`, `against`) of --baseline/--against."""
    if baseline is None:
        return None, "", against or TASK_BASELINE
    name = str(baseline)
    if name in BUILTIN_BASELINES:
        want, code = BUILTIN_BASELINES[name]
        if task is not None and task != want:
            raise ValueError(f"--baseline {name} is {want}'s replaced call, not {task}'s")
        return code, f"builtin {name}", against or name
    path = Path(baseline)
    return path.read_text(), f"baseline {path.name}", against or path.stem


def _task_of(art: Artifact, baseline_file=None, against: Optional[str] = None):
    """The artifact's definition and its traces' workloads as a Task, the `replaced` label and what
    it is measured against. T_b: `baseline_file` (a .py path or a built-in name: xgrammar), else
    evaluators/<task>/baseline.py when the task there takes the same calls (keys.call_semantics),
    else the reference."""
    from avo.tasks import Task, TaskError, load_task
    baseline, replaced, against = resolve_baseline(baseline_file, art.manifest.task, against)
    if baseline is None:
        replaced = "reference"
        try:
            t = load_task(art.manifest.task)
            if call_semantics(t.definition) == call_semantics(art.definition) and t.baseline:
                baseline, replaced = t.baseline, "baseline.py"
        except TaskError:
            pass
    wls = list({t.workload.uuid: t.workload for t in art.traces}.values())
    return Task(definition=art.definition, workloads=wls, baseline=baseline), replaced, against


def measure(dirs: list[Path], device: str = "cuda", task: Optional[str] = None, out: Optional[Path] = None,
            baseline=None, log=print, against: Optional[str] = None) -> dict[Path, list[SpeedRecord]]:
    """Measure every artifact under dirs; returns {speed file: records written}."""
    from avo.harness.runner import EvalConfig, Evaluator
    written: dict[Path, list[SpeedRecord]] = {}
    with Evaluator(EvalConfig(device=device)) as ev:
        hw = normalize_hardware(ev.hardware)
        for d in dirs:
            d = Path(d)
            rows: list[SpeedRecord] = []
            for p in find_artifacts(d):
                art = read_artifact(p)
                if task is not None and art.manifest.task != task:
                    continue
                t, replaced, vs = _task_of(art, baseline, against)
                rep = ev.evaluate(t, art.solution, t.workloads)
                for tr in rep.traces:
                    perf, env = tr.evaluation.performance, tr.evaluation.environment
                    if not tr.passed or perf is None or perf.latency_ms <= 0:
                        log(f"{art.manifest.task}/{art.manifest.name} {tr.workload.uuid}: "
                            f"{tr.evaluation.status.value}, no record")
                        continue
                    r = SpeedRecord(task=art.manifest.task, artifact=art.manifest.name, digest=art.digest,
                                    key=canonical_key(art.definition, tr.workload), hardware=hw,
                                    device_mode=env.device_mode, latency_ms=perf.latency_ms,
                                    replaced_latency_ms=perf.reference_latency_ms,
                                    ratio=perf.reference_latency_ms / perf.latency_ms, replaced=replaced,
                                    against=vs, source="measure", timing_method=env.timing_method, throttled=env.throttled,
                                    measured=now())
                    rows.append(r)
                    log(f"{art.manifest.task}/{art.manifest.name} {r.key}: {r.ratio:.3f}x vs {replaced} ({vs}) on {hw}")
            if rows:
                path = Path(out) if out is not None else d / speed_file_name(hw)
                write_speed_file(path, rows)
                written[path] = rows
    return written


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m avo.apply.measure", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="artifact folders (what enable() takes)")
    ap.add_argument("--task", help="only this task's artifacts")
    ap.add_argument("--device", default="cuda", choices=["cuda", "interpret"])
    ap.add_argument("--out", type=Path, help="speed file (default DIR/speed-<gpu>.jsonl)")
    ap.add_argument("--baseline",
                    help="a .py whose run(*inputs) is the call the kernels replace in your engine (with --task), "
                         "instead of the task's baseline.py / reference; or a built-in: "
                         + ", ".join(f"{n} ({t})" for n, (t, _) in BUILTIN_BASELINES.items()))
    ap.add_argument("--against", help="what the rows say they were measured against (integrations match it: "
                                      "xgrammar_bitmask replaces 'xgrammar'); default: the built-in's name, the "
                                      "--baseline file's stem, or 'task'")
    a = ap.parse_args(argv)
    if len(a.dirs) > 1 and a.out is not None:
        ap.error("--out takes one DIR")
    if a.baseline is not None and a.task is None:
        ap.error("--baseline needs --task (a baseline is one task's call)")
    try:
        resolve_baseline(a.baseline, a.task, a.against)
    except (ValueError, OSError) as e:
        ap.error(str(e))
    written = measure(a.dirs, a.device, a.task, a.out, a.baseline, against=a.against)
    for path, rows in written.items():
        print(f"{len(rows)} records -> {path}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
