"""Compile the Triton kernels for sm_90 without a GPU (frontend + ptxas), to catch what the interpreter accepts but the compiler refuses."""
import importlib.util, sys, itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
target = GPUTarget("cuda", 90, 32)

def load(path):
    spec = importlib.util.spec_from_file_location("m_" + path.replace("/", "_").replace(".", "_"), path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m

def comp(fn, sig, consts, warps=4, stages=1, attrs=None, ptx=()):
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=target, options=dict(num_warps=warps, num_stages=stages))
    missing = [p for p in ptx if p not in k.asm["ptx"]]  # instructions the point must emit (cache hints)
    assert not missing, "PTX lacks %s" % missing
    return k.metadata.shared, regs(k)

def regs(k):
    """Registers per thread, read from the cubin with the cuobjdump Triton ships (n_regs needs a GPU)."""
    import os, re, subprocess, tempfile
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"]); f.flush()
        m = re.search(r"REG:(\d+)", subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout)
    return int(m.group(1)) if m else None

jobs = []
m = load("kernels/grammar/bitmask_seed.py")
for P, SK, RMW, BW, WT in itertools.product([False, True], [False, True], [False, True], [False, True], [False, True]):
    if WT and BW:
        continue  # WORD_TILE ignores BROADCAST_WORDS
    jobs.append(("bitmask P%d S%d R%d B%d W%d" % (P, SK, RMW, BW, WT), m._bitmask_kernel,
                 {"logits_ptr": "*fp32", "bitmask_ptr": "*i32", "indices_ptr": "*i32", "vocab": "i32", "logits_stride": "i32",
                  "bitmask_stride": "i32", "n_blocks": "i32", "n_tiles": "i32", "BLOCK_SIZE": "constexpr", "RMW": "constexpr",
                  "PERSISTENT": "constexpr", "SKIP_ONES": "constexpr", "BROADCAST_WORDS": "constexpr", "WORD_TILE": "constexpr"},
                 {"BLOCK_SIZE": 1024, "RMW": RMW, "PERSISTENT": P, "SKIP_ONES": SK, "BROADCAST_WORDS": BW, "WORD_TILE": WT}))
# The layout seeds, each branch with STREAM off and on (on: evict_first loads and .cs stores in the PTX).
n_before_layout = len(jobs)
STREAM_PTX = dict(ptx=("ld.global.L1::evict_first", "st.global.cs"))
for path, tag in (("kernels/layout/transpose2d_seed.py", "transpose"), ("kernels/layout/bshd_to_bhds_seed.py", "bhds")):
    t = load(path)
    for TR, ST in itertools.product((True, False), (False, True)):
        jobs.append(("%s TRANS=%s%s" % (tag, TR, " STREAM=True" * ST), t._batched_transpose_kernel,
                     {"x_ptr": "*bf16", "y_ptr": "*bf16", "R": "i32", "C": "i32", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr", "GROUP": "constexpr", "TRANS": "constexpr",
                      "STREAM": "constexpr"}, {"BLOCK_R": 64, "BLOCK_C": 64, "GROUP": 8, "TRANS": TR, "STREAM": ST}, STREAM_PTX if ST else {}))
    # TMA: the tile in and out through host descriptors (bulk tensor copies in the PTX)
    desc_in, desc_out = "tensordesc<bf16[1, 64, 128]>", "tensordesc<bf16[1, 128, 64]>"
    jobs.append(("%s transpose TMA" % tag, t._transpose_tma_kernel,
                 {"x_desc": desc_in, "y_desc": desc_out, "R": "i32", "C": "i32", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr",
                  "GROUP": "constexpr"}, {"BLOCK_R": 64, "BLOCK_C": 128, "GROUP": 8},
                 dict(ptx=("cp.async.bulk.tensor.3d.shared::", "cp.async.bulk.tensor.3d.global.shared::cta"))))  # load: ::cta (3.9) or ::cluster (3.6)
