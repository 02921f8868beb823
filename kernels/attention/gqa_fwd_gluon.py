"""attention_gqa_fwd in Gluon for Hopper (sm_90): FlashAttention-3-style async wgmma + TMA ring.

Why Gluon: the Triton seed's `tl.dot` for Q.K^T is always followed by `wgmma.wait_group 0`, so the
softmax (ex2) runs with the tensor cores idle (knowledge_base/attention/softmax-mma-overlap.md).
Gluon exposes `warpgroup_mma(..., is_async=True)` and `warpgroup_mma_wait(num_outstanding, deps)`,
so the kernel decides where each wait sits.

Design (one CTA = BLOCK_M query rows of one (batch, query head); grid (cdiv(S, BLOCK_M), B*Hq)):
- num_warps = 8: two warpgroups, each owning 64 of the 128 rows (the wgmma layout's warps_per_cta
  is [num_warps, 1], so the M dimension splits across warpgroups). No warp specialisation: every
  warp computes; TMA copies are issued by one elected thread.
- Q tile: one TMA load into shared memory; it is the A operand (from shared) of every Q.K^T.
- K and V: two rings of NUM_STAGES shared buffers, each slot with its own "ready" mbarrier (the TMA
  transaction count completes it). Block i sits in slot i % NUM_STAGES, phase (i // NUM_STAGES) & 1.
- Intra-warpgroup pipelining (FA3 section 3.2). Step j (1 <= j < n), P_{j-1} (fp32) and alpha_{j-1}
  coming from the previous step's softmax:
      wait(0)        -> O (P_{j-2}.V_{j-2} done); O *= alpha_{j-1}; P_{j-1} -> bf16/fp16 wgmma A operand
      CTA barrier; refill K slot (j-1)%NS with K_{j-1+NS} and V slot (j-2)%NS with V_{j-2+NS}
      issue  S_j  = Q . K_j^T                  (async, group 1)
      issue  O   += P_{j-1} . V_{j-1}          (async, group 2; P from registers)
      wait(1)        -> S_j ready, the P.V still in flight
      softmax(S_j)   -> P_j, alpha_j, running max/sum (ex2 overlaps the P.V on the tensor cores)
  Block 0's Q.K^T + softmax form the prologue, the last P.V the epilogue. The wait(0) sits at the
  top of the step, not after the softmax: ptxas hoists a wgmma.wait_group to the start of its basic
  block (seen in the SASS: placed after the softmax in the same block, it landed above every
  MUFU.EX2), so the loop's back edge is what keeps the softmax ahead of it. The CTA barrier before
  a refill makes sure both warpgroups' wgmmas that read the slot have completed (the copy is issued
  by one thread). SASS of the loop (triton 3.6, ptxas sm_90a, BLOCK_N 128):
      DEPBAR0 BAR BAR UTMALDG x2 BAR TRYWAIT(K) TRYWAIT(V) HGMMA x8 (QK) HGMMA x8 (PV) DEPBAR1 [mask] MUFU.EX2 x66
- Online softmax exactly as the seed (EXP2 + FMA_SCALE): log2(e)/sqrt(D) folded into qk_scale,
  m = max(m, rowmax(S)*scale), P = exp2(S*scale - m), alpha = exp2(m_old - m), l = l*alpha + rowsum(P),
  fp32 accumulators, P rounded to the input dtype for the P.V wgmma, O = acc / l at the end.
- Masks only on the blocks that need them (a runtime branch): keys >= S get -inf (the K/V TMA
  zero-fills rows past S, so they are finite before masking), and when causal, keys > query row.
  Every row (also the zero-filled rows past S) sees key 0 in block 0, so the running max is finite
  from the first block on (no -inf - -inf).
- Descriptors: host-side 4-D TMA descriptors over the [B, H, S, D] tensors themselves with block
  [1, 1, BLOCK, D], so the sequence axis of every (batch, head) ends at S on its own: rows past S are
  zero-filled on load and dropped on store, and a tile never reads or writes the next head (a 2-D
  [B*H*S, D] view would). Any B/H strides work as long as TMA's 16-byte rules hold. The 4-D shared
  tile is reshaped to 2-D [BLOCK, D] for the wgmma. O goes registers -> shared (Q's buffer, free by
  then) -> TMA store.
- Causal: KV blocks stop at the diagonal, and the largest query blocks launch first.

Supported: D in {64, 128}, bf16 or fp16, last dim contiguous, 16-byte-aligned strides and base;
anything else raises ValueError (a kernel file may not import the Triton seed to fall back on).
Gluon is not run by the CPU interpreter: check on the GPU (`avo eval attention_gqa_fwd FILE --device cuda`).
Written against triton 3.6 (the GPU machine's); the TMA copy names and the CTA barrier are looked
up so the same file also compiles with triton 3.9 (async_load/async_store, gl.barrier).
"""
import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK_M=128, BLOCK_N=128, NUM_STAGES=2, num_warps=8)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    BLOCK_M=[128, 64],  # query rows per CTA (must be a multiple of 16 * num_warps)
    BLOCK_N=[128, 64],  # keys per KV block (the N of Q.K^T, the K of P.V)
    NUM_STAGES=[2, 3],  # depth of the K and V TMA rings (3 at BLOCK_N 128 uses ~224 KB of shared memory)
    num_warps=[8, 4],  # 4 warps = one warpgroup, 8 = two warpgroups splitting BLOCK_M
)

