"""GPU diagnosis for the evaluator's side-stream check: the attention prefill kernels timed
the harness's way and back to back, in one process.

    python scripts/diag_wall_vs_events.py [--iters 20] [--shapes gqa,mha]

The evaluator flags "work off the timed stream" when the synced wall time of back-to-back calls is
far above both the event median and the host issue time. This script reports, per kernel and shape:
- the event median the evaluator uses (L2 flushed, the GPU kept busy while the host enqueues);
- the synced wall time and host issue time per call over back-to-back calls (the check's inputs);
- events around the whole back-to-back run, so a kernel that is slower when it runs back to back
  (power, clocks) is told apart from work on another stream;
- one synced call at a time, the SM clock and throttle reasons after the run, and the largest
  output difference from cuDNN after the back-to-back calls.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from avo.harness import timing  # noqa: E402

SHAPES = {"gqa": (4, 32, 8, 4096, 128), "mha": (4, 32, 32, 4096, 128)}
WS = "kernels/attention/gqa_fwd_gluon_ws.py"
KERNELS = {  # label: (file, CONFIG overrides)
    "gluon ws": (WS, {}),
    "gluon ws, not persistent": (WS, {"PERSISTENT": False}),
    "gluon ws, EXIT_WORKER off": (WS, {"EXIT_WORKER": False}),
    "gluon": ("kernels/attention/gqa_fwd_gluon.py", {}),
    "triton gqa_fwd_h100": ("kernels/attention/evolved/gqa_fwd_h100/sources/kernel.py", {}),
}


def load(path: str, overrides: dict, n: int):
    spec = importlib.util.spec_from_file_location(f"diag_kernel_{n}", REPO / path)  # a module per variant
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.CONFIG.update(overrides)
    return mod.run


def cudnn(q, k, v, causal, o):
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        o.copy_(F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal), enable_gqa=k.shape[1] != q.shape[1]))


def measure(fn, args, iters: int) -> dict:
    call = lambda i: fn(*args)  # noqa: E731
    for _ in range(3):
        call(0)
    torch.cuda.synchronize()
    evt = statistics.median(timing.time_interleaved([call], [None], 1, 3, iters, "cuda")[0])
    wall, issue = timing.wall_per_call_ms(call, 1, iters, "cuda")
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for i in range(iters):
        call(i)
    e.record()
    torch.cuda.synchronize()
    b2b_evt = s.elapsed_time(e) / iters
    clk, why = timing.gpu_clock_state()
    single = []
    for i in range(min(iters, 10)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        call(i)
        torch.cuda.synchronize()
        single.append((time.perf_counter() - t0) * 1e3)
    return dict(evt=evt, wall=wall, issue=issue, b2b_evt=b2b_evt, single=statistics.median(single), clk=clk, why=why)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--shapes", default="gqa,mha")
    a = ap.parse_args()
    print("| shape | kernel | event median ms | b2b wall ms/call | issue ms/call | b2b events ms/call | synced single ms "
          "| SM MHz after | throttle | max diff vs cuDNN |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in a.shapes.split(","):
        b, hq, hkv, s, d = SHAPES[name]
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, hq, s, d, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(b, hkv, s, d, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(b, hkv, s, d, device="cuda", dtype=torch.bfloat16, generator=g)
        ref = torch.empty_like(q)
        cudnn(q, k, v, False, ref)
        impls = [("cuDNN", cudnn)] + [(n, load(p, ov, i)) for i, (n, (p, ov)) in enumerate(KERNELS.items())]
        for label, fn in impls:
            o = torch.zeros_like(q)
            try:
                r = measure(fn, (q, k, v, False, o), a.iters)
            except Exception as e:  # one line per kernel that cannot run this shape
                print(f"| {name} | {label} | {type(e).__name__}: {str(e).splitlines()[0][:120]} |||||||||")
                continue
            diff = (o.float() - ref.float()).abs().max().item()
            print(f"| {name} | {label} | {r['evt']:.3f} | {r['wall']:.3f} | {r['issue']:.3f} | {r['b2b_evt']:.3f} | "
                  f"{r['single']:.3f} | {r['clk']} | {','.join(r['why']) or '-'} | {diff:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
