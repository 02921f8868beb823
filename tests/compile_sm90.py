"""Compile the Triton kernels for sm_90 without a GPU (frontend + ptxas), to catch what the interpreter accepts but the compiler refuses."""
import importlib.util, sys, itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
target = GPUTarget("cuda", 90, 32)

def load(path):
    spec = importlib.util.spec_from_file_location("m_" + path.replace("/", "_").replace(".", "_"), path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m

def comp(fn, sig, consts, warps=4, stages=1):
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    k = triton.compile(src, target=target, options=dict(num_warps=warps, num_stages=stages))
    return k.metadata.shared, k.n_regs if hasattr(k, "n_regs") else None

jobs = []
m = load("kernels/grammar/bitmask_seed.py")
for P, SK, RMW, BW in itertools.product([False, True], [False, True], [False, True], [False, True]):
    jobs.append(("bitmask P%d S%d R%d B%d" % (P, SK, RMW, BW), m._bitmask_kernel,
                 {"logits_ptr": "*fp32", "bitmask_ptr": "*i32", "indices_ptr": "*i32", "vocab": "i32", "logits_stride": "i32",
                  "bitmask_stride": "i32", "n_blocks": "i32", "n_tiles": "i32", "BLOCK_SIZE": "constexpr", "RMW": "constexpr",
                  "PERSISTENT": "constexpr", "SKIP_ONES": "constexpr", "BROADCAST_WORDS": "constexpr"},
                 {"BLOCK_SIZE": 1024, "RMW": RMW, "PERSISTENT": P, "SKIP_ONES": SK, "BROADCAST_WORDS": BW}))
t = load("kernels/layout/transpose2d_seed.py")
for TR in (True, False):
    jobs.append(("transpose TRANS=%s" % TR, t._batched_transpose_kernel,
                 {"x_ptr": "*bf16", "y_ptr": "*bf16", "R": "i32", "C": "i32", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr", "GROUP": "constexpr", "TRANS": "constexpr"},
                 {"BLOCK_R": 64, "BLOCK_C": 64, "GROUP": 8, "TRANS": TR}))
b = load("kernels/layout/bshd_to_bhsd_seed.py")
for HF in (True, False):
    jobs.append(("bhsd H_FAST=%s" % HF, b._bshd_to_bhsd_kernel,
                 {"x_ptr": "*bf16", "y_ptr": "*bf16", "S": "i32", "H": "i32", "D": "i32", "BLOCK_S": "constexpr", "BLOCK_D": "constexpr", "H_FAST": "constexpr"},
                 {"BLOCK_S": 16, "BLOCK_D": 128, "H_FAST": HF}))
kv = load("kernels/layout/kv_paged_seed.py")
for KT in (True, False):
    jobs.append(("kv_paged KV_TOGETHER=%s" % KT, kv._kv_paged_kernel,
                 {"k_ptr": "*bf16", "v_ptr": "*bf16", "table_ptr": "*i32", "kc_ptr": "*bf16", "vc_ptr": "*bf16", "seq": "i32", "block_size": "i32",
                  "blocks_per_seq": "i32", "row_elems": "i32", "BLOCK": "constexpr", "KV_TOGETHER": "constexpr"}, {"BLOCK": 1024, "KV_TOGETHER": KT}))
mk = load("kernels/megakernel/decode_layer_seed.py")
jobs.append(("mk rmsnorm", mk._rmsnorm_kernel, {"x_ptr": "*bf16", "w_ptr": "*bf16", "out_ptr": "*fp32", "N": "i32", "eps": "fp32", "BLOCK": "constexpr"}, {"BLOCK": 1024}))
for MODE, NORM, DOT in itertools.product((0, 1, 2), (False, True), (False, True)):
    jobs.append(("mk gemv MODE=%d NORM=%d DOT=%d" % (MODE, NORM, DOT), mk._gemv_kernel,
                 {"x_ptr": "*fp32", "nw_ptr": "*bf16", "wa_ptr": "*bf16", "wb_ptr": "*bf16", "wc_ptr": "*bf16", "res_ptr": "*bf16",
                  "out_ptr": "*bf16", "B": "i32", "N": "i32", "NA": "i32", "NB": "i32", "K": "i32", "out_stride": "i32", "eps": "fp32",
                  "BLOCK_B": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "MODE": "constexpr", "NORM": "constexpr",
                  "DOT": "constexpr"},
                 {"BLOCK_B": 16 if DOT else 8, "BLOCK_N": 32, "BLOCK_K": 128, "MODE": MODE, "NORM": NORM, "DOT": DOT}))
for SPLITS, DOT in itertools.product((1, 8), (False, True)):
    jobs.append(("mk rope_attn SPLITS=%d DOT=%d" % (SPLITS, DOT), mk._rope_attn_kernel,
                 {"qkv_ptr": "*fp32", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "kc_ptr": "*bf16", "vc_ptr": "*bf16", "k_new_ptr": "*bf16",
                  "v_new_ptr": "*bf16", "o_ptr": "*fp32", "m_ptr": "*fp32", "l_ptr": "*fp32", "kv_len": "i32", "split_len": "i32",
                  "max_kv": "i32", "KVH": "i32", "D": "i32", "GROUP": "i32", "scale": "fp32", "QKV_STRIDE": "i32", "Q_DIM": "i32",
                  "BLOCK_G": "constexpr", "BLOCK_D": "constexpr", "BLOCK_KV": "constexpr", "SPLITS": "constexpr", "DOT": "constexpr"},
                 {"BLOCK_G": 16 if DOT else 4, "BLOCK_D": 128, "BLOCK_KV": 32, "SPLITS": SPLITS, "DOT": DOT}))
jobs.append(("mk attn_combine", mk._attn_combine_kernel,
             {"part_ptr": "*fp32", "m_ptr": "*fp32", "l_ptr": "*fp32", "o_ptr": "*fp32", "ROWS": "i32", "D": "i32",
              "SPLITS": "constexpr", "BLOCK_D": "constexpr"}, {"SPLITS": 8, "BLOCK_D": 128}))
bad = 0
for name, fn, sig, consts in jobs:
    try:
        print("OK  ", name, comp(fn, sig, consts))
    except Exception as e:
        bad += 1
        print("FAIL", name, type(e).__name__, str(e).splitlines()[-1][:300] if str(e) else "")
sys.exit(1 if bad else 0)
