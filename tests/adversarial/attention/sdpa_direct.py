"""Calls the library that does the task: torch's fused attention. Static guard: forbidden call."""
import torch.nn.functional as F


def run(q, k, v, causal, o):
    o.copy_(F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal)))
