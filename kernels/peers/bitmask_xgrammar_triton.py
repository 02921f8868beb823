"""Peer for grammar_bitmask: xgrammar's own Triton kernel (PyPI `xgrammar`). Evaluate with
`avo eval grammar_bitmask kernels/peers/bitmask_xgrammar_triton.py --peer`."""
from xgrammar.kernels.apply_token_bitmask_inplace_triton import apply_token_bitmask_inplace_triton


def run(logits, bitmask, indices):
    apply_token_bitmask_inplace_triton(logits, bitmask, indices=indices)
