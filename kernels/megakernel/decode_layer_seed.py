"""Seed x0 for megakernel_decode_layer: one Llama decoder layer at decode as a sequence of six
Triton kernels (the evolution's job is to fuse them and to fill the GPU at batch 1):

  1. RMSNorm(x)                                  -> xn   (fp32 scratch)
  2. GEMV xn @ [wq; wk; wv]^T (three launches)    -> q, k, v (fp32 scratch)
  3. RoPE(q, k) + GQA decode attention over the cache + the new token (online softmax), writes
     k_new / v_new                                -> attn (fp32 scratch)
  4. GEMV attn @ wo^T + x                         -> h
  5. RMSNorm(h)                                   -> hn
  6. dual GEMV silu(hn @ w_gate^T) * (hn @ w_up^T) -> act; GEMV act @ w_down^T + h -> out

Activations stay fp32 between kernels (they are tiny next to the weights); every GEMV keeps the
whole batch in one program so each weight tile is read once.
"""
import math

import torch
import triton
import triton.language as tl

RMS_EPS = 1e-5

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(GEMV_BLOCK_N=16, GEMV_BLOCK_K=64, GEMV_WARPS=4, ATTN_BLOCK_KV=16, ATTN_WARPS=4, NORM_BLOCK=1024, num_stages=1)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    GEMV_BLOCK_N=[4, 8, 16, 32, 64],
    GEMV_BLOCK_K=[32, 64, 128, 256],
    GEMV_WARPS=[1, 2, 4, 8],
    ATTN_BLOCK_KV=[8, 16, 32, 64],
    ATTN_WARPS=[1, 2, 4, 8],
    NORM_BLOCK=[256, 512, 1024, 2048],
    num_stages=[1, 2, 3],
)


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, out_ptr, N, eps, BLOCK: tl.constexpr):
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
def _gemv_kernel(x_ptr, w_ptr, w2_ptr, res_ptr, out_ptr, B, N, K,
                 BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MODE: tl.constexpr):
    """out[b, n] = sum_k x[b, k] w[n, k]; MODE 1 adds res[b, n]; MODE 2 is silu(x w^T) * (x w2^T)."""
    offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_b = tl.arange(0, BLOCK_B)
    acc = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
    acc2 = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xt = tl.load(x_ptr + offs_b[:, None] * K + offs_k[None, :],
                     mask=(offs_b[:, None] < B) & (offs_k[None, :] < K), other=0.0).to(tl.float32)
        wmask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        wt = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=wmask, other=0.0).to(tl.float32)
        acc += tl.sum(xt[:, None, :] * wt[None, :, :], axis=2)
        if MODE == 2:
            wt2 = tl.load(w2_ptr + offs_n[:, None] * K + offs_k[None, :], mask=wmask, other=0.0).to(tl.float32)
            acc2 += tl.sum(xt[:, None, :] * wt2[None, :, :], axis=2)
    omask = (offs_b[:, None] < B) & (offs_n[None, :] < N)
    optrs = offs_b[:, None] * N + offs_n[None, :]
    if MODE == 1:
        acc += tl.load(res_ptr + optrs, mask=omask, other=0.0).to(tl.float32)
    if MODE == 2:
        acc = acc / (1.0 + tl.exp(-acc)) * acc2
    tl.store(out_ptr + optrs, acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _rope_attn_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, k_new_ptr, v_new_ptr, o_ptr,
                      kv_len, max_kv, KVH, D, GROUP, scale,
                      BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_KV: tl.constexpr):
    """One program per (sequence, kv head): its GROUP q heads attend to the cache and the new token."""
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    half = D // 2
    rot = tl.where(offs_d < half, offs_d + half, offs_d - half)  # rotate-half partner
    sign = tl.where(offs_d < half, -1.0, 1.0)
    cos = tl.load(cos_ptr + offs_d, mask=dmask, other=0.0)
    sin = tl.load(sin_ptr + offs_d, mask=dmask, other=0.0)
    kv_row = (b * KVH + kvh) * D
    k = tl.load(k_ptr + kv_row + offs_d, mask=dmask, other=0.0)
    k = k * cos + sign * tl.load(k_ptr + kv_row + rot, mask=dmask, other=0.0) * sin
    v = tl.load(v_ptr + kv_row + offs_d, mask=dmask, other=0.0)
    tl.store(k_new_ptr + kv_row + offs_d, k.to(k_new_ptr.dtype.element_ty), mask=dmask)
    tl.store(v_new_ptr + kv_row + offs_d, v.to(v_new_ptr.dtype.element_ty), mask=dmask)
    offs_g = tl.arange(0, BLOCK_G)
    qmask = (offs_g[:, None] < GROUP) & dmask[None, :]
    q_rows = (b * KVH * GROUP + kvh * GROUP + offs_g[:, None]) * D
    q = tl.load(q_ptr + q_rows + offs_d[None, :], mask=qmask, other=0.0)
    q = q * cos[None, :] + sign[None, :] * tl.load(q_ptr + q_rows + rot[None, :], mask=qmask, other=0.0) * sin[None, :]
    q = q * scale
    # The new token first: it is always attended to, so the running max starts finite.
    m_i = tl.sum(q * k[None, :], axis=1)
    l_i = tl.full([BLOCK_G], 1.0, tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32) + v[None, :]
    cache = (b * KVH + kvh) * max_kv * D
    for n0 in range(0, kv_len, BLOCK_KV):
        offs_n = n0 + tl.arange(0, BLOCK_KV)
        nmask = offs_n < kv_len
        tmask = nmask[:, None] & dmask[None, :]
        kt = tl.load(kc_ptr + cache + offs_n[:, None] * D + offs_d[None, :], mask=tmask, other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * kt[None, :, :], axis=2)
        s = tl.where(nmask[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        vt = tl.load(vc_ptr + cache + offs_n[:, None] * D + offs_d[None, :], mask=tmask, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * vt[None, :, :], axis=1)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    tl.store(o_ptr + q_rows + offs_d[None, :], acc / l_i[:, None], mask=qmask)


def _gemv(x, w, out, mode=0, res=None, w2=None):
    batch, k = x.shape
    n = w.shape[0]
    bn = CONFIG["GEMV_BLOCK_N"]
    _gemv_kernel[(triton.cdiv(n, bn),)](x, w, w if w2 is None else w2, out if res is None else res, out,
                                        batch, n, k, BLOCK_B=triton.next_power_of_2(batch), BLOCK_N=bn,
                                        BLOCK_K=CONFIG["GEMV_BLOCK_K"], MODE=mode,
                                        num_warps=CONFIG["GEMV_WARPS"], num_stages=CONFIG["num_stages"])


def _rmsnorm(x, w, out):
    _rmsnorm_kernel[(x.shape[0],)](x, w, out, x.shape[1], RMS_EPS, BLOCK=CONFIG["NORM_BLOCK"], num_warps=4)


def run(x, attn_norm_w, wq, wk, wv, wo, mlp_norm_w, w_gate, w_up, w_down, k_cache, v_cache,
        rope_cos, rope_sin, kv_len, out, k_new, v_new):
    batch, hidden = x.shape
    _, kv_heads, max_kv, head_dim = k_cache.shape
    q_heads = wq.shape[0] // head_dim
    f32 = dict(device=x.device, dtype=torch.float32)
    xn = torch.empty((batch, hidden), **f32)
    _rmsnorm(x, attn_norm_w, xn)
    q = torch.empty((batch, wq.shape[0]), **f32)
    k = torch.empty((batch, wk.shape[0]), **f32)
    v = torch.empty((batch, wv.shape[0]), **f32)
    _gemv(xn, wq, q)
    _gemv(xn, wk, k)
    _gemv(xn, wv, v)
    attn = torch.empty((batch, wq.shape[0]), **f32)
    group = q_heads // kv_heads
    _rope_attn_kernel[(batch, kv_heads)](q, k, v, rope_cos, rope_sin, k_cache, v_cache, k_new, v_new, attn,
                                         int(kv_len), max_kv, kv_heads, head_dim, group, 1.0 / math.sqrt(head_dim),
                                         BLOCK_G=triton.next_power_of_2(group),
                                         BLOCK_D=triton.next_power_of_2(head_dim),
                                         BLOCK_KV=CONFIG["ATTN_BLOCK_KV"], num_warps=CONFIG["ATTN_WARPS"],
                                         num_stages=CONFIG["num_stages"])
    h = torch.empty((batch, hidden), **f32)
    _gemv(attn, wo, h, mode=1, res=x)
    hn = torch.empty((batch, hidden), **f32)
    _rmsnorm(h, mlp_norm_w, hn)
    act = torch.empty((batch, w_gate.shape[0]), **f32)
    _gemv(hn, w_gate, act, mode=2, w2=w_up)
    _gemv(act, w_down, out, mode=1, res=h)
