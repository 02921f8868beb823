"""Seed x0 for attention_mha_fwd: FlashAttention-2-style forward in Triton.

One program per (BLOCK_M query rows, batch*head). Q stays in registers; K and V stream through in
blocks of BLOCK_N keys with an online softmax (running row max m, running sum l, fp32 accumulator
rescaled when the max grows), so the S x S scores never touch memory. P is cast to the input dtype
for the second dot, as FlashAttention does; every accumulation is fp32. Any sequence length (rows
and keys past the end are masked), head dim D in {16, 32, 64, 128, 256} (a constexpr), causal or not.
TMA=True loads the Q, K and V tiles and stores O through Hopper TMA tensor descriptors, one [seq, D]
descriptor per (batch, head) made in the kernel (tl.make_tensor_descriptor; rows past seq load as
zeros and are not stored); run() keeps the pointer path where TMA's 16-byte rules fail.
"""
import math

import torch
import triton
import triton.language as tl

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, EXP2=True, CAUSAL_SKIP=True, PEEL_TAIL=True, WARP_SPEC=False, REVERSE_M=False, TMA=False, FMA_SCALE=True)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    BLOCK_M=[16, 32, 64, 128],  # query rows per program
    BLOCK_N=[16, 32, 64, 128],  # keys per inner step
    num_warps=[2, 4, 8],
    num_stages=[1, 2, 3],  # software-pipelining depth of the K/V loads
    EXP2=[False, True],  # exp2 with log2(e) folded into the scale, instead of exp
    CAUSAL_SKIP=[False, True],  # causal: skip KV blocks above the diagonal, mask only the diagonal ones
    PEEL_TAIL=[False, True],  # non-causal: no bounds mask on the full KV blocks, only on the last partial one
    WARP_SPEC=[False, True],  # Triton's automatic warp specialisation of the main KV loop (producer/consumer warps)
    REVERSE_M=[False, True],  # causal: launch the longest (last) query blocks first, so the short ones fill the tail
    TMA=[False, True],  # Q, K, V tiles and the O store through TMA tensor descriptors (Hopper+), not pointer loads
    FMA_SCALE=[False, True],  # the max on raw scores, then scale and subtract in one FMA per score (not a mul and a sub)
)

LOG2E = 1.4426950408889634


def _knob(name):
    return CONFIG.get(name, TUNABLES[name][0])  # a knob missing from CONFIG (an older lineage's) takes its first value


def _tma_ok(*ts: torch.Tensor) -> bool:
    """TMA's rules for each [B, H, S, D] tensor: last dim contiguous, the S stride and the start
    16-byte multiples (a torch storage itself is 16-byte aligned, so the offset into it decides),
    and so every (batch, head) base: the B and H strides too, where that dim has more than one entry."""
    for t in ts:
        isz = t.element_size()
        if t.stride(-1) != 1 or t.storage_offset() * isz % 16 or t.stride(2) * isz % 16:
            return False
        if any(t.stride(i) * isz % 16 for i in (0, 1) if t.size(i) > 1):
            return False
    return True


def _tma_scratch(device):
    """Device-side descriptors live in global scratch that Triton asks this allocator for."""
    return lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=device)


@triton.jit
def _mha_fwd_step(acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d, seq,
                  stride_ks, stride_vs, qk_scale,
                  MASK_CAUSAL: tl.constexpr, MASK_TAIL: tl.constexpr, EXP2: tl.constexpr, TMA: tl.constexpr,
                  FMA_SCALE: tl.constexpr):
    """One KV block: scores, online-softmax update, P @ V into the fp32 accumulator. With TMA,
    k_base and v_base are this head's [seq, DIM] tensor descriptors (rows past seq read as zeros)."""
    cols = start_n + offs_n
    col_ok = cols < seq
    if TMA:
        kt = tl.trans(k_base.load([start_n, 0]))
    else:
        kt = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None], mask=col_ok[None, :], other=0.0)
    qk = tl.dot(q, kt)  # [BLOCK_M, BLOCK_N], fp32
    if not FMA_SCALE:
        qk = qk * qk_scale  # in log2 units when EXP2
    if MASK_TAIL:
        qk = tl.where(col_ok[None, :], qk, float("-inf"))
    if MASK_CAUSAL:
        qk = tl.where(offs_m[:, None] >= cols[None, :], qk, float("-inf"))
    # Every row sees at least one unmasked key in its first block, so m_new is finite from then on.
    if FMA_SCALE:  # scale > 0: the max commutes with it, and masked -inf stays -inf
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        s = qk * qk_scale - m_new[:, None]
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        s = qk - m_new[:, None]
    if EXP2:
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s)
    else:
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s)
    l_i = l_i * alpha + tl.sum(p, 1)
    if TMA:
        v = v_base.load([start_n, 0])
    else:
        v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :], mask=col_ok[:, None], other=0.0)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new


