"""A user's problem after `avo evolve`: the run's seed and best kernel next to the problem's own
reference in torch eager and under torch.compile, on every GPU workload, in one process.

    .venv/bin/python scripts/bench_problem.py RUN [RUN ...] [--lineage-dir lineages] [--iters 30]

Per task of each run (its lineage's config names the problem folders) and workload the run
evaluated: each candidate's outputs are checked against eager with the workload's tolerance, then
all four are timed in one interleaved session with avo.harness.timing.device_ms (the evaluator's
method: L2 flushed, events, median µs of device time). torch.compile is the default mode of the
reference's `run`, compiled once per workload before timing. The seed's origin (Inductor's
Triton, the plain reference, a solution file) is printed with it. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from avo.lineage import Lineage  # noqa: E402
from avo.tasks import load_task  # noqa: E402


def load_kernel(source: str, name: str, tmp: Path):
    path = tmp / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def results(value, outputs) -> list:
    """A reference's return value in the definition's output order (a tensor, a tuple, a dict by name)."""
    if isinstance(value, dict):
        return [value[k] for k in outputs]
    return list(value) if isinstance(value, (tuple, list)) else [value]


def bench_run(run: str, lineage_dir: Path, iters: int) -> list[str]:
    import torch
    from avo.harness import inputs as inp
    from avo.harness.check import compare
    from avo.harness.timing import device_ms

    lin = Lineage.open(lineage_dir / run)
    cfg = yaml.safe_load(lin.root_file("config.yaml"))
    wanted = lin.identity().get("workloads", {})
    rows = [f"run {run}", "| task | workload | axes | eager µs | torch.compile µs | seed µs | best µs | best vs eager | best vs compile | best vs seed |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for entry in cfg["tasks"]:
            task = load_task(entry)
            d = task.definition
            seed = next(v for v in lin.versions(task.name) if v.meta.kind == "seed")
            best = lin.best(task.name)
            print(f"{task.name}: seed = {seed.meta.note}; best = {best.sha[:10]} ({best.meta.note or best.meta.kind})")
            kernels = {"seed": load_kernel(seed.source, f"{task.name}_seed", Path(tmp)),
                       "best": load_kernel(best.source, f"{task.name}_best", Path(tmp))}
            ns: dict = {}
            exec(compile(d.reference, f"<{d.name}/reference>", "exec"), ns)
            ref = ns["run"]
            for w in [w for w in task.workloads if w.uuid in wanted.get(task.name, [w.uuid])]:
                x = inp.make_inputs(d, w, 0, "cuda", ns.get("make_inputs"), task.root,
                                    ns.get(d.custom_inputs_entrypoint) if d.custom_inputs_entrypoint else None)
                args = [x[n] for n in d.inputs]
                outs = {k: inp.alloc_outputs(d, w, "cuda") for k in kernels}
                compiled = torch.compile(ref)
                with torch.no_grad():
                    expect = ref(*args)
                    got_c = compiled(*args)
                expect, got_c = results(expect, d.outputs), results(got_c, d.outputs)
                tol = d.tolerance_for(w)
                for k, mod in kernels.items():
                    mod.run(*args, *outs[k].values())
                torch.cuda.synchronize()
                checks = {"torch.compile": got_c, **{k: list(o.values()) for k, o in outs.items()}}
                for who, got in checks.items():
                    for name, g, e in zip(d.outputs, got, expect):
                        r = compare(name, g, e, e.dtype, tol, "cuda")
                        if r.status.value != "PASSED":
                            raise SystemExit(f"{task.name} {w.uuid}: {who} fails the check: {r.detail}")
                fns = [lambda: ref(*args), lambda: compiled(*args),
                       *[lambda k=k, mod=mod: mod.run(*args, *outs[k].values()) for k, mod in kernels.items()]]
                with torch.no_grad():
                    eager, comp, s, b = (t * 1e3 for t in device_ms(fns, iters=iters))
                axes = ",".join(f"{k}={v}" for k, v in w.axes.items())
                rows.append(f"| {task.name} | {w.uuid[:8]} | {axes} | {eager:.1f} | {comp:.1f} | {s:.1f} | {b:.1f} | "
                            f"{eager / b:.2f}x | {comp / b:.2f}x | {s / b:.2f}x |")
                print(rows[-1], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--lineage-dir", type=Path, default=REPO_ROOT / "lineages")
    ap.add_argument("--iters", type=int, default=30)
    a = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("bench_problem.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for run in a.runs:
        if not (a.lineage_dir / run).is_dir():
            print(f"bench_problem.py: no lineage {a.lineage_dir / run}", file=sys.stderr)
            return 2
        print("\n".join(bench_run(run, a.lineage_dir, a.iters)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
