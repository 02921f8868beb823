"""Seed x0 for grammar_bitmask: xgrammar's apply_token_bitmask_inplace semantics.

One program per (row, block of BLOCK_SIZE tokens): unpack the 32-bit words that cover the block
and write -inf where a bit is 0. Masked store only: allowed logits are never read or rewritten.
Past the seed's point (TUNABLES): RMW, a persistent grid, skipping all-ones blocks, word-wise
unpacking, WORD_TILE (one predicate per word, so stores stay 16-byte vectors) and AUTO_BLOCK
(the block size chosen per call so that small batches still fill the SMs), RMW_MIN_ROWS (RMW from a
row count on, the masked store below it).
"""
import torch
import triton
import triton.language as tl

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK_SIZE=4096, num_warps=8, num_stages=1, RMW=True, PERSISTENT=False, PROGRAMS_PER_SM=1, SKIP_ONES=False, BROADCAST_WORDS=False, WORD_TILE=True, AUTO_BLOCK=True, RMW_MIN_ROWS=32)
# Allowed values per knob (the heuristic's search space); a knob absent from CONFIG = its first value.
TUNABLES = dict(
    BLOCK_SIZE=[128, 256, 512, 1024, 2048, 4096, 8192],
    num_warps=[1, 2, 4, 8, 16],
    num_stages=[1, 2, 3],
    RMW=[False, True],  # read-modify-write the whole block instead of a masked store
    PERSISTENT=[False, True],  # a fixed grid of PROGRAMS_PER_SM x #SMs programs loops over the blocks
    PROGRAMS_PER_SM=[1, 2, 4, 8],  # persistent grid size per SM (CPU: per one of 4 pretend SMs)
    SKIP_ONES=[False, True],  # a block whose words are all -1 (every token allowed) issues no store
    BROADCAST_WORDS=[False, True],  # load each 32-bit word once and expand it to 32 lanes (xgrammar's
    # kernel does this), instead of one gathered word load per token
    WORD_TILE=[False, True],  # a [words, 32] tile with one predicate per word: all-ones words issue nothing,
    # all-zeros words one full-width -inf store, mixed words per RMW (read + full store) or a masked store.
    # Per-word predicates keep 16-byte vector stores where a per-token mask forces one store per logit.
    AUTO_BLOCK=[False, True],  # halve BLOCK_SIZE per call (down to 1024) until the grid covers every SM once:
    # wide blocks for big batches, enough programs at batch 1 (one 150k-vocab row is 38 blocks of 4096)
    RMW_MIN_ROWS=[0, 16, 32, 64],  # RMW only from this many rows: at a few rows the kernel is latency-bound and
    # the read before each write lengthens the chain (H100: B1 5.1 us masked vs 5.8 RMW; B40 17.1 vs 11.2)
)


def _knob(name):
    return CONFIG.get(name, TUNABLES[name][0])


@triton.jit
def _bitmask_store(ptrs, blocked, in_vocab, BLOCK_SIZE: tl.constexpr, RMW: tl.constexpr):
    if RMW:
        vals = tl.load(ptrs, mask=in_vocab)
        vals = tl.where(blocked, -float("inf"), vals)
        tl.store(ptrs, vals, mask=in_vocab)
    else:
        tl.store(ptrs, tl.full([BLOCK_SIZE], -float("inf"), ptrs.dtype.element_ty), mask=in_vocab & blocked)