b = load("kernels/layout/bshd_to_bhsd_seed.py")
for HF, ST in itertools.product((True, False), (False, True)):
    jobs.append(("bhsd H_FAST=%s%s" % (HF, " STREAM=True" * ST), b._bshd_to_bhsd_kernel,
                 {"x_ptr": "*bf16", "y_ptr": "*bf16", "S": "i32", "H": "i32", "D": "i32", "BLOCK_S": "constexpr", "BLOCK_D": "constexpr", "H_FAST": "constexpr",
                  "STREAM": "constexpr"}, {"BLOCK_S": 16, "BLOCK_D": 128, "H_FAST": HF, "STREAM": ST}, STREAM_PTX if ST else {}))
for bs in (16, 128):  # TMA: boxes through host descriptors, the bulk tensor copies in the PTX
    desc = "tensordesc<bf16[1, %d, 128]>" % bs
    jobs.append(("bhsd TMA BLOCK_S=%d" % bs, b._bshd_to_bhsd_tma_kernel,
                 {"x_desc": desc, "y_desc": desc, "S": "i32", "H": "i32", "D": "i32", "BLOCK_S": "constexpr",
                  "BLOCK_D": "constexpr", "H_FAST": "constexpr"}, {"BLOCK_S": bs, "BLOCK_D": 128, "H_FAST": True},
                 dict(ptx=("cp.async.bulk.tensor.3d.shared::", "cp.async.bulk.tensor.3d.global.shared::cta"))))  # load: ::cta (3.9) or ::cluster (3.6)
kv = load("kernels/layout/kv_paged_seed.py")
for KT, ST in itertools.product((True, False), (False, True)):
    jobs.append(("kv_paged KV_TOGETHER=%s%s" % (KT, " STREAM=True" * ST), kv._kv_paged_kernel,
                 {"k_ptr": "*bf16", "v_ptr": "*bf16", "table_ptr": "*i32", "kc_ptr": "*bf16", "vc_ptr": "*bf16", "seq": "i32", "block_size": "i32",
                  "blocks_per_seq": "i32", "row_elems": "i32", "BLOCK": "constexpr", "KV_TOGETHER": "constexpr", "STREAM": "constexpr"},
                 {"BLOCK": 1024, "KV_TOGETHER": KT, "STREAM": ST}, STREAM_PTX if ST else {}))
jobs.append(("kv_paged FLAT", kv._kv_paged_flat_kernel,
             {"k_ptr": "*fp32", "v_ptr": "*fp32", "table_ptr": "*i32", "kc_ptr": "*fp32", "vc_ptr": "*fp32", "seq": "i32", "block_size": "i32",
              "blocks_per_seq": "i32", "row_elems": "i32", "BLOCK": "constexpr", "STREAM": "constexpr"}, {"BLOCK": 1024, "STREAM": False}))
