"""Seed x0 for attention_gqa_decode: split-KV (flash-decoding) grouped-query decode in Triton.

Phase 1: one program per (KV split, batch*KV head). It loads the q rows of all the query heads that
share this KV head (the group, padded to >= 16 rows so tl.dot can use tensor cores; the padding rows
are zero and never stored), streams its slice of the cache in blocks of BLOCK_N keys with an online
softmax (fp32 running max m, sum l, accumulator), and writes the unnormalized partial (m, l, acc) of
each query head. Phase 2: one program per (batch, query head) rescales the partials of every split
to the common max and writes o = sum(acc) / sum(l). NUM_SPLITS = 1 skips phase 2: phase 1 writes o.
Each KV head's cache is read once for its whole group, so the kernel is bound by reading K and V.
"""
import math

import torch
import triton
import triton.language as tl

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK_N=64, NUM_SPLITS=8, num_warps=2, num_stages=2, AUTO_SPLITS=True, CTAS_PER_SM=2)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    BLOCK_N=[16, 32, 64, 128, 256],  # cached keys per inner step
    NUM_SPLITS=[1, 2, 4, 8, 16, 32],  # KV splits per (batch, KV head); 1 = no split, no combine pass
    num_warps=[2, 4, 8],
    num_stages=[1, 2, 3, 4],  # software-pipelining depth of the K/V loads
    # AUTO_SPLITS: pick the split count per call so batch * kv_heads * splits ~ CTAS_PER_SM x #SMs
    # (B1 wants 32+ splits, B64 none); NUM_SPLITS is then ignored.
    AUTO_SPLITS=[False, True],
    CTAS_PER_SM=[1, 2, 4],
)


def _knob(name):
    return CONFIG.get(name, TUNABLES[name][0])  # a knob missing from CONFIG takes its first value


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: pretend 4 SMs so small grids still split


def _splits(batch: int, kv_heads: int, kv_len: int, device: torch.device) -> int:
    if not _knob("AUTO_SPLITS"):
        return CONFIG["NUM_SPLITS"]
    want = triton.cdiv(_knob("CTAS_PER_SM") * _num_sms(device), batch * kv_heads)
    most = triton.next_power_of_2(triton.cdiv(kv_len, CONFIG["BLOCK_N"]))  # no split shorter than a block
    return min(triton.next_power_of_2(want), most, 64)


@triton.jit
def _gqa_decode_split_kernel(q_ptr, k_ptr, v_ptr, o_ptr, m_ptr, l_ptr, acc_ptr,
                             kv_len, kv_heads, group, split_len, sm_scale,
                             sq_b, sq_h, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, so_b, so_h,
                             DIM: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                             NUM_SPLITS: tl.constexpr):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // kv_heads).to(tl.int64)
    hk = (bh % kv_heads).to(tl.int64)
    offs_g = tl.arange(0, GROUP_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, DIM)
    g_ok = offs_g < group
    heads = hk * group + offs_g  # query heads of this KV head's group
    q = tl.load(q_ptr + b * sq_b + heads[:, None] * sq_h + offs_d[None, :], mask=g_ok[:, None], other=0.0)
    k_base = k_ptr + b * sk_b + hk * sk_h
    v_base = v_ptr + b * sv_b + hk * sv_h
    start = split * split_len
    end = tl.minimum(start + split_len, kv_len)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM], tl.float32)
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < end
        kt = tl.load(k_base + cols[None, :] * sk_s + offs_d[:, None], mask=col_ok[None, :], other=0.0)
        qk = tl.dot(q, kt) * sm_scale  # [GROUP_PAD, BLOCK_N] fp32
        qk = tl.where(col_ok[None, :], qk, float("-inf"))
        # The first block of a non-empty split has a valid key, so m_new is finite from then on.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * sv_s + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    if NUM_SPLITS == 1:
        out = acc / l_i[:, None]
        tl.store(o_ptr + b * so_b + heads[:, None] * so_h + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=g_ok[:, None])
    else:
        # Partials laid out [batch, q_heads, NUM_SPLITS] (m, l) and [..., DIM] (acc), contiguous.
        row = (b * kv_heads * group + heads) * NUM_SPLITS + split
        tl.store(m_ptr + row, m_i, mask=g_ok)
        tl.store(l_ptr + row, l_i, mask=g_ok)
        tl.store(acc_ptr + row[:, None] * DIM + offs_d[None, :], acc, mask=g_ok[:, None])


@triton.jit
def _gqa_decode_combine_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, q_heads, so_b, so_h,
                               DIM: tl.constexpr, NUM_SPLITS: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    b = bh // q_heads
    h = bh % q_heads
    offs_s = tl.arange(0, NUM_SPLITS)
    offs_d = tl.arange(0, DIM)
    row = bh * NUM_SPLITS + offs_s
    m = tl.load(m_ptr + row)  # empty splits hold m = -inf, l = 0, acc = 0
    l = tl.load(l_ptr + row)
    acc = tl.load(acc_ptr + row[:, None] * DIM + offs_d[None, :])
    m_all = tl.max(m, 0)
    w = tl.exp(m - m_all)
    num = tl.sum(acc * w[:, None], 0)
    den = tl.sum(l * w, 0)
    tl.store(o_ptr + b * so_b + h * so_h + offs_d, (num / den).to(o_ptr.dtype.element_ty))


def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor) -> None:
    batch, q_heads, dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"q_heads {q_heads} is not a multiple of kv_heads {kv_heads}")
    if dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"head dim {dim} not supported (16, 32, 64, 128 or 256)")
    if batch == 0 or kv_len == 0:
        return
    # The kernels assume the head dim is contiguous (vector loads along D).
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    group = q_heads // kv_heads
    block_n, splits = CONFIG["BLOCK_N"], _splits(batch, kv_heads, kv_len, q.device)
    # Each split covers a whole number of blocks; trailing splits may be empty (combine skips them).
    split_len = triton.cdiv(triton.cdiv(kv_len, splits), block_n) * block_n
    if splits > 1:  # one allocation for the partials: (m, l, acc) per (batch, q head, split)
        part = torch.empty(batch * q_heads * splits * (dim + 2), device=q.device, dtype=torch.float32)
        rows = batch * q_heads * splits
        m, l, acc = part[:rows], part[rows:2 * rows], part[2 * rows:]
    else:
        m = l = acc = o  # unused: phase 1 writes o directly
    _gqa_decode_split_kernel[(splits, batch * kv_heads)](
        q, k, v, o, m, l, acc, kv_len, kv_heads, group, split_len, 1.0 / math.sqrt(dim),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1),
        DIM=dim, GROUP_PAD=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, NUM_SPLITS=splits,
        num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
    if splits > 1:
        _gqa_decode_combine_kernel[(batch * q_heads,)](m, l, acc, o, q_heads, o.stride(0), o.stride(1),
                                                      DIM=dim, NUM_SPLITS=splits, num_warps=4)
