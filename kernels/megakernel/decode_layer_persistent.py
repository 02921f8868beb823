"""A persistent decode megakernel for megakernel_decode_layer (issue 26): one launch, a fixed grid of
resident programs (CTAs), a task table in global memory and per-task dependency counters.

The host builds the task table (build_tasks: plain numpy, no compilation) from the batch, the layer,
the tile sizes, the attention split policy and the order policy, never from the KV length; run()
builds it once per (device, batch, layer, CONFIG) and keeps it on the device with the counters and
the scratch (a Plan), so a decode step is a dict lookup, a memset and one launch. One row per task:

  [op, a0, a1, a2, a3, 0, wait_counter, wait_count, signal_counter, 0]

  op NORM1   rows [a0, a1) of x      -> xn = RMSNorm(x) * attn_norm_w      (fp32 scratch)
  op QKV     rows [a0, a0+BLOCK_N) of [wq; wk; wv], every sequence -> qkv (fp32 scratch)
  op ATTN    sequence a0, kv head a1, split slot a2 of a3: RoPE(q, k) + online-softmax partial
             (acc, m, l) of the group's q heads over KV rows the kernel cuts from the runtime kv_len
             (attn_bounds); slot 0 also takes the new token and writes k_new / v_new
  op COMBINE sequence a0, kv head a1, a2 splits -> attn (fp32 scratch), the split reduction
  op O       rows [a0, a0+BLOCK_N) of wo:  h = x + attn @ wo^T              (fp32 scratch)
  op NORM2   rows [a0, a1) of h      -> hn = RMSNorm(h) * mlp_norm_w
  op MLP     rows [a0, a0+MLP_BLOCK_N) of w_gate / w_up: act = silu(hn wg^T) * (hn wu^T)
  op DOWN    rows [a0, a0+BLOCK_N) of w_down: out = h + act @ w_down^T      (out's dtype)

Each program takes tasks in table order (QUEUE: the next ticket of an atomic counter; else the
static stride t = pid, pid + nprog, ...), waits until ctrl[wait_counter] >= wait_count (an acquire
atomic read, bounded by spin_limit), runs the op, and adds 1 to ctrl[signal_counter] (release, after
a CTA barrier). The table order must be topological: with QUEUE every task a program waits on was
claimed earlier by a running program, so any grid size makes progress. A wait that runs out of spins
(a wrong order, a count that is never reached) skips its op, counts an error and records the first
such task; the host then raises "task graph deadlock/order violation at task i". The Triton
interpreter runs the programs one after another, so there program 0 runs the whole table (the others
find the queue empty) and a consumer placed before its producer always runs out of spins.

Batch, KV length and the task count are runtime arguments that Triton does not specialise on (the
scratch segments keep a 256-byte alignment), so one compiled kernel serves batch 1-64 and any KV length;
only the tile sizes are constexpr. The counters and the queue are zeroed per launch by the host (one
memset of the cached ctrl tensor).
"""
import math

import numpy as np
import torch
import triton
import triton.language as tl

RMS_EPS = 1e-5

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK_N=16, MLP_BLOCK_N=8, BLOCK_K=256, BLOCK_B=8, DOT_B=64, DOT_K=64, DOT_STAGES=1, PREFETCH_K=512, ATTN_BLOCK_KV=16, NORM_BLOCK=1024, NORM_ROWS=1, ATTN_SPLITS=32, ATTN_SPLIT_MIN=128, ATTN_TASKS_PER_SM=2, ORDER="stage", QUEUE=True, CTAS_PER_SM=2, num_warps=4, num_stages=1)
# Allowed values per knob: the search space the heuristic operator explores. The GEMV tasks are
# latency-bound on bytes in flight (an H100 needs ~30-60 KB per SM in flight to stream HBM): each
# program keeps two weight tiles of BLOCK_N x BLOCK_K (MLP: 2 x MLP_BLOCK_N rows, gate and up) in
# flight, CTAS_PER_SM programs per SM; knowledge_base/memory-bound/megakernel-persistent-bytes-in-flight.md.
TUNABLES = dict(
    BLOCK_N=[16, 8, 32, 64],  # weight rows per task of the q|k|v, O and down projections
    MLP_BLOCK_N=[8, 4, 16, 32],  # rows per task of the gate/up projection (two tiles: gate and up)
    BLOCK_K=[256, 128, 512, 64],  # columns per weight tile; past 32 lanes x 8 = 256 warps split K (row sums via smem)
    BLOCK_B=[8, 1, 2, 4, 16],  # sequences per FMA step: each weight tile is read once for all of them
    DOT_B=[64, 0, 16, 32],  # batch > BLOCK_B: tensor-core (tl.dot) chunks of this many sequences; 0: FMA only
    DOT_K=[64, 32, 128],  # K step of the tl.dot path
    # the tl.dot path's K loop software-pipelined this deep (cp.async into shared memory; 1: not
    # pipelined, the launch's num_stages stays 1 for the rest). sm_90, DOT_STAGES 3: 242 registers,
    # 40 KB shared, no spills: still 2 CTAs per SM. Not yet timed on a GPU.
    DOT_STAGES=[1, 2, 3],
    PREFETCH_K=[512, 0, 256, 1024, 2048],  # first columns of a task's weight rows hinted into L2 before its wait
    ATTN_BLOCK_KV=[16, 8, 32, 64],  # 32: ~243 registers at 4 warps (the [G, KV, D] products)
    NORM_BLOCK=[1024, 256, 512, 2048, 4096],
    NORM_ROWS=[1, 2, 4, 8],  # sequences per RMSNorm task
    ATTN_SPLITS=[32, 4, 8, 16, 64],  # most KV splits per (sequence, kv head)
    ATTN_SPLIT_MIN=[128, 16, 64, 256, 512],  # fewest KV rows per split (in-kernel: clamp(kv_len / this))
    ATTN_TASKS_PER_SM=[2, 1, 4, 8],  # ATTN tasks per SM the split count aims at: splits = cdiv(this x SMs, pairs)
    ORDER=["stage", "interleave", "reverse"],  # the topological order of the task table (see build_tasks)
    QUEUE=[True, False],  # dynamic task queue (atomic ticket) or a static stride over the table
    CTAS_PER_SM=[2, 1, 3, 4],  # QUEUE: programs per SM (grid min(this * SMs, tasks)); static: 1 per SM. 2 x 4 warps x 218 regs fit 64K
    num_warps=[4, 8],  # 8 warps x 2 CTAs/SM caps registers at 128: the default tiles spill there
    num_stages=[1, 2, 3],  # software pipelining of the tl.dot path's loads (the FMA path double-buffers itself)
)

