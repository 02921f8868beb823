"""sm_90 compile of a workspace variant of gqa_fwd_gluon_ws.py (CPU): regs, spills, smem, wgmma pipelining."""
import importlib.util, sys, torch
sys.path.insert(0, "/work/main/tests"); sys.path.insert(0, "/work/main")
import test_gluon_compile as T
path = sys.argv[1]
spec = importlib.util.spec_from_file_location("ws_variant", path); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
extra = dict(sched="*i32") if "sched" in m._gqa_fwd_ws_kernel.arg_names else {}
for causal in (False, True):
    consts, maxnreg = m._launch_params(128, 2); consts["CAUSAL"] = causal
    k = T._compile(m, m._gqa_fwd_ws_kernel, consts["BLOCK_M"], consts["BLOCK_N"], 128, torch.bfloat16, consts,
                   dict(seq="i32", heads="i32", group="i32", n_m="i32", n_tiles="i32", qk_scale="fp32", head_group="i32", **extra),
                   num_warps=4, maxnreg=maxnreg)
    sass = T._sass(k) or ""
    import re
    has_exit = bool(re.search(r"\bexit;", k.asm["ptx"]))
    pipelined = bool(re.search(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x1", sass))
    print(f"causal={causal}: smem {k.metadata.shared} warps {k.metadata.num_warps} HGMMA {sass.count('HGMMA')} pipelined {pipelined} exit {has_exit} LDL/STL {sass.count('LDL')}/{sass.count('STL')}")
