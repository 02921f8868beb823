"""CUDA events vs CUPTI activity records: the evaluator's two timing methods on every task's GPU workloads.

    .venv/bin/python scripts/bench_timing_methods.py                         # every task, seed + baseline
    .venv/bin/python scripts/bench_timing_methods.py --tasks layout_transpose2d --workloads 4096
    .venv/bin/python scripts/bench_timing_methods.py --kernel grammar_bitmask=lineages/x/best.py --json t.json

Per task and GPU workload (inputs made once, seed 0): the task's seed kernel (--kernel TASK=PATH: another
kernel file) and the evaluator's T_b call (the task's baseline.py `run` where it has one, else the
reference's `run`, on cloned inputs), timed together with avo.harness.timing.time_interleaved, once
with method="events" and once with method="cupti", alternating E, C, E, C (--rounds) so drift hits both
alike. Printed: median µs per method over all rounds' samples, CUPTI/events, the synced wall µs per call
of back-to-back calls (wall_per_call_ms: host launch time included), and a note where the methods differ by
more than 10%; then the geomean CUPTI/events per task. The synthetic task "side_stream" (--side-stream, on by
default) times an NxN bf16 matmul on the current stream, and on a side stream joined back with wait_stream
but not forked from it: the matmul overlaps the L2 flush and the spin enqueued before the start event, so
events see only its tail while CUPTI sees all of it. Needs a CUDA GPU and cupti-python (exit 2 without).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from avo.tasks import Task, TaskError, list_tasks, load_task  # noqa: E402

# The helpers (load_kernel, reference_ns, kernel_fn) live in bench_memory_bound; loaded by path as
# call_kernel.py does, since scripts/ is not a package.
_spec = importlib.util.spec_from_file_location("bench_memory_bound", Path(__file__).resolve().parent / "bench_memory_bound.py")
bmb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bmb)

NAN = float("nan")


def parse_kernels(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise TaskError(f"--kernel wants TASK=PATH with an existing file; got {item!r}")
        out[task] = Path(path)
    return out


def baseline_run(task: Task) -> tuple[str, Callable]:
    """(label, run) of what the evaluator times as T_b: baseline.py where the task has one."""
    if task.baseline:
        ns: dict = {}
        exec(compile(task.baseline, f"<{task.name}/baseline>", "exec"), ns)
        return "baseline", ns["run"]
    return "reference", bmb.reference_ns(task)["run"]


def row(task: str, wl: str, impl: str, ev: float = NAN, cu: float = NAN, wall: float = NAN, note: str = "") -> dict:
    ratio = cu / ev if ev > 0 else NAN  # NaN-safe: NaN > 0 is False
    if not note and ratio == ratio and abs(ratio - 1) > 0.10:
        note = f"CUPTI {100 * (ratio - 1):+.0f}% vs events"
    return dict(task=task, workload=wl, impl=impl, events_us=ev, cupti_us=cu, ratio=ratio, wall_us=wall, note=note)


def measure(task: str, wl: str, fns: dict[str, Callable[[], object]], a, timing) -> list[dict]:
    """Each function called once (one that raises is an error row, the rest still timed), then the
    survivors interleaved with each other under both methods, E then C every round."""
    import torch
    rows, ok = [], {}
    for name, fn in fns.items():
        try:
            with torch.no_grad():
                fn()
            torch.cuda.synchronize()
            ok[name] = fn
        except Exception as e:
            rows.append(row(task, wl, name, note=f"error: {type(e).__name__}: {str(e)[:80]}"))
    if not ok:
        return rows
    calls = [lambda i, f=f: f() for f in ok.values()]
    samples = {m: [[] for _ in calls] for m in ("events", "cupti")}
    try:
        with torch.no_grad():  # as the reference worker runs it: no autograd bookkeeping in T_b
            for _ in range(a.rounds):
                for method, acc in samples.items():
                    got = timing.time_interleaved(calls, [None] * len(calls), 1, a.warmup, a.iters, "cuda", method=method)
                    for xs, s in zip(acc, got):
                        xs += s
            walls = [timing.wall_per_call_ms(c, 1, a.wall_reps, "cuda")[0] for c in calls]
    except Exception as e:  # a timing failure (CUPTI saw no work, an illegal access) spoils the whole set
        return rows + [row(task, wl, n, note=f"timing error: {type(e).__name__}: {str(e)[:80]}") for n in ok]
    for j, name in enumerate(ok):
        ev, cu = (timing.median_iqr(samples[m][j])[0] * 1e3 for m in ("events", "cupti"))
        rows.append(row(task, wl, name, ev, cu, walls[j] * 1e3))
    return rows


def bench_task(task: Task, kernel: Optional[Path], a, timing) -> list[dict]:
    import torch
    try:
        ns = bmb.reference_ns(task)
        base = baseline_run(task)
        kern = bmb.load_kernel(kernel or bmb.default_seed_path(task.name), f"{task.name}_timed")
    except Exception as e:  # a task whose seed or reference does not load is one row, not a crash
        return [row(task.name, "-", "-", note=f"error: {type(e).__name__}: {str(e)[:80]}")]
    rows = []
    for w in task.select("gpu"):
        if not a.workloads or a.workloads in w.uuid:
            rows += bench_workload(task, w, ns, base, ("kernel" if kernel else "seed", kern), a, timing)
            torch.cuda.empty_cache()  # this workload's inputs died with bench_workload's frame
    return rows


def bench_workload(task: Task, w, ns: dict, base: tuple[str, Callable], kern: tuple[str, Callable], a, timing) -> list[dict]:
    import torch
    from avo.harness.inputs import make_inputs
    d = task.definition
    try:
        entry = ns.get(d.custom_inputs_entrypoint) if d.custom_inputs_entrypoint else None
        args = list(make_inputs(d, w, 0, "cuda", ns.get("make_inputs"), task.root, entry).values())
        base_args = [v.clone() if isinstance(v, torch.Tensor) else v for v in args]
        fns = {kern[0]: bmb.kernel_fn(task, w, kern[1], args, "cuda"), base[0]: lambda: base[1](*base_args)}
    except Exception as e:
        return [row(task.name, w.uuid, "-", note=f"inputs error: {type(e).__name__}: {str(e)[:80]}")]
    return measure(task.name, w.uuid, fns, a, timing)


def side_stream_rows(n: int, a, timing) -> list[dict]:
    import torch
    x, y = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()

    def on_side():
        # No side.wait_stream(current): the inputs are ready since setup, and leaving the fork out lets
        # the matmul start under the flush and spin that precede the start event.
        with torch.cuda.stream(side):
            torch.matmul(x, y, out=out)
        torch.cuda.current_stream().wait_stream(side)

    fns = {"current stream": lambda: torch.matmul(x, y, out=out), "side stream, joined": on_side}
    return measure("side_stream", f"matmul_{n}_bf16", fns, a, timing)


def fmt(x: float, spec: str) -> str:
    return format(x, spec) if x == x else "—"


def table(rows: list[dict]) -> str:
    head = ("| task | workload | impl | events µs | CUPTI µs | CUPTI/events | wall µs | note |\n"
            "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |\n")
    return head + "".join(f"| {r['task']} | {r['workload']} | {r['impl']} | {fmt(r['events_us'], '.1f')} | "
                          f"{fmt(r['cupti_us'], '.1f')} | {fmt(r['ratio'], '.3f')} | {fmt(r['wall_us'], '.1f')} | "
                          f"{r['note']} |\n" for r in rows)


def summary(rows: list[dict]) -> str:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r["ratio"] for r in rows if r["task"] == task and r["ratio"] == r["ratio"] and r["ratio"] > 0]
        gm = math.exp(statistics.fmean(math.log(x) for x in rs)) if rs else NAN
        lines.append(f"{task}: geomean CUPTI/events {fmt(gm, '.3f')} over {len(rs)} rows")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=None, help="task names or problem folders (default: every built-in task)")
    ap.add_argument("--workloads", default=None, help="substring of the workload uuids to run")
    ap.add_argument("--kernel", action="append", default=[], metavar="TASK=PATH", help="time this kernel instead of the seed")
    ap.add_argument("--rounds", type=int, default=2, help="E,C rounds (default 2)")
    ap.add_argument("--iters", type=int, default=50, help="timed calls per function per method per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--wall-reps", type=int, default=20, help="back-to-back calls for the wall time")
    ap.add_argument("--side-stream", action=argparse.BooleanOptionalAction, default=True,
                    help="add the synthetic side-stream matmul rows (default on)")
    ap.add_argument("--side-n", type=int, default=4096, help="matmul size of the side-stream rows")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    a = ap.parse_args(argv)
    try:
        kernels = parse_kernels(a.kernel)
        tasks = [load_task(t) for t in a.tasks] if a.tasks else list_tasks()
        unknown = set(kernels) - {t.name for t in tasks}
        if unknown:
            raise TaskError(f"--kernel names a task not being run: {sorted(unknown)[0]}")
    except TaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch
    if not torch.cuda.is_available():
        print("error: no CUDA device: this benchmark times GPU work", file=sys.stderr)
        return 2
    from avo.harness import timing
    why = timing.cupti_missing()
    if why:
        print(f"error: CUPTI timing unavailable: {why} (install the `cupti` extra)", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: {a.rounds} rounds x {a.iters} calls per method\n")
    rows: list[dict] = []
    for task in tasks:
        part = bench_task(task, kernels.get(task.name), a, timing)
        print(table(part), flush=True)
        rows += part
    if a.side_stream:
        part = side_stream_rows(a.side_n, a, timing)
        print(table(part), flush=True)
        rows += part
    print("## all rows\n\n" + table(rows) + "\n" + summary(rows))
    if a.json:
        clean = [{k: (None if v != v else v) for k, v in r.items()} for r in rows]  # NaN is not JSON
        a.json.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                          args=vars(a), rows=clean), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
