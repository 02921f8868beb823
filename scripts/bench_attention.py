"""Attention family on one GPU: evolved best vs seed vs torch SDPA (cuDNN, FlashAttention,
memory-efficient backends), every candidate in this one process on the same inputs.

    .venv/bin/python scripts/bench_attention.py --dry-run                    # CPU: what would be timed
    .venv/bin/python scripts/bench_attention.py                              # GPU: seeds vs SDPA
    .venv/bin/python scripts/bench_attention.py --kernel attention_gqa_fwd=lineages/x/best.py
    .venv/bin/python scripts/bench_attention.py --tasks attention_mha_fwd --peer attention_mha_fwd=kernels/peers/attention_fa4.py

Per task and GPU workload: each candidate's output is first checked against SDPA's (twice the
task tolerance, as the A/B gate compares two correct kernels); a failing candidate is reported and
not timed. Timing: `triton.testing.do_bench` median (it flushes L2 before every call), repeated
--repeats times with the candidates interleaved, the median of those medians reported; "ms device"
is avo.harness.timing.device_ms (the evaluator's method: host launch gaps hidden). Prefill is
reported in TFLOP/s (causal FLOPs halved), decode in GB/s of K+V read; % SOL = T_SOL / T from
avo.harness.sol for the detected GPU. Kernels run destination-passing (output pre-allocated);
SDPA returns a fresh tensor (no copy, so its time includes no extra write of o). Grouped KV heads
go to SDPA with enable_gqa=True; a backend that refuses it gets K and V repeated to the query heads
once, before timing (column `gqa`: native / repeat-kv), so its time excludes the repeat.
--peer adds a peer file (a library's kernel behind the task's run(), e.g. FlashAttention-4) as
candidate `peer-<file stem>`, checked and timed like the kernels.
The table goes to stdout and to the `<!-- bench_attention -->` section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avo.harness import sol  # noqa: E402
from avo.schema import Workload  # noqa: E402
from avo.tasks import Task, TaskError, load_task  # noqa: E402

# Explicit list: task -> (seed kernel, kind). Prefill = [B, H, S, D] with a causal flag; decode =
# one query token [B, Hq, D] over a [B, Hkv, KV, D] cache.
BENCH_TASKS: dict[str, tuple[str, str]] = {
    "attention_mha_fwd": ("kernels/attention/mha_fwd_seed.py", "prefill"),
    "attention_gqa_fwd": ("kernels/attention/gqa_fwd_seed.py", "prefill"),
    "attention_gqa_decode": ("kernels/attention/gqa_decode_seed.py", "decode"),
}
SDPA_BACKENDS = ["CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"]
REF_ORDER = ["sdpa-flash", "sdpa-cudnn", "sdpa-efficient"]  # first that runs is the reference output


class BenchError(Exception):
    """Bad usage or a broken candidate file; printed as one line."""


# ---- candidates ----

def load_kernel_module(path: Path, tag: str) -> ModuleType:
    if not path.exists():
        raise BenchError(f"{path}: no such kernel file")
    spec = importlib.util.spec_from_file_location(f"bench_attention_{tag}", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        raise BenchError(f"{path}: failed to import ({type(e).__name__}: {e})") from None
    if not callable(getattr(mod, "run", None)):
        raise BenchError(f"{path}: defines no run(...)")
    return mod


def parse_kernel_args(items: list[str], tasks: list[str], flag: str = "--kernel") -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not path:
            raise BenchError(f"{flag} {item!r}: expected TASK=PATH")
        if task not in tasks:
            raise BenchError(f"{flag} {item!r}: task {task!r} is not benchmarked (tasks: {', '.join(tasks)})")
        out.append((task, Path(path)))
    return out


def peer_name(path: Path) -> str:
    return "peer-" + path.stem.removeprefix("attention_")


def candidate_names(task: str, evolved: dict[str, Path], peers: dict[str, list[Path]] | None = None) -> list[str]:
    names = ["evolved"] if task in evolved else []
    return (names + ["seed"] + [f"sdpa-{b.split('_')[0].lower()}" for b in SDPA_BACKENDS]
            + [peer_name(p) for p in (peers or {}).get(task, [])])


# ---- doc section ----

def update_doc_section(doc: Path, body: str, tasks: Optional[list[str]] = None) -> None:
    """Replace this run's marked section of `doc` (append it when absent; create the file when
    missing): one section per task set, so a run on a subset (say prefill alone) leaves the full
    table, decode rows included, in place."""
    from avo.ui.doc_section import replace_marked_section, task_set_markers
    start, end = task_set_markers("bench_attention", tasks, BENCH_TASKS)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nMeasured by scripts under scripts/; each section is written by its script.\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(replace_marked_section(text, start, end, body))


# ---- GPU side ----

def _sdpa_call(backend: str, kind: str, args: dict[str, Any]) -> tuple[Callable[[], Any], str]:
    """A no-argument SDPA call on these inputs and how grouped heads were handled."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = getattr(SDPBackend, backend)
    q, k, v = args["q"], args["k"], args["v"]
    causal = bool(args.get("causal", False))
    if kind == "decode":
        q = q.unsqueeze(2)
    grouped = k.shape[1] != q.shape[1]

    def call(qq, kk, vv, gqa):
        with sdpa_kernel(be):
            return F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal, enable_gqa=gqa)

    fix = (lambda t: t.squeeze(2)) if kind == "decode" else (lambda t: t)
    if not grouped:
        call(q, k, v, False)
        return (lambda: fix(call(q, k, v, False))), "mha"
    try:
        call(q, k, v, True)
        torch.cuda.synchronize()
        return (lambda: fix(call(q, k, v, True))), "native"
    except RuntimeError:
        rep = q.shape[1] // k.shape[1]
        kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        call(q, kr, vr, False)
        return (lambda: fix(call(q, kr, vr, False))), "repeat-kv"


