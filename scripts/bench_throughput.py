"""Evaluator throughput: evaluations per GPU-hour and how busy the GPU is during `avo evolve`.

    .venv/bin/python scripts/bench_throughput.py --task grammar_bitmask --attempts 30 [--device cuda]
    .venv/bin/python scripts/bench_throughput.py --task grammar_bitmask --minutes 2 --transfer host device
    .venv/bin/python scripts/bench_throughput.py --lineage lineages/RUN     # an existing run's attempts

Runs a fresh offline-operator evolve of TASK (its seed and the device's workloads, two islands, a
1% gate of 2 rounds) for ATTEMPTS attempts while a thread samples NVML's utilisation of the GPU
the process uses (every 100 ms: the share of time a kernel was running), then prints per task:
evaluations per hour of wall time, GPU busy fraction over the run, and where an attempt's
seconds go (operator, the candidate evaluation's phases: import, compile, check, time, and the
reference and compare within them; the gate and the rest of `eval_s`). In the interpreter the
"GPU busy" column is the evaluator's busy share instead (no GPU), and says so. `--transfer host
device` runs it once per `eval.output_transfer` (outputs through host memory, the old path, or
shared on the GPU), one after the other in this process, for a before/after on one machine;
`--kept-trials 0 2` likewise for the trials whose reference outputs the evaluator keeps.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from avo.lineage import Lineage  # noqa: E402


class Utilisation:
    """NVML GPU utilisation sampled in a thread; None where NVML is missing."""

    def __init__(self, period_s: float = 0.1):
        self.samples: list[int] = []
        self.period_s, self.stop = period_s, threading.Event()
        try:
            import pynvml
            from avo.harness.timing import nvml_handle
            pynvml.nvmlInit()
            self.handle, self.nvml = nvml_handle(pynvml, use_torch=False), pynvml
        except Exception:
            self.handle = None

    def __enter__(self):
        if self.handle is not None:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(self.period_s):
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

    def __exit__(self, *exc):
        self.stop.set()

    @property
    def busy(self):
        return statistics.fmean(self.samples) / 100 if self.samples else None


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


TOP = ("spawn", "import", "build", "compile", "check", "time")  # the evaluation's phases (EvalReport.phase_s)
INNER = ("reference", "compare")  # the runner's waits inside them


def breakdown(lin: Lineage) -> list[str]:
    """Where the seconds of each task's attempts went, from attempts.jsonl: per evaluated attempt,
    the evaluation's phases (spawn: waiting for a worker to start; import; build; compile: first
    calls; check; time) with the runner's reference waits and comparisons inside them, then the
    gate (the A/B: eval_s minus the evaluation) and the operator (wall minus eval_s)."""
    rows = ["| task | attempts | failed | wall s | evals/hour | operator s/attempt | eval s/attempt | spawn | import | "
            "compile | check | time (ref, compare) | gate |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by_task: dict[str, list] = {}
    for a in lin.attempts():
        by_task.setdefault(a.task, []).append(a)
    for task, atts in by_task.items():
        evaluated = [a for a in atts if a.eval_s > 0]
        failed = sum(1 for a in evaluated if a.status not in ("PASSED", "REJECTED", "GATE_ERROR"))
        wall = max(_t(a.finished) for a in atts) - min(_t(a.started) for a in atts) if atts else 0.0
        per = lambda k: statistics.fmean([a.eval_phases.get(k, 0.0) for a in evaluated]) if evaluated else 0.0
        gate = statistics.fmean([max(0.0, a.eval_s - sum(a.eval_phases.get(k, 0.0) for k in TOP))
                                 for a in evaluated]) if evaluated else 0.0
        op = statistics.fmean([max(0.0, _t(a.finished) - _t(a.started) - a.eval_s) for a in atts]) if atts else 0.0
        rows.append(f"| {task} | {len(atts)} | {failed} | {wall:.0f} | {3600 * len(evaluated) / wall if wall else 0:.0f} | "
                    f"{op:.1f} | {statistics.fmean([a.eval_s for a in evaluated]) if evaluated else 0:.2f} | "
                    f"{per('spawn'):.2f} | {per('import') + per('build'):.2f} | {per('compile'):.2f} | {per('check'):.2f} | "
                    f"{per('time'):.2f} ({per('reference'):.2f}, {per('compare'):.2f}) | {gate:.2f} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="grammar_bitmask")
    ap.add_argument("--attempts", type=int, default=30)
    ap.add_argument("--minutes", type=float, default=60.0, help="wall budget of each run (whichever ends first)")
    ap.add_argument("--transfer", nargs="+", choices=["device", "host"], default=["device"],
                    help="eval.output_transfer of each run (CUDA only; one run per value)")
    ap.add_argument("--kept-trials", type=int, nargs="+", default=[2],
                    help="eval.kept_trials of each run (one run per value: 0 = every trial fresh, the old path)")
    ap.add_argument("--device", choices=["auto", "cuda", "interpret"], default="auto")
    ap.add_argument("--lineage", type=Path, help="report an existing run's attempts instead of running one")
    a = ap.parse_args()
    if a.lineage is not None:
        if not (a.lineage / ".git").exists():
            print(f"bench_throughput.py: {a.lineage} is not a lineage", file=sys.stderr)
            return 2
        print("\n".join(breakdown(Lineage.open(a.lineage))))
        return 0
    from avo.evolve.loop import resolve_run_device
    device = resolve_run_device(a.device)
    for transfer in a.transfer:
        for kept in a.kept_trials:
            code = one_run(a, device, transfer, kept)
            if code:
                return code
    return 0


def one_run(a, device: str, transfer: str, kept: int) -> int:
    from avo.config import RunConfig
    from avo.ui.run import evolve_local
    with tempfile.TemporaryDirectory(prefix="avo-throughput-") as tmp:
        cfg = RunConfig.model_validate({
            "run": "throughput", "lineage_dir": str(Path(tmp) / "lin"), "tasks": [a.task], "islands_per_task": 2,
            "budget": {"attempts": a.attempts, "wall_minutes": a.minutes}, "gate": {"min_gain": 0.01, "rounds": 2},
            "device": device, "eval": {"output_transfer": transfer, "kept_trials": kept}})
        t0 = time.monotonic()
        with Utilisation() as util:
            code = evolve_local(cfg, live=False)
        wall = time.monotonic() - t0
        if code != 0:
            print(f"bench_throughput.py: avo evolve exited {code}", file=sys.stderr)
            return code
        lin = Lineage.open(Path(tmp) / "lin")
        rows = breakdown(lin)
        n = sum(1 for x in lin.attempts() if x.eval_s > 0)
    busy = f"{100 * util.busy:.0f}% GPU busy (NVML, {len(util.samples)} samples)" if util.busy is not None else \
        "GPU busy: n/a (no NVML here; interpreter run)"
    how = f", outputs {'shared on the GPU' if transfer == 'device' else 'through host memory'}" if device == "cuda" else ""
    how += f", {kept} kept trial(s) per workload"
    print(f"\n{a.task} on {device}{how}: {n} evaluations in {wall:.0f} s of wall time = {3600 * n / wall:.0f} "
          f"evaluations/hour; {busy}")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
