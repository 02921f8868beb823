"""Call one kernel file on one GPU workload of its task N times: a target for ncu or nsys.

    ncu --section SpeedOfLight python scripts/call_kernel.py megakernel_decode_layer \\
        kernels/megakernel/evolved/decode_layer_h100/sources/kernel.py gpu_b1_kv4000_bfloat16 --calls 2

The output is checked against the task's eager reference once (a profile of a wrong kernel is no
use); the exit code says whether it matched.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("bench_memory_bound", HERE / "bench_memory_bound.py")
bmb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bmb)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("kernel", type=Path)
    ap.add_argument("workload", help="a workload uuid of the task (a gpu one; with --device cpu a cpu one)")
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: Triton's interpreter (set TRITON_INTERPRET=1) on the task's cpu workloads")
    a = ap.parse_args(argv)
    import torch
    from avo.harness.check import compare
    from avo.harness.inputs import make_inputs
    task = bmb.load_task(a.task)
    kind = "gpu" if a.device == "cuda" else "cpu"
    w = next((w for w in task.select(kind) if w.uuid == a.workload), None)
    if w is None:
        print(f"error: {a.task} has no {kind} workload {a.workload!r}", file=sys.stderr)
        return 2
    ns = bmb.reference_ns(task)
    args = list(make_inputs(task.definition, w, 0, a.device, ns.get("make_inputs")).values())
    d = task.definition
    ref_args = [v.clone() if isinstance(v, torch.Tensor) else v for v in args]
    want = bmb.results_of(task, ref_args, ns["run"](*ref_args))
    fn = bmb.kernel_fn(task, w, bmb.load_kernel(a.kernel, "called"), args, a.device)
    for _ in range(a.calls):
        got = fn()
    if a.device == "cuda":
        torch.cuda.synchronize()
    bad = [r for r in (compare(n, g, e, e.dtype, d.tolerance, device=a.device) for n, g, e in zip(d.result_names, got, want))
           if r.status.value != "PASSED"]
    print(f"{a.task} {a.workload}: {a.calls} calls, " + (f"MISMATCH {bad[0].detail}" if bad else "matches the reference"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
