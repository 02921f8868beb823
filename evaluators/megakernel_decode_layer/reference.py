import math

import torch

RMS_EPS = 1e-5  # Llama-3


def _rms(t, w):
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + RMS_EPS) * w


def _rope(t, cos, sin):
    """HF rotate-half RoPE on the last axis: t*cos + cat(-t[D/2:], t[:D/2])*sin."""
    half = t.shape[-1] // 2
    return t * cos + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * sin


def run(x, attn_norm_w, wq, wk, wv, wo, mlp_norm_w, w_gate, w_up, w_down, k_cache, v_cache,
        rope_cos, rope_sin, kv_len):
    """Reference: one Llama decoder layer for one new token per sequence (plain PyTorch; the
    harness gives it float32 copies). The cache holds positions 0..kv_len-1; the new token attends
    to them and to itself. Returns (out, k_new, v_new): k_new (roped) and v_new are what the engine
    appends to the cache at position kv_len."""
    batch, hidden = x.shape
    kv_heads, head_dim = k_cache.shape[1], k_cache.shape[3]
    q_heads = wq.shape[0] // head_dim
    rope_cos, rope_sin = rope_cos.to(x.dtype), rope_sin.to(x.dtype)  # the baseline runs in the model dtype
    h = _rms(x, attn_norm_w)
    q = _rope((h @ wq.T).view(batch, q_heads, head_dim), rope_cos, rope_sin)
    k = _rope((h @ wk.T).view(batch, kv_heads, head_dim), rope_cos, rope_sin)
    v = (h @ wv.T).view(batch, kv_heads, head_dim)
    keys = torch.cat([k_cache[:, :, :kv_len], k[:, :, None]], dim=2)  # [B, KVH, L+1, D]
    vals = torch.cat([v_cache[:, :, :kv_len], v[:, :, None]], dim=2)
    group = q_heads // kv_heads
    keys, vals = keys.repeat_interleave(group, dim=1), vals.repeat_interleave(group, dim=1)
    scores = (q[:, :, None, :] @ keys.transpose(-1, -2)) / math.sqrt(head_dim)  # [B, QH, 1, L+1]
    attn = (torch.softmax(scores, dim=-1) @ vals).reshape(batch, q_heads * head_dim)
    h2 = x + attn @ wo.T
    m = _rms(h2, mlp_norm_w)
    out = h2 + (torch.nn.functional.silu(m @ w_gate.T) * (m @ w_up.T)) @ w_down.T
    return out, k, v


def make_inputs(axes, dtypes, gen, device):
    """Trained-model magnitudes: weights ~ N(0, 1/fan_in) so activations stay O(1), norm weights
    near 1, cache entries N(0, 1), RoPE cos/sin of a random position (theta 500000, Llama-3)."""
    def randn(shape, name, scale=1.0, shift=0.0):
        t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * scale + shift
        return t.to(dtypes[name])
    b, hid, qd, kvd, mlp = axes["batch"], axes["hidden"], axes["q_dim"], axes["kv_dim"], axes["mlp"]
    kvh, d, cap = axes["kv_heads"], axes["head_dim"], axes["max_kv"]
    pos = int(torch.randint(0, 8192, (1,), generator=gen, device=device).item())
    inv_freq = 500000.0 ** (-torch.arange(0, d, 2, device=device, dtype=torch.float64) / d)
    ang = torch.cat([pos * inv_freq, pos * inv_freq])
    return {
        "x": randn((b, hid), "x"),
        "attn_norm_w": randn((hid,), "attn_norm_w", 0.1, 1.0),
        "wq": randn((qd, hid), "wq", hid ** -0.5), "wk": randn((kvd, hid), "wk", hid ** -0.5),
        "wv": randn((kvd, hid), "wv", hid ** -0.5), "wo": randn((hid, qd), "wo", qd ** -0.5),
        "mlp_norm_w": randn((hid,), "mlp_norm_w", 0.1, 1.0),
        "w_gate": randn((mlp, hid), "w_gate", hid ** -0.5), "w_up": randn((mlp, hid), "w_up", hid ** -0.5),
        "w_down": randn((hid, mlp), "w_down", mlp ** -0.5),
        "k_cache": randn((b, kvh, cap, d), "k_cache"), "v_cache": randn((b, kvh, cap, d), "v_cache"),
        "rope_cos": ang.cos().to(dtypes["rope_cos"]), "rope_sin": ang.sin().to(dtypes["rope_sin"]),
    }
