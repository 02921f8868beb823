"""Memory-bound families on one GPU: each kernel next to its peers in one process.

    .venv/bin/python scripts/bench_memory_bound.py                       # every task, seeds as "evolved"
    .venv/bin/python scripts/bench_memory_bound.py --kernel layout_transpose2d=lineages/x/best.py
    .venv/bin/python scripts/bench_memory_bound.py --dry-run             # CPU: print the plan only
    .venv/bin/python scripts/bench_memory_bound.py --tasks megakernel_decode_layer \
        --kernel megakernel_decode_layer=kernels/megakernel/decode_layer_persistent.py \
        --compare megakernel_decode_layer=kernels/megakernel/evolved/decode_layer_h100/sources/kernel.py \
        --batches 1,2,4,8,16,32,64 --kv 4000                           # issue 26: a batch sweep

Per task and GPU workload: the evolved kernel (--kernel TASK=PATH; default the seed, then shown
once), the seed, and the peers: grammar_bitmask -> xgrammar's Triton and CUDA kernels (the CUDA one JIT-built on first use) and eager torch;
layout_* -> the eager torch reference (`.permute().contiguous()`, index_put into the paged cache) and
torch.compile of it; megakernel_decode_layer ->
eager torch, a CUDA graph of eager, torch.compile. --compare TASK=PATH (repeatable) adds a peer kernel file as a row named after it (an
exported artifact: its folder name), and for the decode layer the same under a CUDA graph. A kernel
whose module says CUDA_GRAPH = False (a call that cannot be captured: a host sync or a per-call
host->device copy) gets no CUDA-graph row: it is one launch, timed as is. --batches B1,B2,.. (with --kv N)
replaces the decode layer's workloads by its gpu_b1_kv4000 workload at those batches and that KV
length; after the run the persistent kernel's compiled variants (its JITFunction's cache) and its
host cost per call (cached plan + counter memset + launch; build_tasks, once per batch, alone) are printed. Every candidate's output is checked against
the eager peer (task tolerance) before it is timed. Times: triton.testing.do_bench medians, and
"µs device" from avo.harness.timing.device_ms (the evaluator's method, which hides the host's launch
gaps: at batch-1 decode do_bench measures the Python launcher); GB/s from the task's SOL byte model; % SOL against the detected GPU's datasheet bandwidth. The table
is printed and written to docs/benchmarks.md between <!-- bench_memory_bound --> markers (a run on
a subset of tasks: its own <!-- bench_memory_bound TASKS --> section).
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from datetime import date
from pathlib import Path
from typing import Any, Callable, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from avo.tasks import Task, TaskError, default_seed_path, load_task  # noqa: E402
from avo.ui.doc_section import replace_marked_section, task_set_markers  # noqa: E402

BENCH_TASKS = ["grammar_bitmask", "layout_bshd_to_bhsd", "layout_transpose2d", "layout_bshd_to_bhds",
               "layout_kv_paged", "megakernel_decode_layer"]
PEERS = {  # family -> peer names, the first one is the correctness reference
    "grammar": ["torch eager", "xgrammar triton", "xgrammar cuda"],
    "layout": ["torch eager", "torch.compile"],
    "megakernel": ["torch eager", "CUDA graph (eager)", "torch.compile", "torch.compile reduce-overhead", "engine eager",
                   "engine CUDA graph"],
}
DOC = REPO_ROOT / "docs" / "benchmarks.md"


class BenchError(Exception):
    """Bad command-line input; one line for the user."""


def parse_kernels(items: list[str]) -> dict[str, Path]:
    return dict(_pairs(items, "--kernel"))


def parse_compare(items: list[str]) -> dict[str, dict[str, Path]]:
    """--compare TASK=PATH items -> {task: {label: path}}; the label is an exported artifact's folder
    name (.../<name>/sources/kernel.py) or the file's stem."""
    out: dict[str, dict[str, Path]] = {}
    for task, p in _pairs(items, "--compare"):
        label = p.parent.parent.name if p.parent.name == "sources" else p.stem
        while label in out.setdefault(task, {}) or label in ("evolved", "seed"):
            label += "'"
        out[task][label] = p
    return out


