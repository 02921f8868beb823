"""Seed x0 for megakernel_decode_layer: one Llama decoder layer at decode as a sequence of Triton
kernels (the evolution's job is to fuse them and to fill the GPU at batch 1):

  1. RMSNorm(x)                                  -> xn   (fp32 scratch)
  2. GEMV xn @ [wq; wk; wv]^T                    -> qkv  (fp32 scratch, one row of q|k|v per sequence)
  3. RoPE(q, k) + GQA decode attention over the cache + the new token (online softmax), writes
     k_new / v_new                                -> attn (fp32 scratch)
  4. GEMV attn @ wo^T + x                         -> h
  5. RMSNorm(h)                                   -> hn
  6. dual GEMV silu(hn @ w_gate^T) * (hn @ w_up^T) -> act; GEMV act @ w_down^T + h -> out

Activations stay fp32 between kernels (they are tiny next to the weights); every GEMV keeps the
whole batch in one program so each weight tile is read once. The knobs past the seed's point open
the fused design space: GEMV_DOT (tensor-core tiles: the batch padded to 16 rows, so the weight
loads feed tl.dot and Triton software-pipelines them num_stages deep), FUSE_NORM (each GEMV program
computes its rows' RMS itself: no norm launches), FUSE_QKV (one launch over q|k|v rows instead of
three), ATTN_SPLITS (split-KV: more programs than batch * kv_heads, plus a combine pass), ATTN_DOT (the
group's scores and P @ V on tensor cores), SPLIT_K / SPLIT_K_QO (K-split GEMVs with fp32 atomics), PDL
(programmatic dependent launch, with PREFETCH: weight tiles hinted into L2 before the grid waits),
ACT_NARROW (16-bit GEMV inputs), GEMV_TMA (weight tiles through TMA descriptors), ATTN_LAST_COMBINES (the
last KV split combines, no combine launch), PREFETCH_O (the O GEMV's own L2 hint depth), ATTN_PREFETCH (PDL: the attention hints its KV rows into L2
before it waits on the QKV GEMV, and then wo, whose GEMV comes next, while its slower splits run),
FUSE_MLP with DOWN_BLOCK_J (at small batch each gate/up program multiplies its act tile by its columns of
w_down and adds the partial outputs atomically: no act round trip, no down launch and no wave tail).
"""
import math

import torch
import triton
import triton.language as tl

RMS_EPS = 1e-5

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(GEMV_BLOCK_N=16, GEMV_BLOCK_K=64, GEMV_WARPS=4, ATTN_BLOCK_KV=16, ATTN_WARPS=4, NORM_BLOCK=1024, num_stages=1, GEMV_DOT=False, FUSE_NORM=False, FUSE_QKV=False, ATTN_SPLITS=1, ATTN_DOT=False, SPLIT_K=1, MLP_BLOCK_N=0, PDL=False, PREFETCH=0, SPLIT_K_QO=0, ACT_NARROW=False, FUSE_NORM_UPTO=0, GEMV_TMA=False, ATTN_LAST_COMBINES=False, ATTN_PREFETCH=0, FUSE_MLP=0, DOWN_BLOCK_J=64, RELAXED_ADDS=False, PREFETCH_O=0)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    GEMV_BLOCK_N=[4, 8, 16, 32, 64],  # weight rows per program (GEMV_DOT uses at least 16)
    GEMV_BLOCK_K=[32, 64, 128, 256, 512],
    GEMV_WARPS=[1, 2, 4, 8],
    ATTN_BLOCK_KV=[8, 16, 32, 64],
    ATTN_WARPS=[1, 2, 4, 8],
    NORM_BLOCK=[256, 512, 1024, 2048, 4096],  # RMSNorm chunk (the norm kernel, or FUSE_NORM's per-program pre-pass)
    num_stages=[1, 2, 3, 4],
    GEMV_DOT=[False, True],  # tensor-core GEMV tiles (pipelined weight loads) instead of FMA reductions
    FUSE_NORM=[False, True],  # RMSNorm inside the GEMV that consumes it
    FUSE_QKV=[False, True],  # q, k and v projections in one launch (when GEMV_BLOCK_N divides q_dim and kv_dim)
    ATTN_SPLITS=[1, 2, 4, 8, 16, 32],  # KV splits per (sequence, kv head); > 1 adds a combine launch
    ATTN_DOT=[False, True],  # attention scores and P @ V on tensor cores (group padded to 16 rows, >= 16 keys per step)
    SPLIT_K=[1, 2, 4, 8],  # K splits of the q|k|v, O and down projections (fp32 atomics): more programs at batch 1
    MLP_BLOCK_N=[0, 8, 16, 32, 64],  # rows per program of the gate/up GEMV (0: GEMV_BLOCK_N), for its own wave count
    PDL=[False, True],  # programmatic dependent launch (sm90+): each launch starts while the previous drains (GPU only)
    PREFETCH=[0, 1, 2, 4, 8],  # with PDL: weight tiles per row the first wave's GEMV programs hint into L2 before the wait
    SPLIT_K_QO=[0, 1, 2, 4, 8],  # K splits of the q|k|v and O projections alone (0: SPLIT_K): K is 3.5x shorter than down's
    ACT_NARROW=[False, True],  # GEMV inputs (normed x, attention out, SwiGLU act) in the model dtype, not fp32: half the pipelined x tile
    FUSE_NORM_UPTO=[0, 1, 2, 4],  # FUSE_NORM at batch <= this even when off: a norm launch costs more than B rows' RMS per program
    GEMV_TMA=[False, True],  # weight tiles through Hopper TMA descriptors (no per-thread addresses; rows and K past the end load 0)
    ATTN_LAST_COMBINES=[False, True],  # ATTN_SPLITS > 1: the last split of each (sequence, kv head) combines, no combine launch
    ATTN_PREFETCH=[0, 1, 2],  # with PDL: attention hints its KV rows into L2 before the wait (1), + a share of wo (2)
    FUSE_MLP=[0, 1, 2, 4, 8],  # down projection inside the gate/up GEMV at batch <= this: atomics grow with mlp/rows * hidden * B
    DOWN_BLOCK_J=[64, 128, 256],  # FUSE_MLP: hidden rows of w_down per step of the fused down product
    PREFETCH_O=[0, 2, 4, 8, 16],  # with PDL: the O GEMV's own PREFETCH depth (0: PREFETCH); its predecessor,
    # attention, is latency-bound, so the hints do not compete for DRAM (H100 grid megakernel-prefetch-o: within 1%, no gain)
    RELAXED_ADDS=[False, True],  # split-K partial sums as relaxed REDs, not acq_rel atomics (each a MEMBAR.GPU + L1 invalidate)
)


