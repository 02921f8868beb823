"""Peer for grammar_bitmask: xgrammar's CUDA kernel (JIT-built by xgrammar on first use; needs nvcc).
Evaluate with `avo eval grammar_bitmask kernels/peers/bitmask_xgrammar_cuda.py --peer`."""
from xgrammar.kernels.apply_token_bitmask_inplace_cuda import apply_token_bitmask_inplace_cuda


def run(logits, bitmask, indices):
    apply_token_bitmask_inplace_cuda(logits, bitmask, indices=indices)