def _pairs(items: list[str], flag: str) -> list[tuple[str, Path]]:
    pairs = []
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or task not in BENCH_TASKS:
            raise BenchError(f"{flag} wants TASK=PATH with TASK one of {', '.join(BENCH_TASKS)}; got {item!r}")
        if not Path(path).is_file():
            raise BenchError(f"{flag} {task}: no such file {path}")
        pairs.append((task, Path(path)))
    return pairs


def parse_batches(text: Optional[str]) -> list[int]:
    if not text:
        return []
    try:
        out = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise BenchError(f"--batches wants comma-separated integers, got {text!r}") from None
    if not out or any(b < 1 for b in out):
        raise BenchError(f"--batches wants positive integers, got {text!r}")
    return out


SWEEP_BASE = "gpu_b1_kv4000_bfloat16"  # the decode layer's workload a --batches sweep is made from


def batch_sweep(task: Task, batches: list[int], kv: int) -> list:
    """The task's SWEEP_BASE workload at each batch and KV length (pydantic model_copy: every other
    axis, dtype and the cache capacity as in the task)."""
    base = next((w for w in task.workloads if w.uuid == SWEEP_BASE), None)
    if base is None:
        raise BenchError(f"--batches: {task.name} has no workload {SWEEP_BASE}")
    if not 0 <= kv < base.axes["max_kv"]:
        raise BenchError(f"--kv {kv}: the cache holds {base.axes['max_kv']} rows (and the new token)")
    kv_in = base.inputs["kv_len"].model_copy(update={"value": kv})
    return [base.model_copy(update={"uuid": f"gpu_b{b}_kv{kv}_bfloat16", "axes": {**base.axes, "batch": b},
                                    "inputs": {**base.inputs, "kv_len": kv_in}}) for b in batches]


def graph_safe(path: Path) -> bool:
    """False when the kernel file says CUDA_GRAPH = False (read from its text: no import needed)."""
    return not re.search(r"^CUDA_GRAPH\s*=\s*False", path.read_text(), re.M)


def family(task: str) -> str:
    return task.split("_", 1)[0]


def plan(tasks: list[str], kernels: dict[str, Path], workload_filter: Optional[str],
         compare: Optional[dict[str, dict[str, Path]]] = None, batches: Optional[list[int]] = None,
         kv: int = 4000) -> list[tuple[Task, list, list[str]]]:
    rows = []
    compare = compare or {}
    for name in tasks:
        task = load_task(name)
        if batches and family(name) == "megakernel":
            wls = batch_sweep(task, batches, kv)
        else:
            wls = [w for w in task.select("gpu") if not workload_filter or re.search(workload_filter, w.uuid)]
        # The decode layer as an engine runs it: its decode step captured in a CUDA graph (a kernel
        # that cannot be captured is timed as one launch instead).
        mega = family(name) == "megakernel"
        impls = []
        if name in kernels:
            impls += ["evolved"] + (["evolved (CUDA graph)"] if mega and graph_safe(kernels[name]) else [])
        for label, path in compare.get(name, {}).items():
            impls += [label] + ([f"{label} (CUDA graph)"] if mega and graph_safe(path) else [])
        impls += ["seed"] + PEERS[family(name)]
        rows.append((task, wls, impls))
    return rows


