"""Dispatch overhead of avo.apply: microseconds per call on a hit and on a miss, next to calling
the kernel (or the original function) directly, in the same process.

    .venv/bin/python scripts/bench_apply_overhead.py                 # CPU: isolates dispatch
    .venv/bin/python scripts/bench_apply_overhead.py --device cuda   # plus a real Triton kernel

The probe task's kernel does nothing (`run(x, scale, y)` returns at once) and its original
function returns its input, so on CPU the numbers are the dispatch itself: key from shapes and
dtypes, route lookup, guards, output allocation, counters. On CUDA the script also times the
grammar_bitmask seed kernel (xgrammar's workload shape) directly and through apply(). The
artifacts' traces are synthetic (this measures dispatch, not kernels).

`--transformers` adds the transformers integration's decode call (avo_attention_forward, the shipped
attention artifacts, the default policy) next to transformers' own sdpa_attention_forward: a key
no artifact serves (the miss path), avo not enabled, and on cuda the Llama-3-8B decode shape at
kv 8193 (a miss) and kv 8192 (a key the shipped H100 winner serves there). On CPU the shapes are
tiny so the numbers are the Python around SDPA.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import avo  # noqa: E402
from avo.apply import ArtifactMeta, load_entry, read_artifact, write_artifact  # noqa: E402
from avo.schema import (AxisVar, BuildSpec, Correctness, Definition, Environment, Evaluation,  # noqa: E402
                        EvaluationStatus, Performance, RandomInput, ScalarInput, Solution, SourceFile,
                        TensorSpec, Trace, Workload)

NOOP_KERNEL = "def run(x, scale, y):\n    return None\n"
PROBE_REFERENCE = "def run(x, scale):\n    return x\n"


def _trace(task: str, sol: str, w: Workload, hardware: str) -> Trace:
    ev = Evaluation(status=EvaluationStatus.PASSED, timestamp="1970-01-01T00:00:00+00:00",
                    environment=Environment(hardware=hardware, device_mode="interpret"), correctness=Correctness(),
                    performance=Performance(latency_ms=1.0, reference_latency_ms=1.0, speedup_factor=1.0))
    return Trace(definition=task, workload=w, solution=sol, evaluation=ev)


def probe_artifact(root: Path) -> Path:
    d = Definition(name="bench_probe", op_type="probe", reference=PROBE_REFERENCE, axes={"n": AxisVar()},
                   inputs={"x": TensorSpec(shape=["n"], dtype="float32"), "scale": TensorSpec(shape=None, dtype="float32")},
                   outputs={"y": TensorSpec(shape=["n"], dtype="float32")})
    sol = Solution(name="bench_noop", definition=d.name, author="bench",
                   spec=BuildSpec(language="python", target_hardware=["cpu", "cuda"], entry_point="noop.py::run"),
                   sources=[SourceFile(path="noop.py", content=NOOP_KERNEL)])
    wls = [Workload(uuid=f"n{n}", axes={"n": n}, inputs={"x": RandomInput(), "scale": ScalarInput(value=2.0)})
           for n in (256, 4096)]
    return write_artifact(root / "bench_probe", d, sol, [_trace(d.name, sol.name, w, "bench") for w in wls],
                          ArtifactMeta(ranges={"n": [1, 1 << 20]}))


def bitmask_artifact(root: Path) -> Path:
    from avo.tasks import REPO_ROOT, load_task, solution_from_kernel_file
    task = load_task("grammar_bitmask")
    sol = solution_from_kernel_file(task, REPO_ROOT / "kernels" / "grammar" / "bitmask_seed.py")
    return write_artifact(root / "grammar_bitmask", task.definition, sol,
                          [_trace(task.name, sol.name, w, "bench") for w in task.select("gpu")])


def per_call_us(fn, iters: int, repeats: int, sync) -> float:
    for _ in range(min(iters, 200)):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            fn()
        sync()
        samples.append((time.perf_counter_ns() - t0) / iters / 1e3)
    return statistics.median(samples)


def transformers_rows(dev: str, it: int, rep: int, sync) -> list:
    """Rows for the transformers decode call: avo_attention_forward vs sdpa_attention_forward."""
    import avo.apply.transformers_attn as avo_attn
    from avo.tasks import REPO_ROOT
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Attn(torch.nn.Module):  # what sdpa_attention_forward reads off LlamaAttention
        is_causal = True

        def __init__(self, groups: int, dim: int):
            super().__init__()
            self.num_key_value_groups, self.scaling = groups, dim ** -0.5

    if dev == "cuda":
        hq, hkv, d, lens, dt = 32, 8, 128, (8193, 8192), torch.bfloat16
    else:
        hq, hkv, d, lens, dt = 4, 1, 16, (5,), torch.bfloat16  # the shipped keys' dtype: routed, not a dtype guard
        torch.set_num_threads(1)  # SDPA on 5 keys: threads only add noise
    m = Attn(hq // hkv, d).eval()
    q = torch.randn(1, 1, hq, d, dtype=dt, device=dev).transpose(1, 2)  # as LlamaAttention makes it
    rows = []
    avo.apply.enable(REPO_ROOT / "kernels" / "attention" / "evolved")  # the default policy
    with torch.no_grad():
        for kv in lens:
            k, v = (torch.randn(1, hkv, kv, d, dtype=dt, device=dev) for _ in range(2))

            def sd():
                return sdpa_attention_forward(m, q, k, v, None, dropout=0.0, scaling=m.scaling, position_ids=None)

            def av():
                return avo_attn.avo_attention_forward(m, q, k, v, None, dropout=0.0, scaling=m.scaling,
                                                      position_ids=None)
            avo.apply.stats(reset=True)
            av()
            s = avo.apply.stats().get("attention_gqa_decode", {})
            what = "served" if s.get("hits") else "miss -> SDPA" if s.get("misses") else "fallback -> SDPA"
            base = per_call_us(sd, it, rep, sync)
            rows.append((f"transformers sdpa_attention_forward, decode kv {kv}", base, None))
            rows.append((f"avo_attention_forward, decode kv {kv} ({what})", per_call_us(av, it, rep, sync), base))
            if kv == lens[0]:
                avo.apply.disable()
                rows.append((f"avo_attention_forward, decode kv {kv}, avo not enabled", per_call_us(av, it, rep, sync),
                             base))
                avo.apply.enable(REPO_ROOT / "kernels" / "attention" / "evolved")
    avo.apply.disable()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--transformers", action="store_true",
                    help="also the transformers integration's decode call vs transformers' SDPA (the miss path)")
    args = ap.parse_args()
    dev = args.device
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        noop = load_entry(read_artifact(probe_artifact(root)))

        def original(x, scale):
            return x
        applied = avo.apply("bench_probe")(original)
        x_hit, x_near, x_miss = (torch.ones(n, device=dev) for n in (4096, 3000, 1 << 21))
        y = torch.empty(4096, device=dev)
        it, rep = args.iters, args.repeats
        base = per_call_us(lambda: noop(x_hit, 2.0, y), it, rep, sync)
        rows.append(("no-op kernel called directly (outputs preallocated)", base, None))
        alloc = per_call_us(lambda: noop(x_hit, 2.0, torch.empty(4096, device=dev)), it, rep, sync)
        rows.append(("no-op kernel + torch.empty output", alloc, None))
        orig = per_call_us(lambda: original(x_hit, 2.0), it, rep, sync)
        rows.append(("original function called directly", orig, None))
        rows.append(("apply, not enabled -> original", per_call_us(lambda: applied(x_hit, 2.0), it, rep, sync), orig))
        avo.apply.enable(root, nearest=True, require_faster=False)  # dispatch only: synthetic traces
        # a hit allocates the outputs (the non-DPS caller would too): compare with kernel + torch.empty
        rows.append(("apply hit, exact key", per_call_us(lambda: applied(x_hit, 2.0), it, rep, sync), alloc))
        rows.append(("apply hit, nearest key (route cached)", per_call_us(lambda: applied(x_near, 2.0), it, rep, sync), alloc))
        rows.append(("apply hit, keyword arguments", per_call_us(lambda: applied(x=x_hit, scale=2.0), it, rep, sync), alloc))
        rows.append(("apply miss (outside range) -> original", per_call_us(lambda: applied(x_miss, 2.0), it, rep, sync), orig))
        if dev == "cuda":
            bm_root = root / "bm"
            bm = load_entry(read_artifact(bitmask_artifact(bm_root)))
            ns: dict = {}
            from avo.tasks import load_task
            exec(load_task("grammar_bitmask").definition.reference, ns)
            applied_bm = avo.apply("grammar_bitmask")(ns["run"])
            avo.apply.enable(root, bm_root, nearest=True, require_faster=False)
            b, v = 16, 151936
            logits = torch.randn(b, v, device=dev)
            bits = torch.full((b, (v + 31) // 32), -1, dtype=torch.int32, device=dev)
            idx = torch.arange(b, dtype=torch.int32, device=dev)
            it_bm = max(it // 10, 100)
            k = per_call_us(lambda: bm(logits, bits, idx), it_bm, rep, sync)
            rows.append(("grammar_bitmask seed kernel directly (b16, v151936)", k, None))
            rows.append(("grammar_bitmask through apply (exact key)", per_call_us(lambda: applied_bm(logits, bits, idx), it_bm, rep, sync), k))
            # the dispatched kernel must also be right: random bits, compared with the reference
            x = torch.randn(b, v, device=dev)
            rbits = torch.randint(-2**31, 2**31 - 1, bits.shape, dtype=torch.int32, device=dev)
            want = x.clone()
            ns["run"](want, rbits, idx)
            applied_bm(x, rbits, idx)
            assert torch.equal(x, want), "grammar_bitmask through apply differs from the reference"
        stats = avo.apply.stats()
        avo.apply.disable()
        if args.transformers:
            rows += transformers_rows(dev, it, rep, sync)
    name_w = max(len(r[0]) for r in rows)
    print(f"device: {dev} ({torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'}), torch {torch.__version__}, "
          f"{args.iters} calls x {args.repeats} repeats, median")
    print(f"{'path'.ljust(name_w)}  {'us/call':>9}  {'overhead us':>11}   (hits vs kernel + torch.empty, misses vs original; "
          "transformers rows vs sdpa_attention_forward)")
    for name, us, ref in rows:
        over = "" if ref is None else f"{us - ref:+.2f}"
        print(f"{name.ljust(name_w)}  {us:9.2f}  {over:>11}")
    for task, s in stats.items():
        print(f"counters {task}: hits={s['hits']} misses={s['misses']} fallbacks={s['fallbacks']} errors={s['errors']}")


if __name__ == "__main__":
    main()