@triton.jit
def _mha_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, seq, heads, qk_scale,
                    sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, so_b, so_h, so_s,
                    DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    CAUSAL: tl.constexpr, CAUSAL_SKIP: tl.constexpr, EXP2: tl.constexpr,
                    PEEL_TAIL: tl.constexpr, WARP_SPEC: tl.constexpr, REVERSE_M: tl.constexpr,
                    TMA: tl.constexpr, FMA_SCALE: tl.constexpr):
    start_m = tl.program_id(0)
    if REVERSE_M:
        start_m = tl.num_programs(0) - 1 - start_m
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, DIM)
    row_ok = offs_m < seq
    if TMA:
        # One 2-D descriptor per (batch, head) and tensor, made on the device: its row axis ends at
        # seq, so rows past the end are zero-filled on load and dropped on store (no masks, and no
        # reads or writes into the next head).
        q = tl.make_tensor_descriptor(q_ptr + b * sq_b + h * sq_h, [seq, DIM], [sq_s, 1],
                                      [BLOCK_M, DIM]).load([start_m * BLOCK_M, 0])
        k_base = tl.make_tensor_descriptor(k_ptr + b * sk_b + h * sk_h, [seq, DIM], [sk_s, 1], [BLOCK_N, DIM])
        v_base = tl.make_tensor_descriptor(v_ptr + b * sv_b + h * sv_h, [seq, DIM], [sv_s, 1], [BLOCK_N, DIM])
    else:
        q = tl.load(q_ptr + b * sq_b + h * sq_h + offs_m[:, None] * sq_s + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        k_base = k_ptr + b * sk_b + h * sk_h
        v_base = v_ptr + b * sv_b + h * sv_h
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DIM], tl.float32)
    if CAUSAL and CAUSAL_SKIP:
        # Blocks wholly left of this program's first row need no mask at all; the blocks that
        # cross the diagonal (up to the last row, or the sequence end) get both masks; the rest
        # of the row is never loaded.
        diag = (start_m * BLOCK_M) // BLOCK_N * BLOCK_N
        for start_n in tl.range(0, diag, BLOCK_N, warp_specialize=WARP_SPEC):
            acc, l_i, m_i = _mha_fwd_step(acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d,
                                          seq, sk_s, sv_s, qk_scale, False, False, EXP2, TMA, FMA_SCALE)
        end = tl.minimum((start_m + 1) * BLOCK_M, seq)
        for start_n in range(diag, end, BLOCK_N):
            acc, l_i, m_i = _mha_fwd_step(acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d,
                                          seq, sk_s, sv_s, qk_scale, True, True, EXP2, TMA, FMA_SCALE)
    elif PEEL_TAIL and not CAUSAL:
        full = seq // BLOCK_N * BLOCK_N
        for start_n in tl.range(0, full, BLOCK_N, warp_specialize=WARP_SPEC):
            acc, l_i, m_i = _mha_fwd_step(acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d,
                                          seq, sk_s, sv_s, qk_scale, False, False, EXP2, TMA, FMA_SCALE)
        for start_n in range(full, seq, BLOCK_N):
            acc, l_i, m_i = _mha_fwd_step(acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d,
                                          seq, sk_s, sv_s, qk_scale, False, True, EXP2, TMA, FMA_SCALE)
    else:
        for start_n in tl.range(0, seq, BLOCK_N, warp_specialize=WARP_SPEC):
            acc, l_i, m_i = _mha_fwd_step(acc, l_i, m_i, q, k_base, v_base, start_n, offs_m, offs_n, offs_d,
                                          seq, sk_s, sv_s, qk_scale, CAUSAL, True, EXP2, TMA, FMA_SCALE)
    acc = acc / l_i[:, None]
    if TMA:
        tl.make_tensor_descriptor(o_ptr + b * so_b + h * so_h, [seq, DIM], [so_s, 1],
                                  [BLOCK_M, DIM]).store([start_m * BLOCK_M, 0], acc.to(o_ptr.dtype.element_ty))
    else:
        tl.store(o_ptr + b * so_b + h * so_h + offs_m[:, None] * so_s + offs_d[None, :],
                 acc.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])


def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, o: torch.Tensor) -> None:
    batch, heads, seq, dim = q.shape
    if dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"head dim {dim} not supported (16, 32, 64, 128 or 256)")
    if seq == 0:
        return
    # The kernel assumes the head dim is contiguous (vector loads along D).
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    scale = 1.0 / math.sqrt(dim)
    qk_scale = scale * LOG2E if CONFIG["EXP2"] else scale
    tma = _knob("TMA") and _tma_ok(q, k, v, o)  # else the pointer path (any B, H, S strides)
    if tma:
        triton.set_allocator(_tma_scratch(q.device))
    grid = (triton.cdiv(seq, CONFIG["BLOCK_M"]), batch * heads)
    _mha_fwd_kernel[grid](q, k, v, o, seq, heads, qk_scale,
                          q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                          v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
                          DIM=dim, BLOCK_M=CONFIG["BLOCK_M"], BLOCK_N=CONFIG["BLOCK_N"], CAUSAL=bool(causal),
                          CAUSAL_SKIP=CONFIG["CAUSAL_SKIP"], EXP2=CONFIG["EXP2"],
                          PEEL_TAIL=_knob("PEEL_TAIL"), WARP_SPEC=_knob("WARP_SPEC"), REVERSE_M=_knob("REVERSE_M"),
                          TMA=tma, FMA_SCALE=_knob("FMA_SCALE"),
                          num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