# A call is capturable in a CUDA graph: after the first call at a batch (which builds and copies the
# task table; run() refuses to do that inside a capture) run() only looks up its cached plan and issues
# a memset of the counters and the kernel launch: no host sync, no host->device copy, no allocation.
# A graph bakes an int kv_len into the launch; pass kv_len as a one-element int32 device tensor and
# one graph per batch serves every KV length (the kernel reads it). scripts/bench_memory_bound.py
# reads this flag to time a CUDA-graph row.
CUDA_GRAPH = True

F = 10  # ints per task row
OPS = ("NORM1", "QKV", "ATTN", "COMBINE", "O", "NORM2", "MLP", "DOWN")
NORM1, QKV, ATTN, COMBINE, O, NORM2, MLP, DOWN = range(len(OPS))
# ctrl: the queue ticket, the error count, the first failing task + 1, a counter that stays 0 (the
# first tasks wait on it for 0), one counter per stage, then one per (sequence, kv head) for the splits.
C_QUEUE, C_ERR, C_ERR_TASK, C_ZERO = 0, 1, 2, 3
C_STAGE = 4  # + op index: the tasks of that op done
C_ATTN = C_STAGE + len(OPS)  # + b * kv_heads + kvh: attention splits done
SPIN_LIMIT_GPU = 1 << 22  # spins (atomic reads) before a wait gives up; the interpreter's order is sequential
SPIN_LIMIT_CPU = 16
ALIGN = 64  # scratch segments start at multiples of 64 fp32 (256 bytes): the pointer specialisation never changes


def _knob(name):
    return CONFIG.get(name, TUNABLES[name][0])  # a knob missing from CONFIG takes its first value


@triton.jit
def _rms_rows(src, w_ptr, dst, r0, r1, K, eps, NORM_BLOCK: tl.constexpr):
    """dst[r] = src[r] / rms(src[r]) * w for rows r0..r1-1 (fp32 out)."""
    for r in range(r0, r1):
        sq = tl.zeros([NORM_BLOCK], tl.float32)
        for k0 in range(0, K, NORM_BLOCK):
            offs = k0 + tl.arange(0, NORM_BLOCK)
            v = tl.load(src + r * K + offs, mask=offs < K, other=0.0, cache_modifier=".cg").to(tl.float32)
            sq += v * v
        inv = 1.0 / tl.sqrt(tl.sum(sq, 0) / K + eps)
        for k0 in range(0, K, NORM_BLOCK):
            offs = k0 + tl.arange(0, NORM_BLOCK)
            v = tl.load(src + r * K + offs, mask=offs < K, other=0.0, cache_modifier=".cg").to(tl.float32)
            w = tl.load(w_ptr + offs, mask=offs < K, other=0.0).to(tl.float32)
            tl.store(dst + r * K + offs, v * inv * w, mask=offs < K)


@triton.jit
def _prefetch_l2(ptrs):
    """One L2 prefetch hint per pointer (a 128-byte line each); nothing waits on it (GPU only: the
    host passes PREFETCH_K=0 to the interpreter)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def _prefetch_rows(w_rows, n_ok, K, PREFETCH_K: tl.constexpr):
    """Hint the first PREFETCH_K columns of each weight row (bf16/fp16: 64 a line) into L2: issued
    before a task's wait, so the stage barrier's latency overlaps the first weight bytes."""
    offs = tl.arange(0, PREFETCH_K // 64) * 64
    _prefetch_l2(w_rows[:, None] + tl.where(n_ok[:, None] & (offs < K)[None, :], offs[None, :], 0))


@triton.jit
def _qkv_rows(wq_ptr, wk_ptr, wv_ptr, offs_n, H, QD, KVD):
    """A pointer per row of the stacked [wq; wk; wv] (rows past the end: wv's, masked by the caller)."""
    return tl.where(offs_n < QD, wq_ptr + offs_n * H,
                    tl.where(offs_n < QD + KVD, wk_ptr + (offs_n - QD) * H, wv_ptr + (offs_n - QD - KVD) * H))


@triton.jit
def _gemv_fma(x_ptr, w_rows, u_rows, n_ok, b0, batch, K, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
              BLOCK_K: tl.constexpr, TWO: tl.constexpr):
    """acc[n, b] = sum_k x[b0 + b, k] * w_rows[n][k] on the CUDA cores (fp32 FMA) for sequences
    b0 .. b0 + BLOCK_B - 1 (TWO: also acc2 from u_rows, the MLP's up rows next to its gate rows):
    x fp32 scratch [batch, K] written in this launch (read at L2: .cg), w_rows a pointer per weight
    row. Each weight tile [BLOCK_N, BLOCK_K] is read ONCE for all the chunk's sequences (the batch
    loop is inside the K loop; rows past the batch are skipped at run time), and the next tile is
    loaded before this one is used (a register double buffer: two tiles in flight per program).
    Keep BLOCK_K <= 256 at 8 warps (32 lanes x 8 bf16): a wider tile puts warps along K and every
    row sum goes through shared memory and a CTA barrier."""
    offs_kk = tl.arange(0, BLOCK_K)
    offs_bb = tl.arange(0, BLOCK_B)
    nb = batch - b0
    acc = tl.zeros([BLOCK_N, BLOCK_B], tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_B], tl.float32)
    m0 = n_ok[:, None] & (offs_kk < K)[None, :]
    w_next = tl.load(w_rows[:, None] + offs_kk[None, :], mask=m0, other=0.0)
    u_next = w_next
    if TWO:
        u_next = tl.load(u_rows[:, None] + offs_kk[None, :], mask=m0, other=0.0)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_kk
        k_ok = offs_k < K
        wt = w_next.to(tl.float32)
        ut = u_next.to(tl.float32)
        offs_n = offs_k + BLOCK_K  # the next tile, in flight while this one is reduced
        m1 = n_ok[:, None] & (offs_n < K)[None, :]
        w_next = tl.load(w_rows[:, None] + offs_n[None, :], mask=m1, other=0.0)
        if TWO:
            u_next = tl.load(u_rows[:, None] + offs_n[None, :], mask=m1, other=0.0)
        for bb in tl.static_range(BLOCK_B):
            if bb < nb:
                xb = tl.load(x_ptr + (b0 + bb) * K + offs_k, mask=k_ok, other=0.0, cache_modifier=".cg")
                acc += tl.where(offs_bb[None, :] == bb, tl.sum(wt * xb[None, :], axis=1)[:, None], 0.0)
                if TWO:
                    acc2 += tl.where(offs_bb[None, :] == bb, tl.sum(ut * xb[None, :], axis=1)[:, None], 0.0)
    return acc, acc2