def _kernel_call(mod: ModuleType, task: Task, args: dict[str, Any], out) -> Callable[[], Any]:
    ordered = [args[n] for n in task.definition.inputs]

    def call():
        mod.run(*ordered, out)
        return out
    return call


def _close(got, want, tol) -> tuple[bool, str]:
    import torch
    g, w = got.float(), want.float()
    if g.shape != w.shape:
        return False, f"shape {tuple(g.shape)} != {tuple(w.shape)}"
    if torch.isnan(g).any():
        return False, "NaN in output"
    ok = (g - w).abs() <= 2 * tol.atol + 2 * tol.rtol * w.abs()
    ratio = ok.float().mean().item()
    return ratio >= tol.matched_ratio, f"matched {ratio:.4f}, max err {(g - w).abs().max().item():.2e}"


def bench_workload(task: Task, kind: str, w: Workload, mods: dict[str, ModuleType], hw: Optional[sol.Hardware],
                   repeats: int) -> list[dict]:
    import torch
    import triton.testing
    from avo.harness.inputs import alloc_outputs, make_inputs
    from avo.harness.timing import device_ms
    d = task.definition
    args = make_inputs(d, w, seed=0, device="cuda")
    calls: dict[str, Callable[[], Any]] = {}
    rows: dict[str, dict] = {}
    for backend in SDPA_BACKENDS:
        name = f"sdpa-{backend.split('_')[0].lower()}"
        try:
            calls[name], how = _sdpa_call(backend, kind, args)
            rows[name] = dict(candidate=name, gqa=how)
        except RuntimeError as e:
            rows[name] = dict(candidate=name, gqa="-", check=f"unavailable: {str(e).splitlines()[0][:60]}")
    ref_name = next((n for n in REF_ORDER if n in calls), None)
    if ref_name is None:
        raise BenchError(f"{w.uuid}: no SDPA backend runs this shape (nothing to check against)")
    ref = calls[ref_name]().clone()
    outs = {}
    for name, mod in mods.items():
        outs[name] = alloc_outputs(d, w, "cuda")[next(iter(d.outputs))]
        calls[name] = _kernel_call(mod, task, args, outs[name])
        rows[name] = dict(candidate=name, gqa="peer" if name.startswith("peer-") else "kernel")
    for name in list(calls):
        if name in outs:  # poisoned: a kernel that leaves o unwritten fails the check
            outs[name].fill_(float("nan"))
        try:
            ok, msg = _close(calls[name](), ref, d.tolerance)
        except Exception as e:  # a candidate that crashes is reported, the others still run
            ok, msg = False, f"{type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''}"
        torch.cuda.synchronize()
        rows[name]["check"] = "ok" if ok else f"FAIL ({msg})"
        if not ok:
            del calls[name]
    times: dict[str, list[float]] = {n: [] for n in calls}
    for _ in range(repeats):  # interleaved: drift in clocks or temperature hits every candidate alike
        for name, fn in calls.items():
            times[name].append(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    dev = dict(zip(calls, device_ms(list(calls.values()))))
    flops, _ = sol.work(d, w)
    kv_bytes = sum(args[n].numel() * args[n].element_size() for n in ("k", "v"))
    t_sol = sol.sol_time_s(d, w, hw) if hw else None
    seed_ms = statistics.median(times["seed"]) if times.get("seed") else None
    out = []
    order = ([n for n in ("evolved", "seed") if n in rows] + [n for n in rows if n.startswith("sdpa-")]
             + [n for n in rows if n.startswith("peer-")])
    for name in order:
        r = dict(task=task.name, workload=w.uuid, **rows[name])
        if name in times:
            ms = statistics.median(times[name])
            r["ms"] = ms
            r["rate"] = flops / (ms * 1e-3) / 1e12 if kind == "prefill" else kv_bytes / (ms * 1e-3) / 1e9
            r["sol_pct"] = 100 * t_sol / (ms * 1e-3) if t_sol else None
            r["vs_seed"] = seed_ms / ms if seed_ms else None
            r["dev_ms"] = dev[name]
        out.append(r)
    return out


# ---- table ----

def format_table(rows: list[dict]) -> str:
    head = "| task | workload | candidate | gqa | ms | TFLOP/s or GB/s | % SOL | speedup vs seed | ms device | check |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        def f(k, spec, r=r):
            return format(r[k], spec) if r.get(k) is not None else "-"
        lines.append(f"| {r['task']} | {r['workload']} | {r['candidate']} | {r.get('gqa', '-')} | {f('ms', '.4f')} | "
                     f"{f('rate', '.1f')} | {f('sol_pct', '.1f')} | {f('vs_seed', '.2f')} | {f('dev_ms', '.4f')} | {r.get('check', '-')} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(BENCH_TASKS), help="comma-separated tasks")
    p.add_argument("--workloads", default="", help="comma-separated workload uuids (default: every GPU workload)")
    p.add_argument("--kernel", action="append", default=[], metavar="TASK=PATH",
                   help="evolved kernel for a task (repeatable); without it the seed is timed alone")
    p.add_argument("--peer", action="append", default=[], metavar="TASK=PATH",
                   help="a peer file timed beside SDPA (repeatable), e.g. kernels/peers/attention_fa4.py")
    p.add_argument("--repeats", type=int, default=5, help="do_bench runs per candidate (median of medians)")
    p.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"), help="markdown file to update")
    p.add_argument("--no-doc", action="store_true", help="print only")
    p.add_argument("--dry-run", action="store_true", help="list what would be timed (no GPU needed)")
    a = p.parse_args(argv)
    try:
        tasks = [t for t in a.tasks.split(",") if t]
        unknown = [t for t in tasks if t not in BENCH_TASKS]
        if unknown:
            raise BenchError(f"unknown task(s) {unknown} (known: {', '.join(BENCH_TASKS)})")
        if a.repeats < 1:
            raise BenchError("--repeats must be >= 1")
        evolved = dict(parse_kernel_args(a.kernel, tasks))
        peers: dict[str, list[Path]] = {}
        for t, path in parse_kernel_args(a.peer, tasks, "--peer"):
            peers.setdefault(t, []).append(path)
        loaded = {t: load_task(t) for t in tasks}
        wanted = [u for u in a.workloads.split(",") if u]
        plan: dict[str, list[Workload]] = {}
        for t, task in loaded.items():
            gpu = task.select("gpu")
            plan[t] = [w for w in gpu if not wanted or w.uuid in wanted]
        missing = set(wanted) - {w.uuid for ws in plan.values() for w in ws}
        if missing:
            raise BenchError(f"unknown GPU workload(s) {sorted(missing)}")
        mods = {t: {**({"evolved": load_kernel_module(evolved[t], f"{t}_evolved")} if t in evolved else {}),
                    "seed": load_kernel_module(REPO / BENCH_TASKS[t][0], f"{t}_seed"),
                    **{peer_name(pp): load_kernel_module(pp, f"{t}_{peer_name(pp)}") for pp in peers.get(t, [])}}
                for t in tasks}
        if a.dry_run:
            for t in tasks:
                print(f"{t} ({BENCH_TASKS[t][1]}): evolved = {evolved.get(t, '(none: seed only)')}")
                for w in plan[t]:
                    print(f"  {w.uuid}: " + ", ".join(candidate_names(t, evolved, peers)))
            print(f"would update {a.doc} section for {','.join(tasks)}" if not a.no_doc else "would not write a doc")
            return 0
        import torch
        if not torch.cuda.is_available():
            raise BenchError("no CUDA device (use --dry-run to list the plan on CPU)")
        gpu_name = sol.detect_gpu_name() or torch.cuda.get_device_name(0)
        hw = sol.match_gpu_name(gpu_name)
        rows: list[dict] = []
        for t in tasks:
            for w in plan[t]:
                rows += bench_workload(loaded[t], BENCH_TASKS[t][1], w, mods[t], hw, a.repeats)
                print(format_table(rows[-len(candidate_names(t, evolved, peers)):]).split("\n", 2)[2], flush=True)
                torch.cuda.empty_cache()
    except (BenchError, TaskError) as e:
        print(f"bench_attention: {e}", file=sys.stderr)
        return 2
    import triton
    table = format_table(rows)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    kernels = ", ".join(f"{t}={p}" for t, p in evolved.items()) or "none (seeds only)"
    kernels += "".join(f"; peer {t}={p}" for t, ps in peers.items() for p in ps)
    body = (f"## Attention family ({gpu_name})\n\n"
            f"{stamp}; torch {torch.__version__}, triton {triton.__version__}; SOL table entry: "
            f"{hw.name if hw else 'none (no % SOL)'}; evolved kernels: {kernels}.\n"
            f"`scripts/bench_attention.py`: do_bench median (L2 flushed per call) over {a.repeats} interleaved runs; "
            "ms device: avo.harness.timing.device_ms, the evaluator's method (L2 flushed, host launch gaps hidden "
            "as under a CUDA graph; what decides batch-1 decode, where do_bench times the launcher); "
            "prefill in TFLOP/s (causal halved), decode in GB/s of K+V read; gqa = how SDPA got grouped KV heads "
            "(native enable_gqa, or repeat-kv: K/V repeated once before timing).\n\n" + table + "\n")
    print(table)
    if not a.no_doc:
        update_doc_section(Path(a.doc), body, tasks)
        print(f"updated {a.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
