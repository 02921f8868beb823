"""Time knob settings of one kernel file on the GPU, next to the task's eager reference, in one process.

    python scripts/sweep_knobs.py megakernel_decode_layer kernels/megakernel/decode_layer_seed.py \\
        '{}' '{"GEMV_DOT": true}' '{"GEMV_DOT": true, "FUSE_NORM": true}' --workloads 'b1_kv4000|b8'
    python scripts/sweep_knobs.py --grid bitmask-word-tile        # a grid file of scripts/sweeps/

Each JSON object is merged into the file's CONFIG (the file is not changed; `{}` = as written).
A grid file (scripts/sweeps/<name>.json, or any path) holds one or more such sweeps as data: each
entry of its "runs" gives task, kernel, settings and optionally base (merged under every setting),
workloads (or batches and kv: the decode layer at those batches), peers, fp32_reference and
profile; `--workloads` on the command line overrides every run's. The runs go one after another in this process; the exit code is the worst of them.
Every setting is checked against the eager reference (task tolerance) before do_bench times it;
rows come from scripts/bench_memory_bound.py's bench_workload (same timing, GB/s, % SOL). A quick
map of the design space before a run, or of where a lineage's winner sits in it; the evaluator
and `avo evolve` stay the judges of what gets accepted.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("bench_memory_bound", HERE / "bench_memory_bound.py")
bmb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bmb)


def parse_settings(items: list[str], tunables: dict) -> list[dict]:
    out = []
    for item in items:
        try:
            cfg = json.loads(item)
        except json.JSONDecodeError as e:
            raise bmb.BenchError(f"setting {item!r} is not JSON: {e.msg}") from None
        if not isinstance(cfg, dict):
            raise bmb.BenchError(f"setting {item!r} is not a JSON object")
        bad = [f"{k}={v!r}" for k, v in cfg.items() if k not in tunables or v not in tunables[k]]
        if bad:
            raise bmb.BenchError(f"setting {item!r}: {', '.join(bad)} not in the kernel's TUNABLES")
        out.append(cfg)
    return out


def fp32_reference(task) -> callable:
    """The task's reference as a DPS kernel on fp32 copies of the inputs (the evaluator's
    avo.harness.inputs.upcast), its results copied into the candidate-dtype outputs."""
    from avo.harness.inputs import upcast
    ref = bmb.reference_ns(task)["run"]
    names = list(task.definition.inputs)
    def run(*args):
        res = ref(*upcast(dict(zip(names, args[:len(names)]))).values())
        for out, r in zip(args[len(names):], res if isinstance(res, tuple) else (res,)):
            out.copy_(r)
    return run


def kernel_profile(task, w, run, calls: int = 20) -> str:
    """GPU µs of each launch in one call of `run` on workload w, in launch order (torch.profiler,
    mean over `calls` calls after warm-up): where the time goes inside a multi-kernel candidate."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from avo.harness.inputs import make_inputs
    ns = bmb.reference_ns(task)
    args = list(make_inputs(task.definition, w, 0, "cuda", ns.get("make_inputs")).values())
    fn = bmb.kernel_fn(task, w, run, args, "cuda")
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type.name == "CUDA" and e.device_time > 0),
                     key=lambda e: e.time_range.start)
    per_call = len(kernels) // calls
    if not per_call or len(kernels) % calls:
        return f"  {len(kernels)} kernels in {calls} calls: not a fixed sequence per call"
    lines, total = [], 0.0
    for i in range(per_call):  # launch i of every call: its mean GPU time
        us = sum(k.device_time for k in kernels[i::per_call]) / calls
        total += us
        lines.append(f"  {us:8.1f} µs  #{i} {kernels[i].name[:90]}")
    return "\n".join(lines + [f"  {total:8.1f} µs  total"])


SWEEPS = HERE / "sweeps"
RUN_KEYS = {"task", "kernel", "settings", "base", "workloads", "batches", "kv", "peers", "fp32_reference", "profile", "about"}


def grid_path(name: str) -> Path:
    """A grid file by path, or by name under scripts/sweeps/ (with or without .json)."""
    p = Path(name)
    for cand in (p, SWEEPS / name, SWEEPS / f"{name}.json"):
        if cand.is_file():
            return cand
    have = ", ".join(sorted(f.stem for f in SWEEPS.glob("*.json"))) or "none"
    raise bmb.BenchError(f"no grid {name!r} (scripts/sweeps/: {have})")


def grid_argvs(path: Path, workloads: Optional[str]) -> list[list[str]]:
    """The grid file's runs as argument lists of this script (settings = base merged with each)."""
    try:
        grid = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise bmb.BenchError(f"grid {path}: not JSON: {e.msg} (line {e.lineno})") from None
    runs = grid.get("runs") if isinstance(grid, dict) else None
    if not isinstance(runs, list) or not runs:
        raise bmb.BenchError(f"grid {path}: needs a non-empty list \"runs\"")
    out = []
    for i, run in enumerate(runs):
        bad = sorted(set(run) - RUN_KEYS) if isinstance(run, dict) else ["(not an object)"]
        if bad or not {"task", "kernel", "settings"} <= set(run):
            raise bmb.BenchError(f"grid {path}: run {i} needs task, kernel, settings (unknown: {', '.join(bad) or 'none'})")
        base = run.get("base", {})
        argv = [run["task"], run["kernel"]]
        argv += [json.dumps({**base, **s}) for s in run["settings"]]
        wl = workloads or run.get("workloads")
        argv += ["--workloads", wl] if wl else []
        argv += ["--batches", ",".join(map(str, run["batches"]))] if run.get("batches") else []
        argv += ["--kv", str(run["kv"])] if run.get("kv") is not None else []
        for p in run.get("peers", []):
            argv += ["--peer", p]
        argv += ["--fp32-reference"] if run.get("fp32_reference") else []
        argv += ["--profile"] if run.get("profile") else []
        out.append(argv)
    return out