layout_jobs = jobs[n_before_layout:]
mk = load("kernels/megakernel/decode_layer_seed.py")
jobs.append(("mk rmsnorm ACT_NARROW", mk._rmsnorm_kernel, {"x_ptr": "*bf16", "w_ptr": "*bf16", "out_ptr": "*bf16", "N": "i32", "eps": "fp32", "BLOCK": "constexpr", "PDL": "constexpr"}, {"BLOCK": 1024, "PDL": True}))
jobs.append(("mk rmsnorm", mk._rmsnorm_kernel, {"x_ptr": "*bf16", "w_ptr": "*bf16", "out_ptr": "*fp32", "N": "i32", "eps": "fp32", "BLOCK": "constexpr", "PDL": "constexpr"}, {"BLOCK": 1024, "PDL": True}))
for MODE, NORM, DOT, SPLIT in itertools.product((0, 1, 2, 3), (False, True), (False, True), (False, True)):
    if SPLIT and MODE >= 2:  # MODE 3: MODE 2 + the fused down projection (FUSE_MLP)
        continue
    jobs.append(("mk gemv MODE=%d NORM=%d DOT=%d SPLIT=%d" % (MODE, NORM, DOT, SPLIT), mk._gemv_kernel,
                 {"x_ptr": "*bf16" if DOT else "*fp32", "nw_ptr": "*bf16", "wa_ptr": "*bf16", "wb_ptr": "*bf16", "wc_ptr": "*bf16", "res_ptr": "*bf16",
                  "out_ptr": "*bf16", "acc_ptr": "*fp32", "cnt_ptr": "*i32", "B": "i32", "N": "i32", "NA": "i32", "NB": "i32",
                  "K": "i32", "K_SPLIT": "i32", "out_stride": "i32", "eps": "fp32", "pf_programs": "i32",
                  "BLOCK_B": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "MODE": "constexpr", "NORM": "constexpr",
                  "DOT": "constexpr", "SPLIT": "constexpr", "CAST": "constexpr", "NORM_BLOCK": "constexpr", "PDL": "constexpr", "PF_LINES": "constexpr", "TMA": "constexpr",
                  "DOWN_BLOCK_J": "constexpr", "ADD_SEM": "constexpr"},
                 {"BLOCK_B": 16 if DOT else 8, "BLOCK_N": 32, "BLOCK_K": 128, "MODE": MODE, "NORM": NORM, "DOT": DOT,
                  "SPLIT": SPLIT, "CAST": SPLIT and MODE == 1, "NORM_BLOCK": 4096, "PDL": DOT, "PF_LINES": 4 if DOT else 0, "TMA": DOT and not NORM,
                  "DOWN_BLOCK_J": 128, "ADD_SEM": "relaxed" if DOT else "acq_rel"},
                 dict(ptx=("griddepcontrol.wait", "griddepcontrol.launch_dependents", "prefetch.global.L2")
                      + (("cp.async.bulk.tensor",) if not NORM else ()) if DOT else ())))
# PREFETCH_O 8: the O GEMV hints its whole K split (32 lines per row) before the PDL wait
name, fn, sig, consts, extra = next(j for j in jobs if j[0] == "mk gemv MODE=1 NORM=0 DOT=1 SPLIT=1")
jobs.append(("mk gemv MODE=1 PF_LINES=32", fn, sig, dict(consts, PF_LINES=32), extra))
for SPLITS, DOT in itertools.product((1, 8), (False, True)):
    jobs.append(("mk rope_attn SPLITS=%d DOT=%d" % (SPLITS, DOT), mk._rope_attn_kernel,
                 {"qkv_ptr": "*fp32", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "kc_ptr": "*bf16", "vc_ptr": "*bf16", "k_new_ptr": "*bf16",
                  "v_new_ptr": "*bf16", "o_ptr": "*bf16" if SPLITS == 1 else "*fp32", "m_ptr": "*fp32", "l_ptr": "*fp32",
                  "attn_ptr": "*bf16", "cnt_ptr": "*i32", "wo_ptr": "*bf16", "wo_n": "i32", "wo_per": "i32", "kv_len": "i32", "split_len": "i32",
                  "max_kv": "i32", "KVH": "i32", "D": "i32", "GROUP": "i32", "scale": "fp32", "QKV_STRIDE": "i32", "Q_DIM": "i32",
                  "BLOCK_G": "constexpr", "BLOCK_D": "constexpr", "BLOCK_KV": "constexpr", "SPLITS": "constexpr", "DOT": "constexpr", "PDL": "constexpr", "LAST_COMBINES": "constexpr",
                  "PREFETCH": "constexpr", "KV_LINE": "constexpr", "WO_LINE": "constexpr"},
                 {"BLOCK_G": 16 if DOT else 4, "BLOCK_D": 128, "BLOCK_KV": 32, "SPLITS": SPLITS, "DOT": DOT, "PDL": DOT,
                  "LAST_COMBINES": SPLITS > 1, "PREFETCH": 2 if DOT else 0, "KV_LINE": 64, "WO_LINE": 64},
                 dict(ptx=("griddepcontrol.wait", "prefetch.global.L2") if DOT else ())))