def load_kernel(path: Path, tag: str) -> Callable:
    spec = importlib.util.spec_from_file_location(f"bench_{tag}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.run


def reference_ns(task: Task) -> dict:
    ns: dict = {}
    exec(compile(task.definition.reference, f"<{task.name}/reference>", "exec"), ns)
    return ns


def results_of(task: Task, args: list, res) -> tuple:
    """The reference's return value as the task's result tuple (an in-place task's reference returns
    None: its results are the mutated inputs)."""
    if res is None:
        names = list(task.definition.inputs)
        return tuple(args[names.index(n)] for n in task.definition.inplace)
    return res if isinstance(res, tuple) else (res,)


def peer_fns(task: Task, ns: dict, args: list) -> dict[str, Callable[[], Any]]:
    """Peer callables on fixed inputs; each returns the task's results (a tuple of tensors)."""
    import torch
    fam, ref = family(task.name), ns["run"]
    if fam == "grammar":
        from xgrammar.kernels.apply_token_bitmask_inplace_triton import apply_token_bitmask_inplace_triton
        logits, bitmask, indices = args
        def eager():
            ref(logits, bitmask, indices)
            return (logits,)
        def xg():
            apply_token_bitmask_inplace_triton(logits, bitmask, indices=indices)
            return (logits,)
        def xg_cuda():  # xgrammar's float4 CUDA kernel; importing it JIT-builds it (nvcc + ninja) once per process
            from xgrammar.kernels.apply_token_bitmask_inplace_cuda import apply_token_bitmask_inplace_cuda
            apply_token_bitmask_inplace_cuda(logits, bitmask, indices=indices)
            return (logits,)
        return {"torch eager": eager, "xgrammar triton": xg, "xgrammar cuda": xg_cuda}
    as_tuple = lambda r: results_of(task, args, r)
    # A fresh compile per workload: one compiled `ref` shared across shapes and tasks hits dynamo's
    # recompile limit and silently runs eager (seen on the H100: torch.compile rows at eager speed).
    torch._dynamo.reset()
    compiled = torch.compile(ref, dynamic=False)
    peers = {"torch eager": lambda: as_tuple(ref(*args)), "torch.compile": lambda: as_tuple(compiled(*args))}
    if fam == "megakernel":  # what an engine deploys: compiled and replayed as a CUDA graph
        # cudagraph trees copy every input whose address is not static into the graph's own buffers
        # on each replay: ~440 MB of weights and cache per call here (612 µs at B1 on the H100,
        # session 5). An engine's weights and cache are static; say so, as its model parameters would.
        for t in args:
            if isinstance(t, torch.Tensor):
                torch._dynamo.mark_static_address(t)
        graphed = torch.compile(ref, mode="reduce-overhead", dynamic=False)
        peers["torch.compile reduce-overhead"] = lambda: as_tuple(graphed(*args))
        peers["CUDA graph (eager)"] = cuda_graphed(lambda: as_tuple(ref(*args)))
        peers["engine eager"] = engine_decode_layer(*args)
        peers["engine CUDA graph"] = cuda_graphed(peers["engine eager"])
    return peers


def engine_decode_layer(x, attn_norm_w, wq, wk, wv, wo, mlp_norm_w, w_gate, w_up, w_down, k_cache, v_cache,
                        rope_cos, rope_sin, kv_len) -> Callable[[], tuple]:
    """The decode layer as an inference engine writes it in eager torch, a stronger peer than the
    task's reference (which concatenates the cache and repeat_interleaves K/V): q|k|v and gate|up
    weights fused once, F.rms_norm, the new K/V written into the engine's own cache slot, SDPA with
    enable_gqa over the cache. The yardstick of ANCHORS.md's eager and CUDA-graph numbers."""
    import torch
    import torch.nn.functional as F
    batch, hidden = x.shape
    kv_heads, head_dim = k_cache.shape[1], k_cache.shape[3]
    q_dim, kv_dim, mlp = wq.shape[0], wk.shape[0], w_gate.shape[0]
    w_qkv, w_gu = torch.cat([wq, wk, wv]), torch.cat([w_gate, w_up])
    # The engine's cache: the history plus the slot this step writes (set up once, outside the timing).
    kc = torch.cat([k_cache[:, :, :kv_len], k_cache[:, :, :1]], dim=2)
    vc = torch.cat([v_cache[:, :, :kv_len], v_cache[:, :, :1]], dim=2)
    cos, sin = rope_cos.to(x.dtype), rope_sin.to(x.dtype)
    half = head_dim // 2

    def rope(t):
        return t * cos + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * sin

    def run():
        qkv = F.linear(F.rms_norm(x, (hidden,), attn_norm_w, eps=1e-5), w_qkv)
        q = rope(qkv[:, :q_dim].view(batch, -1, head_dim))
        k = rope(qkv[:, q_dim:q_dim + kv_dim].view(batch, kv_heads, head_dim))
        v = qkv[:, q_dim + kv_dim:].view(batch, kv_heads, head_dim)
        kc[:, :, kv_len], vc[:, :, kv_len] = k, v
        o = F.scaled_dot_product_attention(q[:, :, None], kc, vc, enable_gqa=True)
        h = x + F.linear(o.reshape(batch, q_dim), wo)
        gu = F.linear(F.rms_norm(h, (hidden,), mlp_norm_w, eps=1e-5), w_gu)
        return h + F.linear(F.silu(gu[:, :mlp]) * gu[:, mlp:], w_down), k, v
    return run


def cuda_graphed(fn: Callable[[], tuple]) -> Callable[[], tuple]:
    """fn captured once in a CUDA graph (warmed up on a side stream first, as torch asks); each
    replay rewrites the same output tensors, which it returns."""
    import torch
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    def replay():
        graph.replay()
        return out
    return replay


def kernel_fn(task: Task, w, run: Callable, args: list, device: str) -> Callable[[], tuple]:
    """A DPS kernel on fixed inputs, with its outputs allocated once (in-place tasks: the inputs)."""
    from avo.harness.inputs import alloc_outputs
    d = task.definition
    outs = alloc_outputs(d, w, device)
    names = list(d.inputs)
    def call():
        run(*args, *outs.values())
        return tuple(outs.values()) + tuple(args[names.index(n)] for n in d.inplace)
    return call


def bench_workload(task: Task, w, impls: list[str], runs: dict[str, Callable], seed: int = 0) -> list[dict]:
    import torch
    import triton.testing
    from avo.harness import sol
    from avo.harness.check import compare
    from avo.harness.inputs import make_inputs
    from avo.harness.timing import device_ms
    d = task.definition
    ns = reference_ns(task)
    base = make_inputs(d, w, seed, "cuda", ns.get("make_inputs"))
    hw = sol.match_gpu_name(torch.cuda.get_device_name()) or sol.hardware_by_name("H100 SXM")
    flops, nbytes = sol.work(d, w)
    t_sol = sol.sol_time_s(d, w, hw)
    rows, expect, timed, peers = [], None, {}, None
    for impl in impls:
        args = [v.clone() if isinstance(v, torch.Tensor) else v for v in base.values()]
        try:  # a peer that is not installed (xgrammar) or fails to compile is a row, not a crash
            if impl not in runs and peers is None:
                # Once per workload: peer_fns resets dynamo, which would leave an earlier compiled
                # or graphed peer recompiling (or replaying freed pools) in the device timing below.
                peers = peer_fns(task, ns, args)
            base_impl = impl.removesuffix(" (CUDA graph)")
            if base_impl in runs:
                fn = kernel_fn(task, w, runs[base_impl], args, "cuda")
                fn = cuda_graphed(fn) if base_impl != impl else fn
            else:
                fn = peers[impl]
            got = tuple(t.detach().clone() for t in fn())
            torch.cuda.synchronize()
        except Exception as e:
            if expect is None:
                raise
            rows.append(dict(task=task.name, workload=w.uuid, impl=impl, ms=float("nan"), dev_ms=float("nan"), gbps=float("nan"),
                             sol=float("nan"), check=f"error: {type(e).__name__}: {e}", hw=hw.name))
            continue
        if expect is None:
            expect, status = got, "reference"
        else:
            names = d.result_names
            res = [compare(n, g, e, e.dtype, d.tolerance, device="cuda") for n, g, e in zip(names, got, expect)]
            bad = [r for r in res if r.status.value != "PASSED"]
            status = (bad[0].detail or bad[0].status.value) if bad else "ok"
        ms = triton.testing.do_bench(fn, return_mode="median") if status in ("ok", "reference") else float("nan")
        if ms == ms:
            timed[impl] = fn
        rows.append(dict(task=task.name, workload=w.uuid, impl=impl, ms=ms, dev_ms=float("nan"),
                         gbps=nbytes / (ms * 1e-3) / 1e9, sol=t_sol / (ms * 1e-3), check=status, hw=hw.name))
    # Device time, interleaved across the implementations that passed: the launch gaps that
    # do_bench counts for host-bound calls (batch-1 decode) are hidden, as in a CUDA graph.
    for impl, dev in zip(timed, device_ms(list(timed.values()))):
        next(r for r in rows if r["impl"] == impl)["dev_ms"] = dev
    eager = next((r for r in rows if r["impl"] == "torch eager"), {})
    for r in rows:
        r["vs_eager"] = eager.get("ms", float("nan")) / r["ms"] if r["ms"] == r["ms"] else float("nan")
        r["vs_eager_dev"] = eager.get("dev_ms", float("nan")) / r["dev_ms"] if r["dev_ms"] == r["dev_ms"] else float("nan")
    return rows


def table(rows: list[dict]) -> str:
    head = ("| task | workload | impl | µs | GB/s | % SOL | × eager | µs device | × eager device | check |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    body = "".join(f"| {r['task']} | {r['workload']} | {r['impl']} | {r['ms'] * 1e3:.1f} | {r['gbps']:.0f} | "
                   f"{100 * r['sol']:.0f}% | {r['vs_eager']:.2f} | {r.get('dev_ms', float('nan')) * 1e3:.1f} | "
                   f"{r.get('vs_eager_dev', float('nan')):.2f} | {r['check'][:60]} |\n" for r in rows)
    return head + body


def write_doc(text: str, doc: Path = DOC, tasks: Optional[list[str]] = None) -> None:
    """Replace this run's section: one per task set, so a run on a subset (say the decode layer
    alone) leaves the full table of the other families in place."""
    begin, end = task_set_markers("bench_memory_bound", tasks, BENCH_TASKS)
    old = doc.read_text() if doc.exists() else "# Measured numbers\n"
    doc.write_text(replace_marked_section(old, begin, end, text))


def compiled_variants(fn) -> Optional[int]:
    """How many compiled kernels a Triton JITFunction holds for the current device (None: not a
    JITFunction, or a triton whose cache layout is unknown). triton 3.6-3.9: device_caches[device] =
    (kernel_cache, ...); older: cache[device]."""
    try:
        import torch
        dev = torch.cuda.current_device()
        caches = getattr(fn, "device_caches", None)
        if caches is not None:
            entry = caches.get(dev) if hasattr(caches, "get") else None
            if entry is None:
                return 0
            return len(entry[0] if isinstance(entry, tuple) else entry)
        cache = getattr(fn, "cache", None)
        if isinstance(cache, dict):
            return len(cache.get(dev, {}))
    except Exception:
        return None
    return None


def persistent_report(task: Task, wls: list, run: Callable, repeat: int = 50) -> Optional[str]:
    """For a kernel whose module has a task table (build_tasks) and a JIT kernel _persistent_kernel:
    its compiled variants after the run's workloads, and its host cost per call on each workload
    (median µs of run(): the cached plan's lookup, the counters' memset and the launch; the GPU
    synchronised between calls, outside the timing) with build_tasks alone (run() builds a table once
    per batch). None for any other kernel."""
    import statistics
    import time
    import torch
    from avo.harness.inputs import alloc_outputs, make_inputs
    g = getattr(run, "__globals__", {})
    fn, build = g.get("_persistent_kernel"), g.get("build_tasks")
    if fn is None or build is None:
        return None
    ns = reference_ns(task)
    parts = [f"{compiled_variants(fn)} compiled variant(s) of _persistent_kernel after {len(wls)} workload(s)"]
    for w in wls:
        args = list(make_inputs(task.definition, w, 0, "cuda", ns.get("make_inputs")).values())
        outs = list(alloc_outputs(task.definition, w, "cuda").values())
        ax = w.axes
        calls, builds = [], []
        for i in range(repeat + 3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            run(*args, *outs)
            t1 = time.perf_counter()
            build(ax["batch"], ax["hidden"], ax["q_dim"], ax["kv_heads"], ax["head_dim"], ax["mlp"])
            t2 = time.perf_counter()
            if i >= 3:
                calls.append(t1 - t0)
                builds.append(t2 - t1)
        torch.cuda.synchronize()
        parts.append(f"{w.uuid}: host {statistics.median(calls) * 1e6:.0f} µs a call "
                     f"(build_tasks, once per batch: {statistics.median(builds) * 1e6:.0f} µs)")
        del args, outs
    parts[0] += f", {compiled_variants(fn)} after the host timing"
    return "; ".join(parts)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=BENCH_TASKS, help="tasks to run (default: all)")
    ap.add_argument("--kernel", action="append", default=[], metavar="TASK=PATH", help="evolved kernel for a task")
    ap.add_argument("--compare", action="append", default=[], metavar="TASK=PATH",
                    help="another kernel file as a peer row (decode layer: also under a CUDA graph); repeatable")
    ap.add_argument("--batches", default=None, metavar="B1,B2,..",
                    help=f"decode layer: its {SWEEP_BASE} workload at these batches (instead of its workloads)")
    ap.add_argument("--kv", type=int, default=4000, help="KV length of the --batches workloads (default 4000)")
    ap.add_argument("--workloads", default=None, help="regex on workload uuids")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; needs no GPU")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    a = ap.parse_args(argv)
    try:
        unknown = [t for t in a.tasks if t not in BENCH_TASKS]
        if unknown:
            raise BenchError(f"unknown task {unknown[0]!r} (known: {', '.join(BENCH_TASKS)})")
        kernels = parse_kernels(a.kernel)
        compare = parse_compare(a.compare)
        the_plan = plan(a.tasks, kernels, a.workloads, compare, parse_batches(a.batches), a.kv)
    except (BenchError, TaskError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.dry_run:
        for task, wls, impls in the_plan:
            src = kernels.get(task.name, default_seed_path(task.name))
            print(f"{task.name}: kernel {src.relative_to(REPO_ROOT) if src.is_relative_to(REPO_ROOT) else src}")
            for label, path in compare.get(task.name, {}).items():
                print(f"  compare {label}: {path}")
            for w in wls:
                print(f"  {w.uuid}: {' | '.join(impls)}")
        return 0
    import torch
    if not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run to see the plan)", file=sys.stderr)
        return 2
    rows: list[dict] = []
    notes: list[str] = []
    for task, wls, impls in the_plan:
        runs = {"seed": load_kernel(default_seed_path(task.name), f"{task.name}_seed")}
        if task.name in kernels:
            runs["evolved"] = load_kernel(kernels[task.name], f"{task.name}_evolved")
        for i, (label, path) in enumerate(compare.get(task.name, {}).items()):
            runs[label] = load_kernel(path, f"{task.name}_compare{i}")
        # The eager peer first: it is the output every other candidate is checked against.
        order = ["torch eager"] + [i for i in impls if i != "torch eager"]
        for w in wls:
            part = bench_workload(task, w, order, runs)
            print(table(part), flush=True)
            rows += part
            torch.cuda.empty_cache()
        for label, run in runs.items():
            report = persistent_report(task, wls, run)
            if report:
                print(f"{task.name} {label}: {report}", flush=True)
                notes.append(f"{label} ({task.name}): {report}")
    text = (f"## bench_memory_bound on {torch.cuda.get_device_name()} ({date.today()})\n\n"
            f"`python scripts/bench_memory_bound.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
            f"torch {torch.__version__}, triton medians (do_bench), GB/s from the SOL byte model, "
            f"µs device: avo.harness.timing.device_ms (the evaluator's method: kernel time with the host's "
            f"launch gaps hidden, as under a CUDA graph), "
            f"% SOL against {rows[0]['hw'] if rows else '?'}.\n\n" + table(rows)
            + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else ""))
    print(text)
    if not a.no_doc:
        write_doc(text, tasks=a.tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
