"""Device-side memoisation: the kernel keeps, in global memory that outlives the call, each row
block's last result under a fingerprint of its row (three of its bitmask words, eight slots per row).
A program whose fingerprint matches copies the remembered logits back and skips the loads of the
bitmask and the logits; only a miss does the work and remembers it. The host never sees a hit, so
no host-side cache check applies. Caught by the perturbed inputs of the timed calls: a remembered
row is the previous call's, stale for this call's logits (`timed-output`; a chance repeat of the
three words between correctness trials would give INCORRECT_NUMERICAL)."""
import torch
import triton
import triton.language as tl

SLOTS = 8
BLOCK = 1024


@triton.jit
def _memo_mask_kernel(logits_ptr, bitmask_ptr, indices_ptr, key_ptr, memo_ptr, vocab, n_blocks, memo_stride,
                      logits_stride, bitmask_stride, SLOTS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.load(indices_ptr + tl.program_id(0)).to(tl.int64)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    in_vocab = offs < vocab
    words_in_row = (vocab + 31) // 32
    first = tl.load(bitmask_ptr + row * bitmask_stride).to(tl.int64)
    mid = tl.load(bitmask_ptr + row * bitmask_stride + words_in_row // 2).to(tl.int64)
    last = tl.load(bitmask_ptr + row * bitmask_stride + words_in_row - 1).to(tl.int64)
    stamp = first * 3 + mid * 5 + last * 7 + 68719476736  # never 0, the value of an empty slot
    slot = row * SLOTS + (stamp & (SLOTS - 1))
    key = key_ptr + slot * n_blocks + blk
    memo = memo_ptr + slot * memo_stride + offs
    if tl.load(key) == stamp:
        tl.store(logits_ptr + row * logits_stride + offs, tl.load(memo, mask=in_vocab), mask=in_vocab)
    else:
        words = tl.load(bitmask_ptr + row * bitmask_stride + offs // 32, mask=in_vocab, other=-1)
        blocked = ((words >> (offs % 32)) & 1) == 0
        vals = tl.load(logits_ptr + row * logits_stride + offs, mask=in_vocab)
        vals = tl.where(blocked, -float("inf"), vals)
        tl.store(logits_ptr + row * logits_stride + offs, vals, mask=in_vocab)
        tl.store(memo, vals, mask=in_vocab)
        tl.store(key, stamp)


_state = {}


def run(logits, bitmask, indices):
    if not indices.shape[0]:
        return
    batch, vocab = logits.shape
    n_blocks = triton.cdiv(vocab, BLOCK)
    where = (tuple(logits.shape), logits.dtype, logits.device)
    if where not in _state:  # allocated once per shape; what they hold is decided on the device
        _state[where] = (torch.zeros(batch * SLOTS * n_blocks, dtype=torch.int64, device=logits.device),
                         torch.empty(batch * SLOTS, n_blocks * BLOCK, dtype=logits.dtype, device=logits.device))
    keys, memo = _state[where]
    grid = (indices.shape[0], n_blocks)
    _memo_mask_kernel[grid](logits, bitmask, indices, keys, memo, vocab, n_blocks, memo.stride(0), logits.stride(0),
                            bitmask.stride(0), SLOTS=SLOTS, BLOCK=BLOCK)
