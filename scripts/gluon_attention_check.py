"""GPU check of the Gluon (Hopper, FA3-style) GQA prefill kernel: correctness and speed, one process.

    python3 scripts/gluon_attention_check.py            # all shapes
    python3 scripts/gluon_attention_check.py --quick    # fewer shapes, shorter timing
    python3 scripts/gluon_attention_check.py --config '{"BLOCK_N": 64, "NUM_STAGES": 3}'

Needs an sm_90 GPU and a triton with Gluon's Hopper API (written against triton 3.6). Per shape:
runs kernels/attention/gqa_fwd_gluon.py, compares it with an fp32 reference (scores materialised
per (batch, KV head, row chunk), as evaluators/attention_gqa_fwd/reference.py does), max abs error
against bf16 tolerance 2e-2, plus the task's own check (|o - ref| <= atol + rtol |ref| on >= 99.9%
of elements). Then times it (triton.testing.do_bench median, ms) next to torch SDPA's cuDNN backend
(enable_gqa=True, or K/V repeated to the query heads beforehand when cuDNN refuses it) and the
evolved Triton kernel (kernels/attention/evolved/gqa_fwd_h100/sources/kernel.py), in TFLOP/s
(4*B*Hq*S*S*D, halved when causal). Every row catches its own exceptions and prints one line
(+ the traceback's tail), so a compile error on one config does not hide the others.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GLUON = REPO / "kernels/attention/gqa_fwd_gluon.py"
SEED = REPO / "kernels/attention/evolved/gqa_fwd_h100/sources/kernel.py"

# (B, Hq, Hkv, S, D, causal)
SHAPES = [
    (4, 32, 8, 4096, 128, False),
    (4, 32, 8, 4096, 128, True),
    (16, 32, 4, 1024, 128, False),
    (16, 32, 4, 1024, 128, True),
    (8, 16, 4, 4096, 128, True),
    (2, 8, 2, 1000, 128, False),
    (2, 8, 2, 1000, 128, True),
    (1, 4, 2, 77, 128, True),
    (3, 4, 1, 77, 64, False),
    (2, 16, 16, 2048, 128, True),  # MHA
    (2, 16, 16, 2048, 128, False),
    (2, 8, 4, 1024, 64, True),
    (1, 2, 2, 1, 128, False),
]
QUICK = [SHAPES[i] for i in (0, 1, 5, 6, 7, 9)]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference(q, k, v, causal):
    """The task's own fp32 reference (evaluators/attention_gqa_fwd/reference.py: scores per (batch,
    KV head, row chunk)), on fp32 copies as the harness gives it."""
    ns: dict = {}
    exec((REPO / "evaluators/attention_gqa_fwd/reference.py").read_text(), ns)
    return ns["run"](q.float(), k.float(), v.float(), causal)


def tflops(shape, ms):
    b, hq, _, s, d, causal = shape
    flops = 4.0 * b * hq * s * s * d / (2 if causal else 1)
    return flops / (ms * 1e-3) / 1e12


def err_line(tag, exc):
    tb = traceback.format_exc().strip().splitlines()
    first = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    tail = "\n".join("      " + line for line in tb[-8:])
    return f"  {tag} FAILED: {first[:300]}\n{tail}"


def cudnn_fn(q, k, v, causal):
    """SDPA through cuDNN only: enable_gqa when accepted, else K/V repeated once (outside timing)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    F = torch.nn.functional
    group = q.shape[1] // k.shape[1]

    def native():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=group > 1)
    try:
        native()
        torch.cuda.synchronize()
        return native, "native"
    except Exception:
        kr = k.repeat_interleave(group, dim=1)
        vr = v.repeat_interleave(group, dim=1)

        def repeated():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, kr, vr, is_causal=causal)
        repeated()
        torch.cuda.synchronize()
        return repeated, "repeat-kv"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    ap.add_argument("--config", default=None, help="JSON object merged into the Gluon kernel's CONFIG")
    ap.add_argument("--no-time", action="store_true", help="correctness only")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = ap.parse_args(argv)

    import triton
    from triton.testing import do_bench
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    print(f"device {torch.cuda.get_device_name()} cc {torch.cuda.get_device_capability()} | "
          f"torch {torch.__version__} | triton {triton.__version__}")
    dtype = getattr(torch, args.dtype)
    try:
        gk = load(GLUON, "gqa_fwd_gluon_check")
    except Exception as e:  # import error of the kernel module: nothing else can run
        print(err_line("import gqa_fwd_gluon", e))
        return 1
    if args.config:
        gk.CONFIG.update(json.loads(args.config))
    print(f"gluon CONFIG {gk.CONFIG}")
    try:
        seed = load(SEED, "gqa_fwd_seed_check")
    except Exception as e:
        print(err_line("import seed", e))
        seed = None

    shapes = QUICK if args.quick else SHAPES
    warmup, rep = (10, 50) if args.quick else (25, 100)
    head = (f"{'B':>3} {'Hq':>3} {'Hkv':>3} {'S':>6} {'D':>4} {'causal':>6} | {'maxerr':>8} {'ok':>3} | "
            f"{'gluon':>7} {'cudnn':>7} {'seed':>7} TFLOP/s | {'g/cudnn':>7} {'g/seed':>7}")
    print(head)
    print("-" * len(head))
    n_fail = 0
    rows_out = []
    for shape in shapes:
        b, hq, hkv, s, d, causal = shape
        tag = f"{b:>3} {hq:>3} {hkv:>3} {s:>6} {d:>4} {str(causal):>6}"
        torch.manual_seed(0)
        try:
            q = torch.randn(b, hq, s, d, device="cuda", dtype=dtype)
            k = torch.randn(b, hkv, s, d, device="cuda", dtype=dtype)
            v = torch.randn(b, hkv, s, d, device="cuda", dtype=dtype)
            o = torch.full_like(q, float("nan"))
        except Exception as e:
            print(tag + err_line(" alloc", e))
            n_fail += 1
            continue
        # correctness
        maxerr, ok = float("nan"), False
        try:
            gk.run(q, k, v, causal, o)
            torch.cuda.synchronize()
            ref = reference(q, k, v, causal)
            diff = (o.float() - ref).abs()
            maxerr = diff.max().item()  # nan if any element was not written
            within = diff <= 1e-3 + 2e-2 * ref.abs()
            ok = bool(maxerr <= 2e-2 and within.float().mean().item() >= 0.999)
            if not ok:
                bad = (~within).nonzero()
                rows = bad[:, 2].unique()
                print(f"{tag} | mismatch: maxerr {maxerr:.3g}, {int((~within).sum())} bad elements, "
                      f"bad rows (first 8) {rows[:8].tolist()} of S={s}, nan {int(torch.isnan(o).sum())}")
            del ref, diff, within
        except Exception as e:
            print(tag + err_line(" gluon run", e))
            n_fail += 1
            continue
        if not ok:
            n_fail += 1
        times = {}
        if not args.no_time:
            cands = {"gluon": lambda: gk.run(q, k, v, causal, o)}
            try:
                fn, how = cudnn_fn(q, k, v, causal)
                cands["cudnn"] = fn
            except Exception as e:
                print(tag + err_line(" cudnn", e))
            if seed is not None:
                o2 = torch.empty_like(q)
                cands["seed"] = lambda: seed.run(q, k, v, causal, o2)
            for name, fn in cands.items():
                try:
                    times[name] = do_bench(fn, warmup=warmup, rep=rep)
                except Exception as e:
                    print(tag + err_line(f" time {name}", e))
        tf = {n: tflops(shape, ms) for n, ms in times.items()}

        def col(n):
            return f"{tf[n]:7.1f}" if n in tf else f"{'-':>7}"

        def ratio(a, c):
            return f"{tf[a] / tf[c]:7.2f}" if a in tf and c in tf else f"{'-':>7}"
        line = (f"{tag} | {maxerr:8.2e} {'yes' if ok else 'NO':>3} | {col('gluon')} {col('cudnn')} {col('seed')}         | "
                f"{ratio('gluon', 'cudnn')} {ratio('gluon', 'seed')}")
        print(line, flush=True)
        rows_out.append(line)
        del q, k, v, o
        torch.cuda.empty_cache()
    print(f"{len(shapes) - n_fail}/{len(shapes)} shapes correct" + (f", {n_fail} FAILED" if n_fail else ""))
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