@triton.jit
def _block_words(bitmask_ptr, row, vocab, bitmask_stride, tile, BLOCK_SIZE: tl.constexpr):
    """The BLOCK_SIZE // 32 bitmask words of token block `tile` (-1 past the last word) and their indices."""
    w_offs = tile * (BLOCK_SIZE // 32) + tl.arange(0, BLOCK_SIZE // 32)
    return tl.load(bitmask_ptr + row * bitmask_stride + w_offs, mask=w_offs < tl.cdiv(vocab, 32), other=-1), w_offs


@triton.jit
def _any_blocked(words):
    """SKIP_ONES: grammars allow most of the vocabulary, so many blocks are all -1 words."""
    return tl.sum((words != -1).to(tl.int32), 0) > 0


@triton.jit
def _bitmask_word_tile(logits_ptr, bitmask_ptr, row, vocab, logits_stride, bitmask_stride, tile,
                       BLOCK_SIZE: tl.constexpr, RMW: tl.constexpr, SKIP_ONES: tl.constexpr):
    """WORD_TILE: tokens [tile*BLOCK_SIZE, +BLOCK_SIZE) as BLOCK_SIZE//32 words x 32 bits."""
    words, w_offs = _block_words(bitmask_ptr, row, vocab, bitmask_stride, tile, BLOCK_SIZE)
    offs = w_offs[:, None] * 32 + tl.arange(0, 32)[None, :]
    in_vocab = offs < vocab
    ptrs = logits_ptr + row * logits_stride + offs
    blocked = ((words[:, None] >> tl.arange(0, 32)[None, :]) & 1) == 0
    touched = in_vocab & (words != -1)[:, None]  # constant along a word: the stores stay vectorised
    mixed = touched & (words != 0)[:, None]
    if SKIP_ONES:
        if _any_blocked(words):
            _word_tile_store(ptrs, words, blocked, touched, mixed, BLOCK_SIZE, RMW)
    else:
        _word_tile_store(ptrs, words, blocked, touched, mixed, BLOCK_SIZE, RMW)


@triton.jit
def _word_tile_store(ptrs, words, blocked, touched, mixed, BLOCK_SIZE: tl.constexpr, RMW: tl.constexpr):
    if RMW:
        vals = tl.load(ptrs, mask=mixed)  # only mixed words are read; all-zeros words need no data
        tl.store(ptrs, tl.where(blocked, -float("inf"), vals), mask=touched)
    else:
        inf = tl.full([BLOCK_SIZE // 32, 32], -float("inf"), ptrs.dtype.element_ty)
        tl.store(ptrs, inf, mask=touched & (words == 0)[:, None])
        tl.store(ptrs, inf, mask=mixed & blocked)


@triton.jit
def _bitmask_block(logits_ptr, bitmask_ptr, indices_ptr, vocab, logits_stride, bitmask_stride, i, n_blocks,
                   BLOCK_SIZE: tl.constexpr, RMW: tl.constexpr, SKIP_ONES: tl.constexpr,
                   BROADCAST_WORDS: tl.constexpr, WORD_TILE: tl.constexpr):
    """Mask block i = (index row i // n_blocks, token block i % n_blocks)."""
    row = tl.load(indices_ptr + i // n_blocks).to(tl.int64)
    if WORD_TILE:
        _bitmask_word_tile(logits_ptr, bitmask_ptr, row, vocab, logits_stride, bitmask_stride, i % n_blocks,
                           BLOCK_SIZE, RMW, SKIP_ONES)
    else:
        offs = (i % n_blocks) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        in_vocab = offs < vocab
        if BROADCAST_WORDS:
            words, _ = _block_words(bitmask_ptr, row, vocab, bitmask_stride, i % n_blocks, BLOCK_SIZE)
            bits = (words[:, None] >> tl.arange(0, 32)[None, :]) & 1
            blocked = tl.reshape(bits == 0, [BLOCK_SIZE])  # order-preserving: token w*32+b is word w, bit b
        else:
            words = tl.load(bitmask_ptr + row * bitmask_stride + offs // 32, mask=in_vocab, other=-1)
            blocked = ((words >> (offs % 32)) & 1) == 0
        ptrs = logits_ptr + row * logits_stride + offs
        if SKIP_ONES:
            if _any_blocked(words):
                _bitmask_store(ptrs, blocked, in_vocab, BLOCK_SIZE, RMW)
        else:
            _bitmask_store(ptrs, blocked, in_vocab, BLOCK_SIZE, RMW)


@triton.jit
def _bitmask_kernel(logits_ptr, bitmask_ptr, indices_ptr, vocab, logits_stride, bitmask_stride, n_blocks, n_tiles,
                    BLOCK_SIZE: tl.constexpr, RMW: tl.constexpr, PERSISTENT: tl.constexpr, SKIP_ONES: tl.constexpr,
                    BROADCAST_WORDS: tl.constexpr, WORD_TILE: tl.constexpr):
    if PERSISTENT:
        for i in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
            _bitmask_block(logits_ptr, bitmask_ptr, indices_ptr, vocab, logits_stride, bitmask_stride, i, n_blocks,
                           BLOCK_SIZE, RMW, SKIP_ONES, BROADCAST_WORDS, WORD_TILE)
    else:
        _bitmask_block(logits_ptr, bitmask_ptr, indices_ptr, vocab, logits_stride, bitmask_stride,
                       tl.program_id(0), n_blocks, BLOCK_SIZE, RMW, SKIP_ONES, BROADCAST_WORDS, WORD_TILE)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a small grid still exercises the loop


def run(logits: torch.Tensor, bitmask: torch.Tensor, indices: torch.Tensor) -> None:
    vocab = logits.shape[1]
    n = indices.shape[0]
    if n == 0:
        return
    block = CONFIG["BLOCK_SIZE"]
    # The SM count only where a knob uses it: it is a device query on every call.
    sms = _num_sms(logits.device) if _knob("AUTO_BLOCK") or _knob("PERSISTENT") else 0
    if _knob("AUTO_BLOCK"):
        while block > 1024 and n * triton.cdiv(vocab, block) < sms:
            block //= 2
    n_blocks = triton.cdiv(vocab, block)
    n_tiles = n * n_blocks
    grid = (min(n_tiles, _knob("PROGRAMS_PER_SM") * sms) if _knob("PERSISTENT") else n_tiles,)
    _bitmask_kernel[grid](logits, bitmask, indices, vocab, logits.stride(0), bitmask.stride(0), n_blocks, n_tiles,
                          BLOCK_SIZE=block, RMW=CONFIG["RMW"] and n >= _knob("RMW_MIN_ROWS"), PERSISTENT=_knob("PERSISTENT"),
                          SKIP_ONES=_knob("SKIP_ONES"), BROADCAST_WORDS=_knob("BROADCAST_WORDS"), WORD_TILE=_knob("WORD_TILE"),
                          num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