@triton.jit
def _gemv_dot(x_ptr, w_rows, u_rows, n_ok, b0, batch, K, BLOCK_N: tl.constexpr, DOT_B: tl.constexpr,
              DOT_K: tl.constexpr, DOT_STAGES: tl.constexpr, TWO: tl.constexpr):
    """The same product on the tensor cores (tl.dot, x rounded to the weights' dtype) for sequences
    b0 .. b0 + DOT_B - 1: for batches past BLOCK_B, where fp32 FMA stops being memory-bound."""
    offs_b = b0 + tl.arange(0, DOT_B)
    b_ok = offs_b < batch
    acc = tl.zeros([BLOCK_N, DOT_B], tl.float32)
    acc2 = tl.zeros([BLOCK_N, DOT_B], tl.float32)
    for k0 in tl.range(0, K, DOT_K, num_stages=DOT_STAGES):
        offs_k = k0 + tl.arange(0, DOT_K)
        k_ok = offs_k < K
        wmask = n_ok[:, None] & k_ok[None, :]
        wt = tl.load(w_rows[:, None] + offs_k[None, :], mask=wmask, other=0.0)
        xt = tl.load(x_ptr + offs_b[None, :] * K + offs_k[:, None], mask=b_ok[None, :] & k_ok[:, None], other=0.0,
                     cache_modifier=".cg").to(wt.dtype)
        acc = tl.dot(wt, xt, acc)
        if TWO:
            acc2 = tl.dot(tl.load(u_rows[:, None] + offs_k[None, :], mask=wmask, other=0.0), xt, acc2)
    return acc, acc2


@triton.jit
def _gemv(x_ptr, w_rows, u_rows, n_ok, batch, K, out_ptr, out_stride, offs_n, res_ptr,
          ROWS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, DOT_B: tl.constexpr,
          DOT_K: tl.constexpr, DOT_STAGES: tl.constexpr, EPI: tl.constexpr):
    """One GEMV task for every sequence: FMA chunks of BLOCK_B sequences while the batch is at most
    BLOCK_B, tensor-core chunks of DOT_B past that (DOT_B 0, or fewer than 16 rows: FMA throughout).
    ROWS weight rows (w_rows; EPI 3 also u_rows); the epilogue EPI writes out[b, offs_n]."""
    use_dot = False
    if (DOT_B >= 16) and (ROWS >= 16):  # compile time: tl.dot wants 16 rows and 16 columns
        use_dot = batch > BLOCK_B
    if use_dot:
        for b0 in range(0, batch, DOT_B if DOT_B >= 16 else 16):
            acc, acc2 = _gemv_dot(x_ptr, w_rows, u_rows, n_ok, b0, batch, K, ROWS, DOT_B if DOT_B >= 16 else 16,
                                  DOT_K, DOT_STAGES, EPI == 3)
            _gemv_store(acc, acc2, b0, batch, out_ptr, out_stride, offs_n, n_ok, res_ptr,
                        DOT_B if DOT_B >= 16 else 16, EPI)
    else:
        for b0 in range(0, batch, BLOCK_B):
            acc, acc2 = _gemv_fma(x_ptr, w_rows, u_rows, n_ok, b0, batch, K, ROWS, BLOCK_B, BLOCK_K, EPI == 3)
            _gemv_store(acc, acc2, b0, batch, out_ptr, out_stride, offs_n, n_ok, res_ptr, BLOCK_B, EPI)