LOG2E = 1.4426950408889634

# triton 3.6 names vs later ones (3.9 renamed the TMA copies and the CTA barrier).
_tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
_tma_store = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
_cta_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier


def _knob(name):
    return CONFIG.get(name, TUNABLES[name][0])  # a knob missing from CONFIG takes its first value


@gluon.jit
def _online_softmax(s, m_i, l_i, qk_scale, start_n, q_row, seq, mask_from,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
                    s_layout: gl.constexpr):
    """One KV block of the online softmax on raw scores s [BLOCK_M, BLOCK_N] (fp32, wgmma layout).
    Returns P (fp32), alpha = exp2(m_old - m_new), the new running max and the new running sum."""
    if start_n + BLOCK_N > mask_from:  # only the tail block and (causal) the diagonal blocks
        cols = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        valid = gl.expand_dims(cols < seq, 0)
        if CAUSAL:
            rows = q_row + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
            valid = valid & (gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1))
        s = gl.where(valid, s, float("-inf"))
    # qk_scale > 0 commutes with the max; -inf stays -inf; s * scale - m is one FMA per score.
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_i


@gluon.jit
def _gqa_fwd_gluon_kernel(q_desc, k_desc, v_desc, o_desc, seq, heads, group, qk_scale,
                          DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                          NUM_STAGES: gl.constexpr, CAUSAL: gl.constexpr, NUM_WARPS: gl.constexpr):
    dtype: gl.constexpr = q_desc.dtype
    # wgmma accumulator layouts: instr [m=16, n, k=16] (16-bit inputs), warps stacked along M.
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    srow_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
    q_bytes: gl.constexpr = BLOCK_M * DIM * (dtype.primitive_bitwidth // 8)
    kv_bytes: gl.constexpr = BLOCK_N * DIM * (dtype.primitive_bitwidth // 8)

    pid_m = gl.program_id(0)
    if CAUSAL:  # the longest query blocks first, so the short ones fill the tail of the grid
        pid_m = gl.num_programs(0) - 1 - pid_m
    bh = gl.program_id(1)
    b = bh // heads
    h = bh % heads
    hk = h // group  # the KV head this query head reads
    q_row = pid_m * BLOCK_M

    hi = seq
    mask_from = seq  # blocks ending past here need a mask
    if CAUSAL:
        mask_from = q_row
        if q_row + BLOCK_M < seq:
            hi = q_row + BLOCK_M
    n_blocks = gl.cdiv(hi, BLOCK_N)

    # Shared memory: Q (reused for O at the end), K and V rings, barriers.
    q_smem = gl.allocate_shared_memory(dtype, [1, 1, BLOCK_M, DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, 1, BLOCK_N, DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, 1, 1, BLOCK_N, DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)
    fence_async_shared()
    _cta_barrier()

    # Prologue loads: Q, then the first NUM_STAGES K and V blocks.
    mbarrier.expect(q_bar, q_bytes)
    _tma_load(q_desc, [b, h, q_row, 0], q_bar, q_smem)
    for i in gl.static_range(NUM_STAGES):
        ok = i < n_blocks
        mbarrier.expect(k_bars.index(i), kv_bytes, pred=ok)
        _tma_load(k_desc, [b, hk, i * BLOCK_N, 0], k_bars.index(i), k_smem.index(i), pred=ok)
        mbarrier.expect(v_bars.index(i), kv_bytes, pred=ok)
        _tma_load(v_desc, [b, hk, i * BLOCK_N, 0], v_bars.index(i), v_smem.index(i), pred=ok)

    q_view = q_smem.reshape([BLOCK_M, DIM])
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)  # ignored (use_acc=False)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, srow_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, srow_layout)
    acc = gl.zeros([BLOCK_M, DIM], gl.float32, o_layout)

    # Block 0: S_0 = Q K_0^T, softmax -> P_0 (fp32; converted at the top of the next step).
    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_bars.index(0), 0)
    s_tok = warpgroup_mma(q_view, k_smem.index(0).reshape([BLOCK_N, DIM]).permute((1, 0)), s_zero,
                          use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[s_tok])
    p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, qk_scale, 0, q_row, seq, mask_from,
                                         BLOCK_M, BLOCK_N, CAUSAL, s_layout)
    acc_tok = warpgroup_mma_init(acc)  # "no P.V in flight" for the first wait below
    p_op = gl.convert_layout(p.to(dtype), p_layout)  # placeholder dependency of that wait

    # Step j: P_{j-1} and alpha_{j-1} come from the previous step's softmax; P_{j-2}.V_{j-2} may be in flight.
    # The wait for that P.V sits at the top of the step and the softmax at its bottom, so the loop's
    # back edge separates them: ptxas schedules wgmma.wait_group as early as its basic block allows
    # (seen in the SASS: a wait placed after the softmax in the same block was hoisted above every ex2).
    for j in range(1, n_blocks):
        acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])  # P_{j-2} registers live until here
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        # Every warpgroup is past its waits for Q.K_{j-1}^T and P_{j-2}.V_{j-2} once the CTA barrier
        # is passed: K slot (j-1) % NS and V slot (j-2) % NS are free; refill them with blocks j-1+NS
        # and j-2+NS (V block NS-1 came with the prologue, hence j >= 2). Arming a barrier before
        # the CTA barrier is safe: its next phase cannot complete before the copy is issued.
        kblk = j - 1 + NUM_STAGES
        kslot = (j - 1) % NUM_STAGES
        k_ok = kblk < n_blocks
        vblk = j - 2 + NUM_STAGES
        vslot = (j + NUM_STAGES - 2) % NUM_STAGES
        v_ok = (j >= 2) & (vblk < n_blocks)
        mbarrier.expect(k_bars.index(kslot), kv_bytes, pred=k_ok)
        mbarrier.expect(v_bars.index(vslot), kv_bytes, pred=v_ok)
        _cta_barrier()
        _tma_load(k_desc, [b, hk, kblk * BLOCK_N, 0], k_bars.index(kslot), k_smem.index(kslot), pred=k_ok)
        _tma_load(v_desc, [b, hk, vblk * BLOCK_N, 0], v_bars.index(vslot), v_smem.index(vslot), pred=v_ok)

        # Issue S_j = Q K_j^T, then O += P_{j-1} V_{j-1}: two async wgmma groups.
        stage = j % NUM_STAGES
        prev = j - 1
        pstage = prev % NUM_STAGES
        mbarrier.wait(k_bars.index(stage), (j // NUM_STAGES) & 1)
        mbarrier.wait(v_bars.index(pstage), (prev // NUM_STAGES) & 1)
        s_tok = warpgroup_mma(q_view, k_smem.index(stage).reshape([BLOCK_N, DIM]).permute((1, 0)), s_zero,
                              use_acc=False, is_async=True)
        acc_tok = warpgroup_mma(p_op, v_smem.index(pstage).reshape([BLOCK_N, DIM]), acc, is_async=True)
        # S_j done, the P.V still running: the softmax of block j overlaps P_{j-1}.V_{j-1}.
        s = warpgroup_mma_wait(1, deps=[s_tok])
        p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, qk_scale, j * BLOCK_N, q_row, seq, mask_from,
                                             BLOCK_M, BLOCK_N, CAUSAL, s_layout)

    # Epilogue: O = alpha * O + P_{n-1} V_{n-1}, normalise, store via shared memory (Q's buffer) and TMA.
    acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, orow_layout), 1)
    p_op = gl.convert_layout(p.to(dtype), p_layout)
    last = n_blocks - 1
    lstage = last % NUM_STAGES
    mbarrier.wait(v_bars.index(lstage), (last // NUM_STAGES) & 1)
    acc_tok = warpgroup_mma(p_op, v_smem.index(lstage).reshape([BLOCK_N, DIM]), acc, is_async=True)
    acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
    acc = acc / gl.expand_dims(gl.convert_layout(l_i, orow_layout), 1)

    mbarrier.invalidate(q_bar)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.invalidate(k_bars.index(i))
        mbarrier.invalidate(v_bars.index(i))
    q_view.store(acc.to(dtype))
    fence_async_shared()
    _cta_barrier()
    _tma_store(o_desc, [b, h, q_row, 0], q_smem)
    tma.store_wait(0)


_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}


def _descriptor(t: torch.Tensor, block_rows: int, gl_dtype):
    """4-D TMA descriptor over t [B, H, S, D] with block [1, 1, block_rows, D]. A dim of size 1 may
    carry any stride in torch; TMA needs 16-byte multiples everywhere, and the stride of a size-1
    dim is never used, so it is replaced by a legal one."""
    isz = t.element_size()
    shape = list(t.shape)
    strides = list(t.stride())
    for i in (2, 1, 0):
        if shape[i] == 1:
            strides[i] = strides[i + 1] * shape[i + 1]
    if strides[3] != 1:
        raise ValueError("the head dim must be contiguous (stride 1)")
    if t.storage_offset() * isz % 16 or any(s * isz % 16 for s in strides[:3]):  # storages are 16-byte aligned
        raise ValueError(f"TMA needs a 16-byte aligned base and 16-byte multiple strides, got strides {t.stride()}")
    block = [1, 1, block_rows, shape[3]]
    layout = gl.NVMMASharedLayout.get_default_for(block, gl_dtype)
    return TensorDescriptor(t, shape, strides, block, layout)


def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, o: torch.Tensor) -> None:
    batch, heads, seq, dim = q.shape  # heads = query heads
    kv_heads = k.shape[1]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"q_heads {heads} is not a multiple of kv_heads {kv_heads}")
    if dim not in (64, 128):
        raise ValueError(f"head dim {dim} not supported by the Gluon kernel (64 or 128)")
    if q.dtype not in _GL_DTYPES or not (q.dtype == k.dtype == v.dtype == o.dtype):
        raise ValueError(f"dtypes must all be bf16 or all fp16, got {q.dtype}, {k.dtype}, {v.dtype}, {o.dtype}")
    if k.shape != v.shape or k.shape[0] != batch or k.shape[2] != seq or k.shape[3] != dim or o.shape != q.shape:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} o {tuple(o.shape)}")
    if seq == 0 or batch == 0:
        return
    block_m, block_n, stages, warps = _knob("BLOCK_M"), _knob("BLOCK_N"), _knob("NUM_STAGES"), _knob("num_warps")
    if block_m % (16 * warps):
        raise ValueError(f"BLOCK_M {block_m} must be a multiple of 16 * num_warps ({16 * warps})")
    gdt = _GL_DTYPES[q.dtype]
    q_desc = _descriptor(q, block_m, gdt)
    k_desc = _descriptor(k, block_n, gdt)
    v_desc = _descriptor(v, block_n, gdt)
    o_desc = _descriptor(o, block_m, gdt)
    qk_scale = LOG2E / math.sqrt(dim)
    grid = (triton.cdiv(seq, block_m), batch * heads)
    _gqa_fwd_gluon_kernel[grid](q_desc, k_desc, v_desc, o_desc, seq, heads, heads // kv_heads, qk_scale,
                                DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, NUM_STAGES=stages,
                                CAUSAL=bool(causal), NUM_WARPS=warps, num_warps=warps)