jobs.append(("mk attn_combine", mk._attn_combine_kernel,
             {"part_ptr": "*fp32", "m_ptr": "*fp32", "l_ptr": "*fp32", "o_ptr": "*fp32", "ROWS": "i32", "D": "i32",
              "SPLITS": "constexpr", "BLOCK_D": "constexpr", "PDL": "constexpr"}, {"SPLITS": 8, "BLOCK_D": 128, "PDL": True}))

# The attention prefill seeds (compute-bound) on request: `compile_sm90.py attention` compiles only
# them, `compile_sm90.py all` everything (`layout`: only the layout seeds, tests/test_task_layout.py);
# a plain run stays the memory-bound set above, whose OK
# count tests/test_task_megakernel.py checks. Each point twice, pointer loads (TMA=False) and
# device-side TMA descriptors (TMA=True), bf16 as on the GPU, with the divisibility-by-16 hints
# the JIT gives pointers, strides, seq and heads of those shapes. Printed: (shared bytes, registers).
want = set(sys.argv[1:]) or {"memory-bound"}
if not want & {"memory-bound", "all"}:
    jobs = layout_jobs if "layout" in want else []
if want & {"attention", "all"}:
    ATTN_POINTS = [  # (label, CAUSAL, DIM, knobs): the seed's point, the H100 lineage's point causal and not, the rest on
        ("seed", False, 128, dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)),
        ("lineage causal", True, 128, dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, EXP2=True, CAUSAL_SKIP=True)),
        ("lineage peel", False, 128, dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, EXP2=True, PEEL_TAIL=True)),
        ("lineage causal fma", True, 128, dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, EXP2=True, CAUSAL_SKIP=True,
                                               FMA_SCALE=True)),
        ("ws+reverse d64", True, 64, dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, EXP2=True, CAUSAL_SKIP=True,
                                          WARP_SPEC=True, REVERSE_M=True)),
    ]
    for path, kname, extra in (("kernels/attention/mha_fwd_seed.py", "_mha_fwd_kernel", []),
                               ("kernels/attention/gqa_fwd_seed.py", "_gqa_fwd_kernel", ["group"])):
        fn = getattr(load(path), kname)
        ints = ["seq", "heads", *extra] + [f"s{t}_{a}" for t in "qkvo" for a in "bhs"]
        sig = {**{n: "*bf16" for n in ("q_ptr", "k_ptr", "v_ptr", "o_ptr")}, **{n: "i32" for n in ints}, "qk_scale": "fp32"}
        flags = ("CAUSAL_SKIP", "EXP2", "PEEL_TAIL", "WARP_SPEC", "REVERSE_M", "TMA", "FMA_SCALE")
        sig.update({n: "constexpr" for n in ("DIM", "BLOCK_M", "BLOCK_N", "CAUSAL") + flags})
        hinted = [n for n in sig if n.endswith("_ptr") or n in ints and n != "group"]
        attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in hinted}
        for (label, causal, dim, knobs), tma in itertools.product(ATTN_POINTS, (False, True)):
            consts = {"DIM": dim, "CAUSAL": causal, **{f: False for f in flags}, **knobs, "TMA": tma}
            warps, stages = consts.pop("num_warps"), consts.pop("num_stages")
            jobs.append(("%s %s TMA=%d" % (kname.strip("_").split("_")[0], label, tma), fn, sig, consts,
                         dict(warps=warps, stages=stages, attrs=attrs)))
bad = 0
for name, fn, sig, consts, *opts in jobs:
    try:
        print("OK  ", name, comp(fn, sig, consts, **(opts[0] if opts else {})))
    except Exception as e:
        bad += 1
        print("FAIL", name, type(e).__name__, str(e).splitlines()[-1][:300] if str(e) else "")
sys.exit(1 if bad else 0)
