"""GPU check of the warp-specialised Gluon GQA prefill kernel (kernels/attention/gqa_fwd_gluon_ws.py).

    python3 scripts/gluon_ws_check.py                      # CONFIG (persistent), then one tile per CTA
    python3 scripts/gluon_ws_check.py --quick              # CONFIG only
    python3 scripts/gluon_ws_check.py --config '{"BLOCK_N": 64}' --config '{"EXIT_WORKER": false}'
    python3 scripts/gluon_ws_check.py --no-time            # correctness only

Every (config, shape) runs in its own subprocess with a timeout, so a hang (a wrong mbarrier phase
spins forever) costs one timeout and is reported as one line; after a hang or crash the rest of that
config's shapes are skipped (the next config still runs). Per case: the new kernel against the fp32
reference of scripts/gluon_attention_check.py (max abs err <= 2e-2, and |o - ref| <= 1e-3 + 2e-2|ref|
on >= 99.9% of the elements), then triton.testing.do_bench medians of the new kernel, the existing
kernels/attention/gqa_fwd_gluon.py and torch SDPA's cuDNN backend, as TFLOP/s (4*B*Hq*S*S*D, halved
when causal) with the ratios ws/cudnn and ws/gluon. The first shape is a small smoke case.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WS = REPO / "kernels/attention/gqa_fwd_gluon_ws.py"
GLUON = REPO / "kernels/attention/gqa_fwd_gluon.py"

# (B, Hq, Hkv, S, D, causal, dtype)
SHAPES = [
    (1, 4, 2, 77, 128, True, "bfloat16"),  # smoke: tail rows, one tile, consumer 1 partly past S
    (2, 8, 2, 1000, 128, False, "bfloat16"),
    (2, 8, 8, 1000, 64, True, "float16"),  # Hkv = Hq, D64 fp16
    (1, 2, 2, 1, 128, False, "bfloat16"),  # S=1: consumer 1's Q tile entirely past S
    (16, 32, 4, 1024, 128, False, "bfloat16"),
    (16, 32, 4, 1024, 128, True, "bfloat16"),
    (4, 32, 8, 4096, 128, False, "bfloat16"),
    (4, 32, 8, 4096, 128, True, "bfloat16"),
    (4, 32, 32, 4096, 128, False, "bfloat16"),  # MHA: the tile order decides whether K/V come from L2
    (4, 32, 32, 4096, 128, True, "bfloat16"),
    (16, 16, 16, 1024, 128, False, "bfloat16"),
    (16, 16, 16, 1024, 128, True, "bfloat16"),
]


def _child(args) -> int:
    """One (config, shape): correctness, then timing. Prints one RESULT line (JSON)."""
    import importlib.util

    import torch
    sys.path.insert(0, str(REPO / "scripts"))
    import gluon_attention_check as gac  # reference(), tflops(), cudnn_fn(), load()

    shape = json.loads(args.case)
    cfg = json.loads(args.child_config)
    b, hq, hkv, s, d, causal, dt = shape
    out = dict(shape=shape, config=cfg)
    ws = gac.load(WS, "gqa_fwd_gluon_ws_check")
    ws.CONFIG.update(cfg)
    dtype = getattr(torch, dt)
    torch.manual_seed(0)
    q = torch.randn(b, hq, s, d, device="cuda", dtype=dtype)
    k = torch.randn(b, hkv, s, d, device="cuda", dtype=dtype)
    v = torch.randn(b, hkv, s, d, device="cuda", dtype=dtype)
    o = torch.full_like(q, float("nan"))
    t0 = time.time()
    ws.run(q, k, v, causal, o)
    torch.cuda.synchronize()
    out["first_call_s"] = round(time.time() - t0, 1)
    ref = gac.reference(q, k, v, causal)
    diff = (o.float() - ref).abs()
    maxerr = diff.max().item()  # nan if anything was left unwritten
    within = diff <= 1e-3 + 2e-2 * ref.abs()
    ok = bool(maxerr <= 2e-2 and within.float().mean().item() >= 0.999)
    out.update(maxerr=maxerr, ok=ok, nan=int(torch.isnan(o).sum()))
    if not ok:
        bad = (~within).nonzero()
        out["bad_rows"] = bad[:, 2].unique()[:8].tolist()
        out["bad_heads"] = bad[:, 1].unique()[:8].tolist()
        out["n_bad"] = int((~within).sum())
    del ref, diff, within
    print("RESULT " + json.dumps(out), flush=True)
    if not ok or args.no_time:
        return 0
    from triton.testing import do_bench
    cands = {"ws": lambda: ws.run(q, k, v, causal, o)}
    try:
        gl = gac.load(GLUON, "gqa_fwd_gluon_check")
        o2 = torch.empty_like(q)
        cands["gluon"] = lambda: gl.run(q, k, v, causal, o2)
    except Exception as e:  # noqa: BLE001
        out["gluon_error"] = f"{type(e).__name__}: {e}"[:200]
    try:
        fn, how = gac.cudnn_fn(q, k, v, causal)
        cands["cudnn"] = fn
        out["cudnn_mode"] = how
    except Exception as e:  # noqa: BLE001
        out["cudnn_error"] = f"{type(e).__name__}: {e}"[:200]
    warmup, rep = (10, 50) if args.quick_time else (25, 100)
    times = {}
    for name, fn in cands.items():
        try:
            times[name] = do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
        except Exception as e:  # noqa: BLE001
            out[f"{name}_time_error"] = f"{type(e).__name__}: {e}"[:200]
    out["ms"] = times
    out["tflops"] = {n: gac.tflops((b, hq, hkv, s, d, causal), ms) for n, ms in times.items()}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _fmt(res, tag):
    tf = res.get("tflops", {})

    def col(n):
        return f"{tf[n]:7.1f}" if n in tf else f"{'-':>7}"

    def ratio(a, c):
        return f"{tf[a] / tf[c]:7.2f}" if a in tf and c in tf else f"{'-':>7}"
    return (f"{tag} | {res['maxerr']:8.2e} {'yes' if res['ok'] else 'NO':>3} | {col('ws')} {col('gluon')} {col('cudnn')} | "
            f"{ratio('ws', 'cudnn')} {ratio('ws', 'gluon')} {ratio('gluon', 'cudnn')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CONFIG only (not the one-tile-per-CTA variant), shorter timing")
    ap.add_argument("--config", action="append", default=None,
                    help="JSON merged into the kernel's CONFIG; repeatable, one run of every shape each")
    ap.add_argument("--no-time", action="store_true", help="correctness only")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per (config, shape) subprocess")
    ap.add_argument("--shapes", default=None, help="comma-separated indices into SHAPES")
    # child mode
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-config", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--quick-time", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case is not None:
        try:
            return _child(args)
        except Exception as e:  # noqa: BLE001
            tb = traceback.format_exc().strip().splitlines()
            print("ERROR " + json.dumps(dict(error=f"{type(e).__name__}: {str(e).strip()[:400]}", tb=tb[-10:])),
                  flush=True)
            return 1

    try:
        import torch
        import triton
        dev = (f"{torch.cuda.get_device_name()} cc {torch.cuda.get_device_capability()}"
               if torch.cuda.is_available() else "no CUDA device")
        print(f"device {dev} | torch {torch.__version__} | triton {triton.__version__}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"torch/triton import failed: {e}")
    configs = [json.loads(c) for c in args.config] if args.config else ([{}] if args.quick else [{}, {"PERSISTENT": False}])
    shapes = SHAPES if args.shapes is None else [SHAPES[int(i)] for i in args.shapes.split(",")]
    head = (f"{'B':>3} {'Hq':>3} {'Hkv':>3} {'S':>5} {'D':>4} {'causal':>6} {'dtype':>8} | {'maxerr':>8} {'ok':>3} | "
            f"{'ws':>7} {'gluon':>7} {'cudnn':>7} TFLOP/s | {'ws/cud':>7} {'ws/gl':>7} {'gl/cud':>7}")
    n_fail = n_run = 0
    for cfg in configs:
        print(f"\n== config {json.dumps(cfg)} (merged into CONFIG of {WS.name})", flush=True)
        print(head)
        print("-" * len(head), flush=True)
        dead = None
        for shape in shapes:
            b, hq, hkv, s, d, causal, dt = shape
            tag = f"{b:>3} {hq:>3} {hkv:>3} {s:>5} {d:>4} {str(causal):>6} {dt:>8}"
            n_run += 1
            if dead:
                print(f"{tag} | SKIPPED ({dead} earlier in this config)", flush=True)
                n_fail += 1
                continue
            cmd = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(list(shape)),
                   "--child-config", json.dumps(cfg)]
            if args.no_time:
                cmd.append("--no-time")
            if args.quick:
                cmd.append("--quick-time")
            t0 = time.time()
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=str(REPO))
            except subprocess.TimeoutExpired as e:
                so = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
                first = [ln for ln in so.splitlines() if ln.startswith("RESULT ")]
                where = "after the correctness run (in timing)" if first else "before any result: likely a hang"
                print(f"{tag} | FAILED: timeout {args.timeout:.0f}s {where}", flush=True)
                if first:
                    print(_fmt(json.loads(first[-1][7:]), tag) + "  (correctness only)", flush=True)
                n_fail += 1
                dead = "timeout"
                continue
            results = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            errors = [ln for ln in p.stdout.splitlines() if ln.startswith("ERROR ")]
            if errors or not results:
                err = json.loads(errors[-1][6:]) if errors else dict(error=f"rc {p.returncode}, no result",
                                                                      tb=(p.stderr or "").strip().splitlines()[-10:])
                print(f"{tag} | FAILED: {err['error']}", flush=True)
                for ln in err.get("tb", [])[-6:]:
                    print("      " + ln)
                n_fail += 1
                if p.returncode < 0 or "illegal" in err["error"].lower() or "launch" in err["error"].lower():
                    dead = "a crash"
                continue
            res = json.loads(results[-1][7:])
            line = _fmt(res, tag) + f"   [{time.time() - t0:.0f}s]"
            print(line, flush=True)
            if not res["ok"]:
                n_fail += 1
                print(f"{tag} | MISMATCH: maxerr {res['maxerr']:.3g}, {res.get('n_bad')} bad elements, nan {res['nan']}, "
                      f"bad rows (first 8) {res.get('bad_rows')}, bad heads {res.get('bad_heads')}", flush=True)
            for key in ("gluon_error", "cudnn_error", "ws_time_error", "gluon_time_error", "cudnn_time_error"):
                if key in res:
                    print(f"{tag} | note {key}: {res[key]}", flush=True)
    print(f"\n{n_run - n_fail}/{n_run} cases correct" + (f", {n_fail} FAILED" if n_fail else ""), flush=True)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
