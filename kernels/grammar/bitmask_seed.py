"""Seed x0 for grammar_bitmask: xgrammar's apply_token_bitmask_inplace semantics.

One program per (row, block of BLOCK_SIZE tokens): unpack the 32-bit words that cover the block
and write -inf where a bit is 0. Masked store only: allowed logits are never read or rewritten.
"""
import torch
import triton
import triton.language as tl

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK_SIZE=256, num_warps=4, num_stages=1, RMW=False)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    BLOCK_SIZE=[128, 256, 512, 1024, 2048, 4096, 8192],
    num_warps=[1, 2, 4, 8, 16],
    num_stages=[1, 2, 3],
    RMW=[False, True],  # read-modify-write the whole block instead of a masked store
)


@triton.jit
def _bitmask_kernel(logits_ptr, bitmask_ptr, indices_ptr, vocab, logits_stride, bitmask_stride,
                    BLOCK_SIZE: tl.constexpr, RMW: tl.constexpr):
    row = tl.load(indices_ptr + tl.program_id(0)).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    in_vocab = offs < vocab
    words = tl.load(bitmask_ptr + row * bitmask_stride + offs // 32, mask=in_vocab, other=-1)
    blocked = ((words >> (offs % 32)) & 1) == 0
    ptrs = logits_ptr + row * logits_stride + offs
    if RMW:
        vals = tl.load(ptrs, mask=in_vocab)
        vals = tl.where(blocked, -float("inf"), vals)
        tl.store(ptrs, vals, mask=in_vocab)
    else:
        tl.store(ptrs, tl.full([BLOCK_SIZE], -float("inf"), logits_ptr.dtype.element_ty), mask=in_vocab & blocked)


def run(logits: torch.Tensor, bitmask: torch.Tensor, indices: torch.Tensor) -> None:
    vocab = logits.shape[1]
    n = indices.shape[0]
    if n == 0:
        return
    grid = (n, triton.cdiv(vocab, CONFIG["BLOCK_SIZE"]))
    _bitmask_kernel[grid](logits, bitmask, indices, vocab, logits.stride(0), bitmask.stride(0),
                          BLOCK_SIZE=CONFIG["BLOCK_SIZE"], RMW=CONFIG["RMW"],
                          num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