@triton.jit
def _gemv_store(acc, acc2, b0, batch, out_ptr, out_stride, offs_n, n_ok, res_ptr, BB: tl.constexpr,
                EPI: tl.constexpr):
    """EPI 0: out = acc; 1: out = res + acc (res: the layer input x); 2: the same with res fp32
    scratch written in this launch (.cg); 3: out = silu(acc) * acc2 (gate, up)."""
    offs_b = b0 + tl.arange(0, BB)
    omask = n_ok[:, None] & (offs_b < batch)[None, :]
    optrs = offs_b[None, :] * out_stride + offs_n[:, None]
    if EPI == 3:
        acc = acc / (1.0 + tl.exp(-acc)) * acc2
    elif EPI == 1:
        acc += tl.load(res_ptr + optrs, mask=omask, other=0.0).to(tl.float32)
    elif EPI == 2:
        acc += tl.load(res_ptr + optrs, mask=omask, other=0.0, cache_modifier=".cg")
    tl.store(out_ptr + optrs, acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _attn_split(qkv_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, knew_ptr, vnew_ptr, part_ptr, m_ptr, l_ptr,
                b, kvh, slot, start, end, batch, QD, KVH, D, G, max_kv, scale,
                BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_KV: tl.constexpr):
    """RoPE'd q heads of kv head kvh against cache rows [start, end) (+ the new token in slot 0):
    the unnormalised partial acc with its running max m and sum l, laid out [slot, sequence, q head]."""
    QH = KVH * G
    NQKV = QD + 2 * KVH * D
    cache = (b.to(tl.int64) * KVH + kvh) * max_kv * D
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    half = D // 2
    rot = tl.where(offs_d < half, offs_d + half, offs_d - half)  # rotate-half partner
    sign = tl.where(offs_d < half, -1.0, 1.0)
    cos = tl.load(cos_ptr + offs_d, mask=dmask, other=0.0)
    sin = tl.load(sin_ptr + offs_d, mask=dmask, other=0.0)
    k_row = qkv_ptr + b * NQKV + QD + kvh * D
    v_row = k_row + KVH * D
    k = tl.load(k_row + offs_d, mask=dmask, other=0.0, cache_modifier=".cg")
    k = k * cos + sign * tl.load(k_row + rot, mask=dmask, other=0.0, cache_modifier=".cg") * sin
    v = tl.load(v_row + offs_d, mask=dmask, other=0.0, cache_modifier=".cg")
    offs_g = tl.arange(0, BLOCK_G)
    gmask = offs_g < G
    qmask = gmask[:, None] & dmask[None, :]
    heads = kvh * G + offs_g
    q_rows = qkv_ptr + b * NQKV + heads[:, None] * D
    q = tl.load(q_rows + offs_d[None, :], mask=qmask, other=0.0, cache_modifier=".cg")
    q = q * cos[None, :] + sign[None, :] * tl.load(q_rows + rot[None, :], mask=qmask, other=0.0,
                                                   cache_modifier=".cg") * sin[None, :]
    q = q * scale
    if slot == 0:
        # The new token first: it is always attended to, so the running max starts finite.
        new_row = (b * KVH + kvh) * D
        tl.store(knew_ptr + new_row + offs_d, k.to(knew_ptr.dtype.element_ty), mask=dmask)
        tl.store(vnew_ptr + new_row + offs_d, v.to(vnew_ptr.dtype.element_ty), mask=dmask)
        m_i = tl.sum(q * k[None, :], axis=1)
        l_i = tl.full([BLOCK_G], 1.0, tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32) + v[None, :]
    else:
        m_i = tl.full([BLOCK_G], -float("inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_KV):
        offs_n = n0 + tl.arange(0, BLOCK_KV)
        nmask = offs_n < end
        tmask = nmask[:, None] & dmask[None, :]
        kt = tl.load(kc_ptr + cache + offs_n[:, None] * D + offs_d[None, :], mask=tmask, other=0.0)
        s = tl.sum(q[:, None, :] * kt.to(tl.float32)[None, :, :], axis=2)
        s = tl.where(nmask[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        vt = tl.load(vc_ptr + cache + offs_n[:, None] * D + offs_d[None, :], mask=tmask, other=0.0)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * vt.to(tl.float32)[None, :, :], axis=1)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    rows = (slot * batch + b) * QH + heads
    tl.store(part_ptr + rows[:, None] * D + offs_d[None, :], acc, mask=qmask)
    tl.store(m_ptr + rows, m_i, mask=gmask)
    tl.store(l_ptr + rows, l_i, mask=gmask)


@triton.jit
def _attn_combine(part_ptr, m_ptr, l_ptr, attn_ptr, b, kvh, n_splits, batch, KVH, D, G,
                  BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    """The split reduction: rescale the n_splits partials of (b, kvh) to their common max (slot 0 holds
    the new token, so it is finite) and normalise into attn [batch, QH * D]."""
    QH = KVH * G
    offs_d = tl.arange(0, BLOCK_D)
    offs_g = tl.arange(0, BLOCK_G)
    gmask = offs_g < G
    qmask = gmask[:, None] & (offs_d < D)[None, :]
    heads = kvh * G + offs_g
    m_max = tl.full([BLOCK_G], -float("inf"), tl.float32)
    for s in range(0, n_splits):
        m_max = tl.maximum(m_max, tl.load(m_ptr + (s * batch + b) * QH + heads, mask=gmask, other=0.0,
                                          cache_modifier=".cg"))
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    l_sum = tl.zeros([BLOCK_G], tl.float32)
    for s in range(0, n_splits):
        rows = (s * batch + b) * QH + heads
        w = tl.exp(tl.load(m_ptr + rows, mask=gmask, other=0.0, cache_modifier=".cg") - m_max)
        l_sum += w * tl.load(l_ptr + rows, mask=gmask, other=0.0, cache_modifier=".cg")
        acc += w[:, None] * tl.load(part_ptr + rows[:, None] * D + offs_d[None, :], mask=qmask, other=0.0,
                                    cache_modifier=".cg")
    o = acc / tl.where(gmask, l_sum, 1.0)[:, None]
    tl.store(attn_ptr + (b * QH + heads)[:, None] * D + offs_d[None, :], o, mask=qmask)


@triton.jit
def _split_geometry(L, n_splits, split_min, BLOCK_KV: tl.constexpr):
    """The KV split of a (sequence, kv head) at run time: n_eff = clamp(L // split_min, 1, n_splits) splits
    of split_len rows (a multiple of BLOCK_KV), of which the first n_used start before L (slot 0 always:
    it holds the new token). attn_bounds is the host's copy."""
    n_eff = tl.maximum(tl.minimum(n_splits, L // split_min), 1)
    split_len = (((L + n_eff - 1) // n_eff + BLOCK_KV - 1) // BLOCK_KV) * BLOCK_KV
    n_used = tl.maximum((L + split_len - 1) // tl.maximum(split_len, 1), 1)
    return split_len, n_used


@triton.jit(do_not_specialize=["n_tasks", "spin_limit", "batch", "max_kv", "kv_len", "split_min", "kvlen_ptr"])
def _persistent_kernel(tasks_ptr, ctrl_ptr, kvlen_ptr, n_tasks, spin_limit,
                       x_ptr, anw_ptr, wq_ptr, wk_ptr, wv_ptr, wo_ptr, mnw_ptr, wg_ptr, wu_ptr, wd_ptr,
                       kc_ptr, vc_ptr, cos_ptr, sin_ptr, out_ptr, knew_ptr, vnew_ptr,
                       xn_ptr, qkv_ptr, part_ptr, m_ptr, l_ptr, attn_ptr, h_ptr, hn_ptr, act_ptr,
                       batch, H, QD, KVH, D, G, MLPD, max_kv, kv_len, split_min, scale, eps,
                       F: tl.constexpr, BLOCK_N: tl.constexpr, MLP_BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_KV: tl.constexpr, NORM_BLOCK: tl.constexpr, QUEUE: tl.constexpr, DOT_B: tl.constexpr,
                       DOT_K: tl.constexpr, DOT_STAGES: tl.constexpr, PREFETCH_K: tl.constexpr):
    KVD = KVH * D
    NQKV = QD + 2 * KVD
    # The KV length: a runtime scalar, or (kv_len < 0) read from device memory, so an engine can
    # replay one CUDA graph per batch while its step counter advances the length in place.
    L = kv_len
    if kv_len < 0:
        L = tl.load(kvlen_ptr)
    if QUEUE:
        t = tl.atomic_add(ctrl_ptr + 0, 1)  # C_QUEUE
    else:
        t = tl.program_id(0)
    while t < n_tasks:
        row = tasks_ptr + t * F
        op = tl.load(row)
        a0 = tl.load(row + 1)
        a1 = tl.load(row + 2)
        a2 = tl.load(row + 3)
        a3 = tl.load(row + 4)
        wait_ptr = ctrl_ptr + tl.load(row + 6)
        need = tl.load(row + 7)
        signal = tl.load(row + 8)
        # ---- the task's first weight columns (they do not depend on its producers): hinted into L2
        # before the wait, so a stage barrier's latency overlaps the next stage's first bytes ----
        if PREFETCH_K > 0:
            if op == 1:
                offs_n = a0 + tl.arange(0, BLOCK_N)
                _prefetch_rows(_qkv_rows(wq_ptr, wk_ptr, wv_ptr, offs_n, H, QD, KVD), offs_n < NQKV, H, PREFETCH_K)
            elif op == 4:
                offs_n = a0 + tl.arange(0, BLOCK_N)
                _prefetch_rows(wo_ptr + offs_n * QD, offs_n < H, QD, PREFETCH_K)
            elif op == 6:
                offs_m = a0 + tl.arange(0, MLP_BLOCK_N)
                _prefetch_rows(wg_ptr + offs_m * H, offs_m < MLPD, H, PREFETCH_K)
                _prefetch_rows(wu_ptr + offs_m * H, offs_m < MLPD, H, PREFETCH_K)
            elif op == 7:
                offs_n = a0 + tl.arange(0, BLOCK_N)
                _prefetch_rows(wd_ptr + offs_n * MLPD, offs_n < H, MLPD, PREFETCH_K)
        # ---- wait: acquire reads of the producer counter, bounded ----
        seen = tl.atomic_add(wait_ptr, 0, sem="acquire")
        spins = 0
        while (seen < need) & (spins < spin_limit):
            spins += 1
            seen = tl.atomic_add(wait_ptr, 0, sem="acquire")
        if seen < need:
            tl.atomic_add(ctrl_ptr + 1, 1)  # C_ERR
            tl.atomic_cas(ctrl_ptr + 2, 0, t + 1)  # C_ERR_TASK: the first one
        else:
            if op == 0:  # NORM1
                _rms_rows(x_ptr, anw_ptr, xn_ptr, a0, a1, H, eps, NORM_BLOCK)
            elif op == 1:  # QKV: rows [a0, a0 + BLOCK_N) of [wq; wk; wv]
                offs_n = a0 + tl.arange(0, BLOCK_N)
                n_ok = offs_n < NQKV
                w_rows = _qkv_rows(wq_ptr, wk_ptr, wv_ptr, offs_n, H, QD, KVD)
                _gemv(xn_ptr, w_rows, w_rows, n_ok, batch, H, qkv_ptr, NQKV, offs_n, x_ptr,
                      BLOCK_N, BLOCK_B, BLOCK_K, DOT_B, DOT_K, DOT_STAGES, 0)
            elif op == 2:  # ATTN: split a2 of a3 over [0, L), bounds from the runtime length (attn_bounds)
                split_len, n_used = _split_geometry(L, a3, split_min, BLOCK_KV)
                if a2 < n_used:  # a split past the end does nothing (its COMBINE reads n_used slots)
                    start = a2 * split_len
                    _attn_split(qkv_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, knew_ptr, vnew_ptr, part_ptr, m_ptr,
                                l_ptr, a0, a1, a2, start, tl.minimum(start + split_len, L), batch, QD, KVH, D, G,
                                max_kv, scale, BLOCK_G, BLOCK_D, BLOCK_KV)
            elif op == 3:  # COMBINE: the a2 splits signalled, the first n_used of them hold rows (or the new token)
                split_len, n_used = _split_geometry(L, a2, split_min, BLOCK_KV)
                _attn_combine(part_ptr, m_ptr, l_ptr, attn_ptr, a0, a1, n_used, batch, KVH, D, G, BLOCK_G, BLOCK_D)
            elif op == 4:  # O: h = x + attn @ wo^T
                offs_n = a0 + tl.arange(0, BLOCK_N)
                n_ok = offs_n < H
                _gemv(attn_ptr, wo_ptr + offs_n * QD, wo_ptr, n_ok, batch, QD, h_ptr, H, offs_n, x_ptr,
                      BLOCK_N, BLOCK_B, BLOCK_K, DOT_B, DOT_K, DOT_STAGES, 1)
            elif op == 5:  # NORM2
                _rms_rows(h_ptr, mnw_ptr, hn_ptr, a0, a1, H, eps, NORM_BLOCK)
            elif op == 6:  # MLP: act = silu(hn wg^T) * (hn wu^T), gate and up rows in one tile
                if (MLP_BLOCK_N < 16) and (DOT_B >= 16) and (batch > BLOCK_B):
                    # Past BLOCK_B an MLP tile narrower than tl.dot's 16 rows would take FMA chunks,
                    # each re-reading the tile (the MLP is 2/3 of the layer's bytes: 8 reads at B64).
                    # Instead one padded 16-row dot per DOT_B sequences; the padding rows are masked
                    # (never loaded), their MMA work is free in a memory-bound GEMV.
                    rows16 = a0 + tl.arange(0, 16)  # (names of their own: Triton types a name once per if)
                    ok16 = (rows16 < a0 + MLP_BLOCK_N) & (rows16 < MLPD)
                    for b16 in range(0, batch, DOT_B):
                        g16, u16 = _gemv_dot(hn_ptr, wg_ptr + rows16 * H, wu_ptr + rows16 * H, ok16, b16, batch, H,
                                             16, DOT_B, DOT_K, DOT_STAGES, True)
                        _gemv_store(g16, u16, b16, batch, act_ptr, MLPD, rows16, ok16, x_ptr, DOT_B, 3)
                else:
                    offs_m = a0 + tl.arange(0, MLP_BLOCK_N)
                    _gemv(hn_ptr, wg_ptr + offs_m * H, wu_ptr + offs_m * H, offs_m < MLPD, batch, H, act_ptr, MLPD,
                          offs_m, x_ptr, MLP_BLOCK_N, BLOCK_B, BLOCK_K, DOT_B, DOT_K, DOT_STAGES, 3)
            elif op == 7:  # DOWN: out = h + act @ w_down^T
                offs_n = a0 + tl.arange(0, BLOCK_N)
                n_ok = offs_n < H
                _gemv(act_ptr, wd_ptr + offs_n * MLPD, wd_ptr, n_ok, batch, MLPD, out_ptr, H, offs_n, h_ptr,
                      BLOCK_N, BLOCK_B, BLOCK_K, DOT_B, DOT_K, DOT_STAGES, 2)
            # ---- signal: every thread's stores issued, then one release add ----
            tl.debug_barrier()
            tl.atomic_add(ctrl_ptr + signal, 1, sem="release")
        if QUEUE:
            t = tl.atomic_add(ctrl_ptr + 0, 1)
        else:
            t += tl.num_programs(0)


# ---------------------------------------------------------------- host: the task table

H100_SMS = 132  # the SM count a table is built for when no GPU says otherwise (build_tasks' default)


def attn_split_count(batch, kv_heads, cfg=None, n_sms=H100_SMS):
    """KV splits per (sequence, kv head): a function of the batch only (not of the KV length), so the
    table is built once per batch. Enough ATTN tasks for ATTN_TASKS_PER_SM per SM, at most ATTN_SPLITS a
    pair: B1 (8 pairs) 32 splits, B16 3, B64 (512 pairs) 1 on an H100."""
    cfg = cfg or {}
    k = lambda n: cfg.get(n, _knob(n))
    pairs = max(batch * kv_heads, 1)
    return max(1, min(k("ATTN_SPLITS"), triton.cdiv(k("ATTN_TASKS_PER_SM") * n_sms, pairs)))


def attn_bounds(kv_len, n_splits, cfg=None):
    """[(start, end)] of the n_splits splits at this KV length, as the kernel computes them on the device
    (_split_geometry; a host mirror for tests): n_eff = clamp(kv_len // ATTN_SPLIT_MIN, 1, n_splits) splits
    of a multiple of ATTN_BLOCK_KV rows, the ones past the end empty (their tasks only signal)."""
    cfg = cfg or {}
    k = lambda n: cfg.get(n, _knob(n))
    block_kv, split_min = k("ATTN_BLOCK_KV"), max(k("ATTN_SPLIT_MIN"), 1)
    n_eff = max(min(n_splits, kv_len // split_min), 1)
    split_len = triton.cdiv(triton.cdiv(kv_len, n_eff), block_kv) * block_kv
    out = []
    for s in range(n_splits):
        start = min(s * split_len, kv_len)
        out.append((start, min(start + split_len, kv_len)))
    return out


def _rows(op, n, a=(), wait=(C_ZERO, 0), signal=C_STAGE):
    """n task rows of op: columns a (each length n) into a0.., the wait (counter, count) and the signal."""
    t = np.zeros((n, F), np.int32)
    t[:, 0] = op
    for i, col in enumerate(a):
        t[:, 1 + i] = col
    t[:, 6], t[:, 7], t[:, 8] = wait[0], wait[1], signal
    return t


def build_tasks(batch, hidden, q_dim, kv_heads, head_dim, mlp, cfg=None, n_sms=H100_SMS):
    """The task table [T, F] int32 (numpy) for one layer step at this batch, the number of ctrl counters
    and the KV split count. The KV length is not an input: an ATTN row holds its split slot and the
    split count, and the kernel cuts [0, kv_len) at run time (attn_bounds), so run() builds a table
    once per (device, batch, layer, CONFIG) and keeps it on the device. ORDER picks one of the
    topological orders:
      stage       every op's tasks before the next op's (NORM1, QKV, ATTN, COMBINE, O, NORM2, MLP, DOWN)
      interleave  each (sequence, kv head)'s COMBINE right after its own splits
      reverse     stage order with the tiles of every op in reverse
    The counters a task waits on and the counts it needs are part of the table, so a search over
    orders (or a finer dependency graph) edits data, not the kernel."""
    cfg = cfg or {}
    k = lambda n: cfg.get(n, _knob(n))
    bn, mbn, nrows = k("BLOCK_N"), k("MLP_BLOCK_N"), k("NORM_ROWS")
    kv_dim = kv_heads * head_dim
    n_splits = attn_split_count(batch, kv_heads, cfg, n_sms)
    stage = lambda op: C_STAGE + op

    def norm(op, wait):
        r0 = np.arange(0, batch, nrows)
        return _rows(op, len(r0), (r0, np.minimum(r0 + nrows, batch)), wait, stage(op))

    def tiles(op, n, block, wait):
        return _rows(op, triton.cdiv(n, block), (np.arange(0, n, block),), wait, stage(op))

    t_norm1 = norm(NORM1, (C_ZERO, 0))
    t_qkv = tiles(QKV, q_dim + 2 * kv_dim, bn, (stage(NORM1), len(t_norm1)))
    pairs = np.arange(batch * kv_heads)
    b, h = np.repeat(pairs // kv_heads, n_splits), np.repeat(pairs % kv_heads, n_splits)
    s = np.tile(np.arange(n_splits), batch * kv_heads)
    t_attn = _rows(ATTN, len(s), (b, h, s, np.full(len(s), n_splits)), (stage(QKV), len(t_qkv)),
                   C_ATTN + b * kv_heads + h)
    t_comb = _rows(COMBINE, len(pairs), (pairs // kv_heads, pairs % kv_heads, np.full(len(pairs), n_splits)),
                   signal=stage(COMBINE))
    t_comb[:, 6], t_comb[:, 7] = C_ATTN + pairs, n_splits
    t_o = tiles(O, hidden, bn, (stage(COMBINE), len(t_comb)))
    t_norm2 = norm(NORM2, (stage(O), len(t_o)))
    t_mlp = tiles(MLP, mlp, mbn, (stage(NORM2), len(t_norm2)))
    t_down = tiles(DOWN, hidden, bn, (stage(MLP), len(t_mlp)))
    order = k("ORDER")
    if order == "interleave":
        # [pair 0's splits, pair 0's combine, pair 1's ...]: a combine can run while other pairs split.
        per = np.concatenate([t_attn.reshape(len(pairs), n_splits, F), t_comb[:, None]], axis=1)
        attn_part = per.reshape(-1, F)
        stages = [t_norm1, t_qkv, attn_part, t_o, t_norm2, t_mlp, t_down]
    elif order == "reverse":
        stages = [t[::-1] for t in (t_norm1, t_qkv, t_attn, t_comb, t_o, t_norm2, t_mlp, t_down)]
    elif order == "stage":
        stages = [t_norm1, t_qkv, t_attn, t_comb, t_o, t_norm2, t_mlp, t_down]
    else:
        raise ValueError(f"unknown ORDER {order!r}")
    return np.ascontiguousarray(np.concatenate(stages)), C_ATTN + batch * kv_heads, n_splits


def check_topological(table):
    """The first task index whose wait cannot be met by the tasks before it (None: a valid order)."""
    done = {}
    for i, (op, *_, wait, need, signal, _pad) in enumerate(table.tolist()):
        if done.get(wait, 0) < need:
            return i
        done[signal] = done.get(signal, 0) + 1
    return None


def _num_sms(device):
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _segments(device, **sizes):
    """One fp32 scratch allocation cut into segments that each start on an ALIGN boundary."""
    total = sum(triton.cdiv(max(n, 1), ALIGN) * ALIGN for n in sizes.values())
    mem = torch.empty(total, device=device, dtype=torch.float32)
    out, at = {}, 0
    for name, n in sizes.items():
        out[name] = mem[at:at + n]
        at += triton.cdiv(max(n, 1), ALIGN) * ALIGN
    return out


class Plan:
    """Everything of a launch that depends on the device, the batch, the layer and CONFIG but not on the
    call's tensors or KV length: the task table on the device, the ctrl counters, the fp32 scratch, the
    grid and the kernel's scalar and constexpr arguments."""
    __slots__ = ("table", "tasks", "ctrl", "n_tasks", "grid", "scratch", "dims", "split_min", "consts")

    def __init__(self, dev, table, n_ctrl, n_splits, batch, hidden, q_dim, kv_heads, head_dim, mlp, cfg=None):
        if dev.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("decode_layer_persistent: a new (device, batch, layer, CONFIG) inside CUDA graph "
                               "capture (its task table would be copied from pageable host memory): call run() "
                               "once at this batch before capturing it")
        cfg = cfg or {}
        k = lambda n: cfg.get(n, _knob(n))
        q_heads = q_dim // head_dim
        group = q_heads // kv_heads
        self.table = table
        self.tasks = torch.from_numpy(np.ascontiguousarray(table)).to(dev)  # once per plan, not per call
        self.ctrl = torch.zeros(n_ctrl, device=dev, dtype=torch.int32)
        buf = _segments(dev, xn=batch * hidden, qkv=batch * (q_dim + 2 * kv_heads * head_dim),
                        part=n_splits * batch * q_dim, m=n_splits * batch * q_heads, l=n_splits * batch * q_heads,
                        attn=batch * q_dim, h=batch * hidden, hn=batch * hidden, act=batch * mlp)
        self.scratch = tuple(buf[n] for n in ("xn", "qkv", "part", "m", "l", "attn", "h", "hn", "act"))
        self.n_tasks = table.shape[0]
        queue = bool(k("QUEUE"))
        # The static stride needs every program resident at once (a program waits on tasks of the others):
        # on the GPU one per SM always fits, more might not (registers); the interpreter runs programs one
        # after another, so there it runs on one program. The queue makes progress at any grid size.
        if queue:
            ctas = k("CTAS_PER_SM") * _num_sms(dev)
        else:
            ctas = _num_sms(dev) if dev.type == "cuda" else 1
        self.grid = (max(1, min(ctas, self.n_tasks)),)
        self.dims = (batch, hidden, q_dim, kv_heads, head_dim, group, mlp)
        self.split_min = max(int(k("ATTN_SPLIT_MIN")), 1)
        self.consts = dict(
            F=F, BLOCK_N=k("BLOCK_N"), MLP_BLOCK_N=k("MLP_BLOCK_N"), BLOCK_K=k("BLOCK_K"), BLOCK_B=k("BLOCK_B"),
            BLOCK_G=triton.next_power_of_2(group), BLOCK_D=triton.next_power_of_2(head_dim),
            BLOCK_KV=k("ATTN_BLOCK_KV"), NORM_BLOCK=k("NORM_BLOCK"), QUEUE=queue, DOT_B=k("DOT_B"), DOT_K=k("DOT_K"), DOT_STAGES=k("DOT_STAGES"),
            PREFETCH_K=k("PREFETCH_K") if dev.type == "cuda" else 0,  # an L2 hint (inline PTX): not in the interpreter
            num_warps=k("num_warps"), num_stages=k("num_stages"))


# (device, batch, hidden, q_dim, kv_heads, head_dim, mlp, CONFIG items) -> Plan. Never evicted: a CUDA graph
# captured over run() holds the addresses of a plan's table, counters and scratch (a few MB per batch).
# One plan serves one stream at a time (its counters and scratch are shared by the calls of its key).
_PLANS = {}


def get_plan(dev, batch, hidden, q_dim, kv_heads, head_dim, mlp):
    key = (dev, batch, hidden, q_dim, kv_heads, head_dim, mlp, tuple(CONFIG.items()))
    p = _PLANS.get(key)
    if p is None:
        table, n_ctrl, n_splits = build_tasks(batch, hidden, q_dim, kv_heads, head_dim, mlp, n_sms=_num_sms(dev))
        p = _PLANS[key] = Plan(dev, table, n_ctrl, n_splits, batch, hidden, q_dim, kv_heads, head_dim, mlp)
    return p


def _launch(p, x, attn_norm_w, wq, wk, wv, wo, mlp_norm_w, w_gate, w_up, w_down, k_cache, v_cache, rope_cos,
            rope_sin, kv_len, out, k_new, v_new, spin_limit=None):
    """One launch of plan p: zero its counters (one memset) and run the kernel. kv_len: an int, or an int32
    tensor of one element on the device (read by the kernel: nothing about the length is baked into the
    launch). No host sync, no host->device copy."""
    p.ctrl.zero_()
    if isinstance(kv_len, torch.Tensor):
        kv_ptr, kv = kv_len, -1
    else:
        kv_ptr, kv = p.ctrl, int(kv_len)
    if spin_limit is None:
        spin_limit = SPIN_LIMIT_GPU if x.is_cuda else SPIN_LIMIT_CPU
    batch, hidden, q_dim, kv_heads, head_dim, group, mlp = p.dims
    _persistent_kernel[p.grid](
        p.tasks, p.ctrl, kv_ptr, p.n_tasks, spin_limit,
        x, attn_norm_w, wq, wk, wv, wo, mlp_norm_w, w_gate, w_up, w_down, k_cache, v_cache, rope_cos, rope_sin,
        out, k_new, v_new, *p.scratch,
        batch, hidden, q_dim, kv_heads, head_dim, group, mlp, k_cache.shape[2], kv, p.split_min,
        1.0 / math.sqrt(head_dim), RMS_EPS, **p.consts)


def launch(table, n_ctrl, n_splits, x, attn_norm_w, wq, wk, wv, wo, mlp_norm_w, w_gate, w_up, w_down, k_cache,
           v_cache, rope_cos, rope_sin, kv_len, out, k_new, v_new, cfg=None, check=None, spin_limit=None):
    """Run one given task table (numpy [T, F] int32: a test's reordered or broken table) through the
    persistent kernel, with a plan of its own (nothing cached); returns ctrl (the counters after the
    launch). check (default: on CPU) raises on a deadlocked or unfinished table."""
    batch, hidden = x.shape
    _, kv_heads, _, head_dim = k_cache.shape
    p = Plan(x.device, table, n_ctrl, n_splits, batch, hidden, wq.shape[0], kv_heads, head_dim, w_gate.shape[0], cfg)
    _launch(p, x, attn_norm_w, wq, wk, wv, wo, mlp_norm_w, w_gate, w_up, w_down, k_cache, v_cache, rope_cos, rope_sin,
            kv_len, out, k_new, v_new, spin_limit)
    if check if check is not None else not x.is_cuda:
        _check(p.ctrl, table)
    return p.ctrl


def _check(ctrl, table):
    c = ctrl.tolist()
    if c[C_ERR]:
        i = c[C_ERR_TASK] - 1
        op, wait, need = OPS[table[i, 0]], int(table[i, 6]), int(table[i, 7])
        raise RuntimeError(f"task graph deadlock/order violation at task {i} ({op}: waits for counter {wait} "
                           f"to reach {need}, it was {c[wait]} when the wait gave up; {c[C_ERR]} task(s) skipped)")
    done = c[C_STAGE + DOWN]
    want = int((table[:, 0] == DOWN).sum())
    if done != want:
        raise RuntimeError(f"task graph unfinished: {done} of {want} DOWN tasks signalled")


def run(x, attn_norm_w, wq, wk, wv, wo, mlp_norm_w, w_gate, w_up, w_down, k_cache, v_cache,
        rope_cos, rope_sin, kv_len, out, k_new, v_new):
    """One decode step: the cached plan of this (device, batch, layer, CONFIG) (built on the first call
    only), a memset of its counters and one launch. On the GPU nothing waits for the device; on the
    CPU (interpreter) the counters are checked after the launch."""
    p = get_plan(x.device, x.shape[0], x.shape[1], wq.shape[0], k_cache.shape[1], k_cache.shape[3], w_gate.shape[0])
    _launch(p, x, attn_norm_w, wq, wk, wv, wo, mlp_norm_w, w_gate, w_up, w_down, k_cache, v_cache, rope_cos, rope_sin,
            kv_len, out, k_new, v_new)
    if not x.is_cuda:
        _check(p.ctrl, p.table)
