"""How the Ray backend scales with operator actors against one evaluator (CPU, Triton
interpreter): attempts/hour with 1, 2 and 4 operator actors over a fixed wall time, and the
evaluator's busy fraction (Evaluator.busy_s / loop wall), whose complement estimates how long a
GPU would sit idle waiting for proposals.

Operators are the heuristic, optionally "thinking" for --think-s seconds per step (the time an
LLM agent takes to propose, scaled down with the interpreter's slower evaluations). With no
thinking the evaluator is the bottleneck from the first operator; with thinking, more operators
keep it busy. One Ray instance for all configurations (4 logical CPUs, 1 evaluator slot).

    .venv/bin/python scripts/scale_ray_cpu.py                 # ~5 min on 2 cores
    .venv/bin/python scripts/scale_ray_cpu.py --seconds 20 --think-s 0 2 --operators 1 2 4
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import ray

from avo.config import load_config
from avo.distributed import evolve_ray
from avo.operators.heuristic import HeuristicOperator


class ThinkingHeuristic:
    """The heuristic operator plus a fixed think time per step (an LLM's latency, simulated)."""

    def __init__(self, think_s: float):
        self.name, self.think_s = "heuristic", think_s
        self.inner = HeuristicOperator()

    def propose(self, view, ctx):
        time.sleep(self.think_s)
        return self.inner.propose(view, ctx)


def config(root: Path, name: str, operators: int) -> Path:
    p = root / f"{name}.yaml"
    p.write_text(f"""run: {name}
lineage_dir: {root / name}
tasks: [grammar_bitmask]
workloads: {{grammar_bitmask: [cpu_b3_v1000_float32]}}
islands_per_task: {operators}
budget: {{wall_minutes: 30}}
gate: {{min_gain: 0.05, rounds: 2}}
device: interpret
ray: {{evaluators: 1, operator_cpus: 1, inflight_per_island: 2}}
""")
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="loop wall time per configuration")
    ap.add_argument("--operators", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--think-s", type=float, nargs="+", default=[0.0, 3.0])
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args()
    ray.init(num_cpus=max(a.operators), resources={"avo_evaluator": 1}, include_dashboard=False,
             logging_level=logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory(prefix="avo-scale-") as d:
        root = Path(d)
        for think in a.think_s:
            for n in a.operators:
                name = f"scale-t{think:g}-o{n}".replace(".", "_")
                cfg = load_config(config(root, name, n))
                runs: list = []
                with open(root / f"{name}.log", "w") as log, contextlib.redirect_stdout(log):
                    code = evolve_ray(cfg, live=False, operators={"heuristic": ThinkingHeuristic(think)}, run_out=runs,
                                      loop_s=a.seconds)  # steps start for `seconds`; running evaluations finish, queued ones are dropped
                ss = runs[0].session_stats
                if code != 0:
                    raise SystemExit(f"{name}: exit {code}; log:\n{(root / f'{name}.log').read_text()[-2000:]}")
                row = {"think_s": think, "operators": n, "attempts": ss.attempts, "loop_s": round(ss.loop_s, 1),
                       "attempts_per_hour": round(ss.attempts / ss.loop_s * 3600) if ss.loop_s else 0,
                       "evaluator_busy": round(ss.busy_fraction, 3), "gpu_idle_estimate": round(1 - ss.busy_fraction, 3),
                       "queue_wait_s": round(statistics.fmean(ss.queue_waits_s), 2) if ss.queue_waits_s else 0.0}
                rows.append(row)
                print(f"  {name}: {row}", flush=True)
    ray.shutdown()
    head = f"{'think s':>7} {'operators':>9} {'attempts':>8} {'loop s':>7} {'attempts/h':>10} {'eval busy':>9} " \
           f"{'GPU idle':>8} {'queue wait s':>12}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['think_s']:>7g} {r['operators']:>9} {r['attempts']:>8} {r['loop_s']:>7} {r['attempts_per_hour']:>10} "
              f"{100 * r['evaluator_busy']:>8.0f}% {100 * r['gpu_idle_estimate']:>7.0f}% {r['queue_wait_s']:>12}")
    print("\nOne interpreter evaluator on a CPU; 'GPU idle' = 1 - evaluator busy fraction. On a GPU, evaluations are "
          "faster and LLM steps slower than here: scale think time by the ratio of the two.")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
