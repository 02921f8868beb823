"""Peer for attention_mha_fwd: torch SDPA pinned to the CUDNN_ATTENTION backend. The copy into the
pre-allocated output (destination-passing style) adds one write of O to its time.
Evaluate with `avo eval attention_mha_fwd kernels/peers/attention_sdpa_cudnn.py --peer`."""
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def run(q, k, v, causal, o):
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        o.copy_(F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)))