def _knob(name):
    return CONFIG.get(name, TUNABLES[name][0])  # a knob missing from CONFIG takes its first value


def _pdl(t):
    return bool(_knob("PDL")) and t.is_cuda  # the interpreter has no grid dependency control


def _tma_ok(*ws):
    """TMA's rules for a [rows, K] weight: contiguous, 16-byte aligned start and row stride."""
    return all(w.is_contiguous() and w.storage_offset() * w.element_size() % 16 == 0
               and w.shape[1] * w.element_size() % 16 == 0 for w in ws)


def _tma_scratch(device):
    """Device-side descriptors live in global scratch that Triton asks this allocator for."""
    return lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=device)


_SMS = {}  # device -> first-wave program count


def _first_wave(t):
    """Programs resident at launch (2 per SM at the GEMV's tiles): only they can prefetch while waiting."""
    if t.device not in _SMS:
        _SMS[t.device] = 2 * torch.cuda.get_device_properties(t.device).multi_processor_count
    return _SMS[t.device]


@triton.jit
def _pdl_enter(PDL: tl.constexpr):
    """Under PDL a grid may be resident before its predecessor finishes: wait for it (its writes
    become visible) before touching any activation, then let the next grid launch; its programs
    wait the same way, so the chain stays ordered while launch latency overlaps the tail."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _prefetch_l2(ptrs):
    """One L2 prefetch hint per pointer (a 128-byte line each); nothing waits on it."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def _prefetch_span(ptr, n, PER_LINE: tl.constexpr):
    """Hint n contiguous elements at ptr into L2, one prefetch per PER_LINE elements (a 128-byte line),
    256 lines per step."""
    for i0 in range(0, n, 256 * PER_LINE):
        offs = i0 + tl.arange(0, 256) * PER_LINE
        _prefetch_l2(ptr + tl.where(offs < n, offs, 0))


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, out_ptr, N, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
    _pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    sq = tl.zeros([BLOCK], tl.float32)
    for n0 in range(0, N, BLOCK):
        offs = n0 + tl.arange(0, BLOCK)
        v = tl.load(x_ptr + row * N + offs, mask=offs < N, other=0.0).to(tl.float32)
        sq += v * v
    inv = 1.0 / tl.sqrt(tl.sum(sq, 0) / N + eps)
    for n0 in range(0, N, BLOCK):
        offs = n0 + tl.arange(0, BLOCK)
        v = tl.load(x_ptr + row * N + offs, mask=offs < N, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=offs < N, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * N + offs, v * inv * w, mask=offs < N)


