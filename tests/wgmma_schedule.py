"""Where the tensor cores wait in an attention prefill kernel: its sm_90 PTX as a schedule, on a CPU.

    python tests/wgmma_schedule.py kernels/attention/mha_fwd_seed.py '{"CAUSAL": true}'

Compiles the seed's (or an evolved copy's) `_mha_fwd_kernel` / `_gqa_fwd_kernel` for sm_90 at
its CONFIG merged with the JSON object (knobs, plus CAUSAL and DIM), then prints the PTX's order
of `wgmma.mma_async` (MMA), `wgmma.commit_group` (C), `wgmma.wait_group N` (WAITN), `ex2` (E),
barriers (B) and block labels (|L), runs folded as xN. Each loop iteration reads:

  MMAx8 C WAIT0 B Ex34 MMAx4 C     (Q·K^T issued and waited for at once, softmax, P·V issued)

The tensor cores run only while MMAs are in flight, so the softmax overlaps an MMA only if no
WAIT0 stands between an MMA and the E run. This tells whether an edit (manual pipelining, warp
specialisation, async dots) can overlap softmax with MMA before any GPU time is spent on it.
TRITON_INTERPRET must be unset (the script compiles; it runs nothing). It lives beside the tests
(tests/test_task_attention.py exercises it), like tests/compile_sm90.py; what it showed is in
knowledge_base/attention/softmax-mma-overlap.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

TOKENS = [(re.compile(r"wgmma\.mma_async"), "MMA"), (re.compile(r"wgmma\.commit_group"), "C"),
          (re.compile(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)"), "WAIT"), (re.compile(r"ex2\.approx"), "E"),
          (re.compile(r"(bar\.sync|barrier\.sync)"), "B"), (re.compile(r"\$L__BB\d+_\d+:"), "|L")]


def schedule(ptx: str) -> str:
    """The PTX's MMA / commit / wait / ex2 / barrier / label order, runs folded as xN."""
    seq: list[str] = []
    for line in ptx.splitlines():
        line = line.strip()
        for pat, tok in TOKENS:
            m = pat.match(line)
            if m:
                seq.append(tok + m.group(1) if tok == "WAIT" else tok)
                break
    runs: list[list] = []
    for tok in seq:
        if runs and runs[-1][0] == tok:
            runs[-1][1] += 1
        else:
            runs.append([tok, 1])
    return " ".join(f"{t}x{n}" if n > 1 else t for t, n in runs)


def compile_prefill(path: Path, overrides: dict) -> str:
    """sm_90 PTX of the file's prefill kernel at CONFIG + overrides (bf16, the JIT's /16 hints)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    spec = importlib.util.spec_from_file_location("wgmma_schedule_kernel", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fn = getattr(mod, "_mha_fwd_kernel", None) or getattr(mod, "_gqa_fwd_kernel", None)
    if fn is None:
        raise SystemExit(f"error: {path} has no _mha_fwd_kernel or _gqa_fwd_kernel")
    cfg = {k: v[0] for k, v in mod.TUNABLES.items()}
    cfg.update(mod.CONFIG)
    cfg.update({"DIM": 128, "CAUSAL": False})
    cfg.update(overrides)
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    names = fn.arg_names
    consts = {n: cfg[n] for n in names if n in cfg}
    sig = {}
    for n in names:
        if n in consts:
            sig[n] = "constexpr"
        elif n.endswith("_ptr"):
            sig[n] = "*bf16"
        else:
            sig[n] = "fp32" if n == "qk_scale" else "i32"
    hinted = [n for n in names if sig[n] == "*bf16" or sig[n] == "i32" and n != "group"]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in hinted}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    return k.asm["ptx"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernel", type=Path)
    ap.add_argument("overrides", nargs="?", default="{}", help="JSON object merged into CONFIG (knobs, CAUSAL, DIM)")
    a = ap.parse_args(argv)
    try:
        overrides = json.loads(a.overrides)
    except json.JSONDecodeError as e:
        print(f"error: overrides {a.overrides!r} are not JSON: {e.msg}", file=sys.stderr)
        return 2
    if not a.kernel.is_file():
        print(f"error: no such kernel file {a.kernel}", file=sys.stderr)
        return 2
    print(schedule(compile_prefill(a.kernel, overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