def main_grid(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="run the sweeps of a grid file (scripts/sweeps/)")
    ap.add_argument("--grid", required=True, help="a grid file, or its name under scripts/sweeps/")
    ap.add_argument("--workloads", default=None, help="regex on GPU workload uuids (overrides the grid's)")
    a = ap.parse_args(argv)
    try:
        path = grid_path(a.grid)
        argvs = grid_argvs(path, a.workloads)
    except bmb.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rc = 0
    for i, run_argv in enumerate(argvs):
        print(f"\n## {path.stem} run {i + 1}/{len(argvs)}: {run_argv[0]} {run_argv[1]}", flush=True)
        rc = max(rc, main(run_argv))
    return rc


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(x == "--grid" or x.startswith("--grid=") for x in argv):
        return main_grid(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("kernel", type=Path)
    ap.add_argument("settings", nargs="+", help="JSON objects merged into CONFIG")
    ap.add_argument("--workloads", default=None, help="regex on GPU workload uuids")
    ap.add_argument("--batches", default=None, metavar="B1,B2,..",
                    help="decode layer: its gpu_b1_kv4000 workload at these batches instead of its workloads "
                         "(the tl.dot path past BLOCK_B runs only there)")
    ap.add_argument("--kv", type=int, default=4000, help="KV length of the --batches workloads")
    ap.add_argument("--peer", "--peers", dest="peers", action="append", default=[],
                    help="a peer row from bench_memory_bound (e.g. 'xgrammar triton'); repeat for more")
    ap.add_argument("--fp32-reference", action="store_true",
                    help="check against the reference run on fp32 copies (as the evaluator does) instead of eager "
                         "in the input dtype, whose own rounding fails bf16 attention at the task's tolerance")
    ap.add_argument("--profile", action="store_true",
                    help="also print each setting's GPU time per kernel (torch.profiler, first workload)")
    a = ap.parse_args(argv)
    try:
        task = bmb.load_task(a.task)
        if not a.kernel.is_file():
            raise bmb.BenchError(f"no such kernel file {a.kernel}")
        mods = []
        for i in range(len(a.settings)):
            spec = importlib.util.spec_from_file_location(f"sweep_{i}", a.kernel)
            mods.append(importlib.util.module_from_spec(spec))
            spec.loader.exec_module(mods[-1])
        settings = parse_settings(a.settings, mods[0].TUNABLES)
        known = bmb.PEERS.get(bmb.family(a.task), [])
        bad = [p for p in a.peers if p not in known or p == "torch eager"]
        if bad:
            raise bmb.BenchError(f"peer {bad[0]!r} is not one of {a.task}'s: {', '.join(known[1:]) or 'none'}")
        if a.batches:
            if bmb.family(a.task) != "megakernel":
                raise bmb.BenchError(f"--batches is for the decode layer, not {a.task}")
            wls = bmb.batch_sweep(task, bmb.parse_batches(a.batches), a.kv)
        else:
            wls = [w for w in task.select("gpu") if not a.workloads or bmb.re.search(a.workloads, w.uuid)]
        if not wls:
            raise bmb.BenchError(f"no GPU workload of {a.task} matches {a.workloads!r}")
    except (bmb.BenchError, bmb.TaskError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch
    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    runs = {}
    for mod, cfg in zip(mods, settings):
        mod.CONFIG.update(cfg)
        runs[json.dumps(cfg, separators=(",", ":")) if cfg else "as written"] = mod.run
    rows = []
    for w in wls:
        first = ["fp32 reference"] if a.fp32_reference else []
        part = bmb.bench_workload(task, w, first + ["torch eager"] + a.peers + list(runs),
                                  dict(runs, **{"fp32 reference": fp32_reference(task)}))
        print(bmb.table(part), flush=True)
        rows += part
        torch.cuda.empty_cache()
    if a.profile:
        for name, run in runs.items():
            print(f"\nkernels of {name} on {wls[0].uuid}:")
            print(kernel_profile(task, wls[0], run))
    best = {}
    for r in rows:
        if r["impl"] in runs and r["ms"] == r["ms"]:
            best.setdefault(r["impl"], []).append(r["ms"])
    print("\ngeomean µs over workloads (settings that passed everywhere):")
    for name, ms in sorted(best.items(), key=lambda kv: sum(kv[1])):
        if len(ms) == len(wls):
            print(f"  {math.exp(sum(math.log(m * 1e3) for m in ms) / len(ms)):9.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