@triton.jit
def _gemv_kernel(x_ptr, nw_ptr, wa_ptr, wb_ptr, wc_ptr, res_ptr, out_ptr, acc_ptr, cnt_ptr, B, N, NA, NB, K,
                 K_SPLIT, out_stride, eps, pf_programs,
                 BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MODE: tl.constexpr,
                 NORM: tl.constexpr, DOT: tl.constexpr, SPLIT: tl.constexpr, CAST: tl.constexpr,
                 NORM_BLOCK: tl.constexpr, PDL: tl.constexpr, PF_LINES: tl.constexpr, TMA: tl.constexpr,
                 DOWN_BLOCK_J: tl.constexpr, ADD_SEM: tl.constexpr):
    """out[b, n] = sum_k x'[b, k] w[n, k] for N output rows, x' = RMSNorm(x) * nw when NORM.
    MODE 0: rows [0, NA) of w are wa's, [NA, NA+NB) wb's, the rest wc's (a program's rows lie in one
    of them: the host checks BLOCK_N divides NA and NB); MODE 1 adds res[b, n]; MODE 2 is
    silu(x' wa^T) * (x' wb^T). The accumulator is [BLOCK_N, BLOCK_B] so DOT can put the weight tile
    in tl.dot's first operand. SPLIT (grid axis 1 over K in K_SPLIT chunks, MODE 0/1): each program
    atomically adds its partial sums into the zeroed fp32 acc[b, n] (split 0 adds the residual);
    with CAST the program that finishes a row block last (counter cnt[pid]) writes acc to out in
    out's dtype. PF_LINES > 0 (PDL only): the first pf_programs programs (those resident while the
    predecessor drains) hint their first PF_LINES 128-byte lines of each weight row into L2 before
    the grid-dependency wait; later programs would only add instructions in front of their loads.
    TMA: the weight tiles come through tensor descriptors of each weight's own [rows, K] (made before
    the wait: they depend on nothing the predecessor writes).
    MODE 3 is MODE 2 with the down projection fused (FUSE_MLP): out is [B, NB] and wc is w_down
    ([NB, N]); each program multiplies its act tile by w_down's columns n0..n0+BLOCK_N, DOWN_BLOCK_J rows
    at a time, and atomically adds the products into the zeroed fp32 acc[b, j] (row stride NB; program 0
    adds res); the program that arrives last (counter cnt[0]) writes acc to out in out's dtype."""
    pid_n = tl.program_id(0)
    n0 = pid_n * BLOCK_N
    w_ptr = wa_ptr
    row0 = n0
    seg_rows = N  # rows of the weight this program reads (its q, k or v segment in MODE 0)
    if MODE == 0:
        seg_rows = NA
        if n0 >= NA + NB:
            w_ptr = wc_ptr
            row0 = n0 - NA - NB
            seg_rows = N - NA - NB
        elif n0 >= NA:
            w_ptr = wb_ptr
            row0 = n0 - NA
            seg_rows = NB
    offs_n = tl.arange(0, BLOCK_N)
    rows = (row0 + offs_n).to(tl.int64)
    n_ok = n0 + offs_n < N
    if PF_LINES > 0 and pid_n + tl.program_id(1) * tl.num_programs(0) < pf_programs:
        offs_pf = tl.program_id(1) * K_SPLIT + tl.arange(0, PF_LINES) * 64  # 64 16-bit weights per line
        k_end = tl.minimum(tl.program_id(1) * K_SPLIT + K_SPLIT, K)  # this program's K range only
        pf = tl.where(n_ok, rows, row0)[:, None] * K + tl.where(offs_pf < k_end, offs_pf, 0)[None, :]
        _prefetch_l2(w_ptr + pf)
        if MODE >= 2:
            _prefetch_l2(wb_ptr + pf)
    if TMA:
        w_desc = tl.make_tensor_descriptor(w_ptr, [seg_rows, K], [K, 1], [BLOCK_N, BLOCK_K])
        if MODE >= 2:
            w2_desc = tl.make_tensor_descriptor(wb_ptr, [N, K], [K, 1], [BLOCK_N, BLOCK_K])
    _pdl_enter(PDL)
    offs_b = tl.arange(0, BLOCK_B)
    b_ok = offs_b < B
    inv = tl.full([BLOCK_B], 1.0, tl.float32)
    if NORM:
        # Each program's own RMS over the real rows in NORM_BLOCK chunks (one chunk for a Llama
        # row at 4096): a few long loads instead of K / BLOCK_K dependent ones before the weights.
        sq = tl.zeros([BLOCK_B], tl.float32)
        for b in range(0, B):
            part = tl.zeros([NORM_BLOCK], tl.float32)
            for k0 in range(0, K, NORM_BLOCK):
                offs_k = k0 + tl.arange(0, NORM_BLOCK)
                xv = tl.load(x_ptr + b * K + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
                part += xv * xv
            sq = tl.where(offs_b == b, tl.sum(part, axis=0), sq)
        inv = 1.0 / tl.sqrt(sq / K + eps)
    acc = tl.zeros([BLOCK_N, BLOCK_B], tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_B], tl.float32)
    k_lo = tl.program_id(1) * K_SPLIT
    for k0 in range(k_lo, tl.minimum(k_lo + K_SPLIT, K), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        xt = tl.load(x_ptr + offs_b[:, None] * K + offs_k[None, :], mask=b_ok[:, None] & k_ok[None, :],
                     other=0.0).to(tl.float32)
        if NORM:
            xt = xt * inv[:, None] * tl.load(nw_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        wmask = n_ok[:, None] & k_ok[None, :]
        if TMA:
            wt = w_desc.load([row0, k0])
        else:
            wt = tl.load(w_ptr + rows[:, None] * K + offs_k[None, :], mask=wmask, other=0.0)
        if DOT:
            xd = tl.trans(xt.to(wt.dtype))
            acc += tl.dot(wt, xd)
        else:
            acc += tl.sum(wt.to(tl.float32)[:, None, :] * xt[None, :, :], axis=2)
        if MODE >= 2:
            if TMA:
                wt2 = w2_desc.load([row0, k0])
            else:
                wt2 = tl.load(wb_ptr + rows[:, None] * K + offs_k[None, :], mask=wmask, other=0.0)
            if DOT:
                acc2 += tl.dot(wt2, xd)
            else:
                acc2 += tl.sum(wt2.to(tl.float32)[:, None, :] * xt[None, :, :], axis=2)
    omask = n_ok[:, None] & b_ok[None, :]
    optrs = offs_b[None, :] * out_stride + (n0 + offs_n)[:, None]
    if MODE == 1:
        if tl.program_id(1) == 0:
            acc += tl.load(res_ptr + optrs, mask=omask, other=0.0).to(tl.float32)
    if MODE >= 2:
        acc = acc / (1.0 + tl.exp(-acc)) * acc2  # rows past N are 0: their weights loaded as 0
    if MODE == 3:
        # w_down[j, n0:n0+BLOCK_N] are BLOCK_N contiguous elements of each hidden row j: the tile
        # [DOWN_BLOCK_J, BLOCK_N] @ act tile [BLOCK_N, BLOCK_B] is this program's share of out rows j.
        if DOT:
            a = acc.to(wc_ptr.dtype.element_ty)
        for j0 in range(0, NB, DOWN_BLOCK_J):
            offs_j = j0 + tl.arange(0, DOWN_BLOCK_J)
            j_ok = offs_j < NB
            wd = tl.load(wc_ptr + offs_j[:, None].to(tl.int64) * N + (n0 + offs_n)[None, :],
                         mask=j_ok[:, None] & n_ok[None, :], other=0.0)
            if DOT:
                d = tl.dot(wd, a)
            else:
                d = tl.sum(wd.to(tl.float32)[:, :, None] * acc[None, :, :], axis=1)
            jmask = j_ok[:, None] & b_ok[None, :]
            jptrs = offs_b[None, :] * NB + offs_j[:, None]
            if pid_n == 0:
                d += tl.load(res_ptr + jptrs, mask=jmask, other=0.0).to(tl.float32)
            # relaxed: an acq_rel atomic (the default) costs a MEMBAR.GPU and an L1 invalidate each, and
            # there are hidden * B / threads of them per program; the barrier below and the counter's
            # acq_rel atomic (cumulative release) order them before the count, as for split-K.
            tl.atomic_add(acc_ptr + jptrs, d, mask=jmask, sem="relaxed")
        tl.debug_barrier()  # every thread's adds are issued before the count goes up
        if tl.atomic_add(cnt_ptr, 1) == tl.num_programs(0) - 1:
            for j0 in range(0, NB, DOWN_BLOCK_J):
                offs_j = j0 + tl.arange(0, DOWN_BLOCK_J)
                jmask = (offs_j < NB)[:, None] & b_ok[None, :]
                jptrs = offs_b[None, :] * NB + offs_j[:, None]
                total = tl.atomic_add(acc_ptr + jptrs, tl.zeros([DOWN_BLOCK_J, BLOCK_B], tl.float32), mask=jmask,
                                      sem="relaxed")  # read at L2 (after the counter's acquire), not a stale L1
                tl.store(out_ptr + offs_b[None, :] * out_stride + offs_j[:, None], total.to(out_ptr.dtype.element_ty),
                         mask=jmask)
    elif SPLIT:
        tl.atomic_add(acc_ptr + optrs, acc, mask=omask, sem=ADD_SEM)
        if CAST:
            tl.debug_barrier()  # every thread's adds are issued before the block's count goes up
            if tl.atomic_add(cnt_ptr + pid_n, 1) == tl.num_programs(1) - 1:
                total = tl.atomic_add(acc_ptr + optrs, tl.zeros_like(acc), mask=omask)  # read at L2, not a stale L1
                tl.store(out_ptr + optrs, total.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        tl.store(out_ptr + optrs, acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _rope_attn_kernel(qkv_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, k_new_ptr, v_new_ptr, o_ptr, m_ptr, l_ptr,
                      attn_ptr, cnt_ptr, wo_ptr, wo_n, wo_per, kv_len, split_len, max_kv, KVH, D, GROUP, scale, QKV_STRIDE,
                      Q_DIM, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_KV: tl.constexpr, SPLITS: tl.constexpr,
                      DOT: tl.constexpr, PDL: tl.constexpr, LAST_COMBINES: tl.constexpr, PREFETCH: tl.constexpr,
                      KV_LINE: tl.constexpr, WO_LINE: tl.constexpr):
    """One program per (sequence, kv head, KV split): its GROUP q heads attend to the split's cache
    rows; split 0 also takes the new token (and writes it out). SPLITS == 1 writes the normalised
    output; otherwise the unnormalised partial (acc, running max m, sum l) for _attn_combine_kernel,
    or with LAST_COMBINES for the split that finishes last (counter cnt[b, kvh]), which combines the
    group's partials into attn itself. PREFETCH >= 1 (PDL only): the cache rows do not depend on the
    predecessor, so the split's K and V rows are hinted into L2 before the wait; 2: after its loop each
    program also hints its wo_per elements of wo (the next GEMV's weight, wo_n in all) into L2 while
    the slower splits still run, so the O projection reads L2 instead of HBM. *_LINE: elements a line."""
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    cache = (b * KVH + kvh) * max_kv * D
    start = split * split_len
    end = tl.minimum(start + split_len, kv_len)
    if PREFETCH >= 1:
        _prefetch_span(kc_ptr + cache + start * D, (end - start) * D, KV_LINE)
        _prefetch_span(vc_ptr + cache + start * D, (end - start) * D, KV_LINE)
    _pdl_enter(PDL)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    half = D // 2
    rot = tl.where(offs_d < half, offs_d + half, offs_d - half)  # rotate-half partner
    sign = tl.where(offs_d < half, -1.0, 1.0)
    cos = tl.load(cos_ptr + offs_d, mask=dmask, other=0.0)
    sin = tl.load(sin_ptr + offs_d, mask=dmask, other=0.0)
    k_row = qkv_ptr + b * QKV_STRIDE + Q_DIM + kvh * D
    v_row = k_row + KVH * D
    k = tl.load(k_row + offs_d, mask=dmask, other=0.0)
    k = k * cos + sign * tl.load(k_row + rot, mask=dmask, other=0.0) * sin
    v = tl.load(v_row + offs_d, mask=dmask, other=0.0)
    offs_g = tl.arange(0, BLOCK_G)
    qmask = (offs_g[:, None] < GROUP) & dmask[None, :]
    heads = kvh * GROUP + offs_g
    q_rows = qkv_ptr + b * QKV_STRIDE + heads[:, None] * D
    q = tl.load(q_rows + offs_d[None, :], mask=qmask, other=0.0)
    q = q * cos[None, :] + sign[None, :] * tl.load(q_rows + rot[None, :], mask=qmask, other=0.0) * sin[None, :]
    q = q * scale
    if split == 0:
        # The new token first: it is always attended to, so the running max starts finite.
        new_row = (b * KVH + kvh) * D
        tl.store(k_new_ptr + new_row + offs_d, k.to(k_new_ptr.dtype.element_ty), mask=dmask)
        tl.store(v_new_ptr + new_row + offs_d, v.to(v_new_ptr.dtype.element_ty), mask=dmask)
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
        if DOT:
            s = tl.dot(q.to(kt.dtype), tl.trans(kt))
        else:
            s = tl.sum(q[:, None, :] * kt.to(tl.float32)[None, :, :], axis=2)
        s = tl.where(nmask[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        vt = tl.load(vc_ptr + cache + offs_n[:, None] * D + offs_d[None, :], mask=tmask, other=0.0)
        if DOT:
            acc = tl.dot(p.to(vt.dtype), vt, acc * alpha[:, None])
        else:
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * vt.to(tl.float32)[None, :, :], axis=1)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    if PREFETCH >= 2:
        lo = ((b * KVH + kvh) * SPLITS + split) * wo_per
        _prefetch_span(wo_ptr + lo, tl.minimum(wo_per, wo_n - lo), WO_LINE)
    o_rows = (b * KVH * GROUP + heads[:, None]) * D
    if SPLITS == 1:
        tl.store(o_ptr + o_rows + offs_d[None, :], acc / l_i[:, None], mask=qmask)
    else:
        # Partials laid out [split, sequence * q_heads (, D)].
        part = split * tl.num_programs(0) * KVH * GROUP
        tl.store(o_ptr + part * D + o_rows + offs_d[None, :], acc, mask=qmask)
        gmask = offs_g < GROUP
        tl.store(m_ptr + part + b * KVH * GROUP + heads, m_i, mask=gmask)
        tl.store(l_ptr + part + b * KVH * GROUP + heads, l_i, mask=gmask)
        if LAST_COMBINES:
            tl.debug_barrier()  # every thread's partial stores are issued before the count goes up
            if tl.atomic_add(cnt_ptr + b * KVH + kvh, 1) == SPLITS - 1:
                rows_total = tl.num_programs(0) * KVH * GROUP
                rows_g = b * KVH * GROUP + heads
                offs_s = tl.arange(0, SPLITS)
                sg = offs_s[:, None] * rows_total + rows_g[None, :]
                # .cg: the other splits' partials are read at L2, never from a stale L1 line
                ms = tl.load(m_ptr + sg, mask=gmask[None, :], other=0.0, cache_modifier=".cg")
                ls = tl.load(l_ptr + sg, mask=gmask[None, :], other=0.0, cache_modifier=".cg")
                ws = tl.exp(ms - tl.max(ms, 0)[None, :])  # split 0 holds the new token: the max is finite
                out = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
                for s in tl.static_range(SPLITS):
                    w_s = tl.sum(tl.where(offs_s[:, None] == s, ws, 0.0), 0)
                    p_s = tl.load(o_ptr + (s * rows_total + rows_g)[:, None] * D + offs_d[None, :], mask=qmask,
                                  other=0.0, cache_modifier=".cg")
                    out += p_s * w_s[:, None]
                tl.store(attn_ptr + rows_g[:, None] * D + offs_d[None, :], out / tl.sum(ls * ws, 0)[:, None], mask=qmask)


@triton.jit
def _attn_combine_kernel(part_ptr, m_ptr, l_ptr, o_ptr, ROWS, D, SPLITS: tl.constexpr, BLOCK_D: tl.constexpr,
                         PDL: tl.constexpr):
    """One program per (sequence, q head): rescale the splits' partials to their common max and
    normalise. Split 0 holds the new token, so the max is finite; empty splits have m = -inf."""
    _pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    m = tl.load(m_ptr + offs_s * ROWS + row)
    l = tl.load(l_ptr + offs_s * ROWS + row)
    w = tl.exp(m - tl.max(m, 0))
    acc = tl.load(part_ptr + (offs_s[:, None] * ROWS + row) * D + offs_d[None, :], mask=dmask[None, :], other=0.0)
    tl.store(o_ptr + row * D + offs_d, tl.sum(acc * w[:, None], 0) / tl.sum(l * w, 0), mask=dmask)


def _block_n():
    return max(_knob("GEMV_BLOCK_N"), 16) if _knob("GEMV_DOT") else _knob("GEMV_BLOCK_N")  # tl.dot: >= 16


def _gemv(x, w, out, mode=0, res=None, w2=None, w3=None, norm_w=None, na=None, nb=0, acc=None, cnt=None, split_k=1,
          prefetch=None):
    """out = x @ w^T (see _gemv_kernel); w2/w3 with na/nb: the q|k|v segments (MODE 0) or the up
    weight (MODE 2). acc (zeroed fp32, out's shape; out itself when out is fp32 scratch) turns on
    split_k ways split-K; with cnt (zeroed int32, one per row block) acc is a staging copy cast into out.
    MODE 3 (fused down): w3 is w_down, nb its rows, acc the zeroed staging copy of out, cnt one counter.
    prefetch: weight tiles per row hinted into L2 before the PDL wait (default PREFETCH)."""
    batch, k = x.shape
    n = w.shape[0] if mode == 3 else out.shape[1]
    bn = max(_knob("MLP_BLOCK_N"), 16 if _knob("GEMV_DOT") else 1) if mode >= 2 and _knob("MLP_BLOCK_N") else _block_n()
    bk = _knob("GEMV_BLOCK_K")
    k_split = triton.cdiv(triton.cdiv(k, split_k), bk) * bk if acc is not None and mode != 3 else k
    splits = triton.cdiv(k, k_split)
    block_b = max(triton.next_power_of_2(batch), 16 if _knob("GEMV_DOT") else 1)
    pdl = _pdl(x)
    ws = [t for t in (w, w2, w3 if mode != 3 else None) if t is not None]  # w_down is never a TMA tile
    tma = _knob("GEMV_TMA") and bk <= 256 and bn <= 256 and _tma_ok(*ws)  # a TMA box is at most 256 per dim
    if tma:
        triton.set_allocator(_tma_scratch(x.device))
    _gemv_kernel[(triton.cdiv(n, bn), splits)](
        x, x if norm_w is None else norm_w, w, w if w2 is None else w2, w if w3 is None else w3,
        out if res is None else res, out, out if acc is None else acc, out if cnt is None else cnt,
        batch, n, n if na is None else na, nb, k, k_split, out.stride(0), RMS_EPS, _first_wave(x) if pdl else 0,
        BLOCK_B=block_b, BLOCK_N=bn, BLOCK_K=bk, MODE=mode, NORM=norm_w is not None, DOT=_knob("GEMV_DOT"),
        SPLIT=splits > 1, CAST=splits > 1 and cnt is not None, NORM_BLOCK=_knob("NORM_BLOCK"), PDL=pdl,
        PF_LINES=(_knob("PREFETCH") if prefetch is None else prefetch) * bk // 64 if pdl else 0, TMA=tma, DOWN_BLOCK_J=_knob("DOWN_BLOCK_J"),
        ADD_SEM="relaxed" if _knob("RELAXED_ADDS") else "acq_rel",
        num_warps=_knob("GEMV_WARPS"), num_stages=_knob("num_stages"), launch_pdl=pdl)


def _rmsnorm(x, w, out):
    pdl = _pdl(x)
    _rmsnorm_kernel[(x.shape[0],)](x, w, out, x.shape[1], RMS_EPS, BLOCK=_knob("NORM_BLOCK"), PDL=pdl,
                                   num_warps=4, launch_pdl=pdl)


def run(x, attn_norm_w, wq, wk, wv, wo, mlp_norm_w, w_gate, w_up, w_down, k_cache, v_cache,
        rope_cos, rope_sin, kv_len, out, k_new, v_new):
    batch, hidden = x.shape
    _, kv_heads, max_kv, head_dim = k_cache.shape
    q_dim, kv_dim, mlp = wq.shape[0], wk.shape[0], w_gate.shape[0]
    q_heads = q_dim // head_dim
    splits = _knob("ATTN_SPLITS")
    last_combines = splits > 1 and _knob("ATTN_LAST_COMBINES")
    pdl = _pdl(x)
    fuse_norm = _knob("FUSE_NORM") or batch <= _knob("FUSE_NORM_UPTO")
    fuse_mlp = batch <= _knob("FUSE_MLP")
    qkv_dim = q_dim + 2 * kv_dim
    # One fp32 scratch allocation for every intermediate (one allocator call per layer); with
    # ACT_NARROW the GEMV inputs get their own in x's dtype.
    gemv_in = dict(xn=0 if fuse_norm else batch * hidden, attn=batch * q_dim, hn=0 if fuse_norm else batch * hidden,
                   act=0 if fuse_mlp else batch * mlp)
    narrow = gemv_in if _knob("ACT_NARROW") else {}
    sizes = dict(qkv=batch * qkv_dim, h=batch * hidden, part=batch * q_dim * splits if splits > 1 else 0,
                 ml=2 * batch * q_heads * splits if splits > 1 else 0, **({} if narrow else gemv_in))
    split, split_qo = _knob("SPLIT_K"), _knob("SPLIT_K_QO") or _knob("SPLIT_K")
    # Split-K sums with atomics into zeroed fp32: q|k|v, h, the output's staging copy and the down
    # projection's per-row-block counters (int32 bits in the same zeroed buffer); FUSE_MLP uses the
    # staging copy and counter 0.
    zsizes = dict(qkv=batch * qkv_dim, h=batch * hidden) if split_qo > 1 else {}
    if split > 1 or fuse_mlp:
        zsizes.update(out=batch * hidden, cnt=triton.cdiv(hidden, _block_n()))
    if last_combines:
        zsizes.update(acnt=batch * kv_heads)  # int32 arrival counters of the attention splits
    if split_qo > 1:
        sizes.update(qkv=0, h=0)
    scratch = torch.empty(sum(sizes.values()), device=x.device, dtype=torch.float32)
    zeroed = torch.zeros(sum(zsizes.values()), device=x.device, dtype=torch.float32)
    buf = {}
    for sz, mem in ((sizes, scratch), (zsizes, zeroed),
                    (narrow, torch.empty(sum(narrow.values()), device=x.device, dtype=x.dtype))):
        at = 0
        for name, size in sz.items():
            buf[name] = mem[at:at + size]
            at += size
    qkv = buf["qkv"].view(batch, qkv_dim)
    qkv_acc = qkv if split_qo > 1 else None
    if fuse_norm:
        x_in, nw = x, attn_norm_w
    else:
        x_in, nw = buf["xn"].view(batch, hidden), None
        _rmsnorm(x, attn_norm_w, x_in)
    bn = _block_n()
    if _knob("FUSE_QKV") and q_dim % bn == 0 and kv_dim % bn == 0:
        _gemv(x_in, wq, qkv, w2=wk, w3=wv, norm_w=nw, na=q_dim, nb=kv_dim, acc=qkv_acc, split_k=split_qo)
    else:
        for w, lo, hi in ((wq, 0, q_dim), (wk, q_dim, q_dim + kv_dim), (wv, q_dim + kv_dim, qkv_dim)):
            _gemv(x_in, w, qkv[:, lo:hi], norm_w=nw, acc=qkv[:, lo:hi] if qkv_acc is not None else None, split_k=split_qo)
    attn = buf["attn"].view(batch, q_dim)
    group = q_heads // kv_heads
    attn_dot = _knob("ATTN_DOT")
    block_kv = max(_knob("ATTN_BLOCK_KV"), 16) if attn_dot else _knob("ATTN_BLOCK_KV")
    split_len = triton.cdiv(triton.cdiv(int(kv_len), splits), block_kv) * block_kv
    ml = buf["ml"]
    part = buf["part"] if splits > 1 else attn
    prefetch = _knob("ATTN_PREFETCH") if pdl else 0  # inline-asm hints: GPU only, like PREFETCH
    wo_line = 128 // wo.element_size()
    wo_per = triton.cdiv(triton.cdiv(wo.numel(), wo_line), batch * kv_heads * splits) * wo_line  # whole lines each
    if prefetch >= 2 and not wo.is_contiguous():
        prefetch = 1  # the share arithmetic assumes one dense span
    m_buf, l_buf = (ml[:ml.numel() // 2], ml[ml.numel() // 2:]) if splits > 1 else (attn, attn)
    _rope_attn_kernel[(batch, kv_heads, splits)](
        qkv, rope_cos, rope_sin, k_cache, v_cache, k_new, v_new, part, m_buf, l_buf,
        attn, buf["acnt"].view(torch.int32) if last_combines else attn, wo, wo.numel(), wo_per, int(kv_len), split_len,
        max_kv, kv_heads, head_dim, group, 1.0 / math.sqrt(head_dim), qkv_dim, q_dim,
        BLOCK_G=max(triton.next_power_of_2(group), 16 if attn_dot else 1), BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_KV=block_kv, SPLITS=splits, DOT=attn_dot, PDL=pdl, LAST_COMBINES=last_combines,
        PREFETCH=prefetch, KV_LINE=128 // k_cache.element_size(), WO_LINE=wo_line, num_warps=_knob("ATTN_WARPS"),
        num_stages=_knob("num_stages"), launch_pdl=pdl)
    if splits > 1 and not last_combines:
        _attn_combine_kernel[(batch * q_heads,)](part, m_buf, l_buf, attn, batch * q_heads, head_dim, SPLITS=splits,
                                                 BLOCK_D=triton.next_power_of_2(head_dim), PDL=pdl, num_warps=4,
                                                 launch_pdl=pdl)
    h = buf["h"].view(batch, hidden)
    # PREFETCH_O: the O GEMV waits on attention, which leaves DRAM mostly idle: its weights can stream meanwhile
    _gemv(attn, wo, h, mode=1, res=x, acc=h if split_qo > 1 else None, split_k=split_qo,
          prefetch=_knob("PREFETCH_O") or None)
    if fuse_norm:
        h_in, nw = h, mlp_norm_w
    else:
        h_in, nw = buf["hn"].view(batch, hidden), None
        _rmsnorm(h, mlp_norm_w, h_in)
    if fuse_mlp:
        _gemv(h_in, w_gate, out, mode=3, w2=w_up, w3=w_down, norm_w=nw, nb=hidden, res=h,
              acc=buf["out"].view(batch, hidden), cnt=buf["cnt"].view(torch.int32))
        return
    act = buf["act"].view(batch, mlp)
    _gemv(h_in, w_gate, act, mode=2, w2=w_up, norm_w=nw)
    _gemv(act, w_down, out, mode=1, res=h, acc=buf["out"].view(batch, hidden) if split > 1 else None,
          cnt=buf["cnt"].view(torch.int32) if split > 1 else None, split_k=split)
