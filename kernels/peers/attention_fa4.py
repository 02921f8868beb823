"""Peer for attention_mha_fwd: FlashAttention-4's CuTe DSL kernels (`pip install flash-attn-4`,
which has a Hopper forward, FlashAttentionForwardSm90). The task's tensors are [B, H, S, D]; FA
takes [B, S, H, D], so q/k/v go in as transposed views (last dim contiguous, no copy) and the
output is written straight into `o` through the same view, so its time has no extra copy of O.
Evaluate with `avo eval attention_mha_fwd kernels/peers/attention_fa4.py --peer`, or time it beside
the others with `scripts/bench_attention.py --peer attention_mha_fwd=kernels/peers/attention_fa4.py`."""
from flash_attn.cute.interface import _flash_attn_fwd


def run(q, k, v, causal, o):
    # _flash_attn_fwd is the function flash_attn_func wraps (minus autograd); it takes `out=`.
    _flash_attn_fwd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=bool(causal),
                    out=o.transpose(1, 2))
