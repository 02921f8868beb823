"""Seed x0 for layout_kv_paged: write k, v into a paged KV cache through a block table.

A (sequence, logical block) is one contiguous run of rows*kv_heads*head_dim elements in the
source and in its physical cache block, so each program copies one such run in BLOCK-element
chunks; KV_TOGETHER copies k and v in the same program (one table lookup, two streams). FLAT gives
each program one BLOCK-element chunk of a sequence's rows instead (grid: chunks x sequences, as
torch.compile's elementwise kernel does): every program does the same small amount of work, so no SM
is left with an extra long run at the end; each element finds its block in the (cached) table.
"""
import torch
import triton
import triton.language as tl

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK=1024, KV_TOGETHER=True, STREAM=False, num_warps=4, num_stages=1, FLAT=False)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    BLOCK=[256, 512, 1024, 2048, 4096],
    KV_TOGETHER=[True, False],
    STREAM=[False, True],  # k/v: evict_first loads, .cs stores: data touched once stays out of L2 (not the table)
    num_warps=[1, 2, 4, 8, 16],
    num_stages=[1, 2, 3],
    FLAT=[False, True],  # one BLOCK-element chunk per program (a balanced grid), not one whole cache block
)


@triton.jit
def _kv_paged_kernel(k_ptr, v_ptr, table_ptr, kc_ptr, vc_ptr, seq, block_size, blocks_per_seq, row_elems,
                     BLOCK: tl.constexpr, KV_TOGETHER: tl.constexpr, STREAM: tl.constexpr):
    """program_id(0) = logical block, (1) = sequence, (2) = 0 for k / 1 for v unless KV_TOGETHER."""
    j = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    phys = tl.load(table_ptr + b * blocks_per_seq + j).to(tl.int64)
    rows = tl.minimum(block_size, seq - j * block_size)
    n = rows * row_elems
    src = (b * seq + j * block_size) * row_elems
    dst = phys * block_size * row_elems
    EVICT: tl.constexpr = "evict_first" if STREAM else ""  # "" = the default: STREAM=False is the plain load/store
    CACHE: tl.constexpr = ".cs" if STREAM else ""
    for e0 in range(0, n, BLOCK):
        offs = e0 + tl.arange(0, BLOCK)
        mask = offs < n
        if KV_TOGETHER:
            tl.store(kc_ptr + dst + offs, tl.load(k_ptr + src + offs, mask=mask, eviction_policy=EVICT),
                     mask=mask, cache_modifier=CACHE)
            tl.store(vc_ptr + dst + offs, tl.load(v_ptr + src + offs, mask=mask, eviction_policy=EVICT),
                     mask=mask, cache_modifier=CACHE)
        elif tl.program_id(2) == 0:
            tl.store(kc_ptr + dst + offs, tl.load(k_ptr + src + offs, mask=mask, eviction_policy=EVICT),
                     mask=mask, cache_modifier=CACHE)
        else:
            tl.store(vc_ptr + dst + offs, tl.load(v_ptr + src + offs, mask=mask, eviction_policy=EVICT),
                     mask=mask, cache_modifier=CACHE)


@triton.jit
def _kv_paged_flat_kernel(k_ptr, v_ptr, table_ptr, kc_ptr, vc_ptr, seq, block_size, blocks_per_seq, row_elems,
                          BLOCK: tl.constexpr, STREAM: tl.constexpr):
    """program_id(0) = BLOCK-element chunk of one sequence's seq * row_elems elements, (1) = sequence."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < seq * row_elems
    run_len = block_size * row_elems  # elements of one cache block
    j = offs // run_len
    phys = tl.load(table_ptr + b * blocks_per_seq + j, mask=mask, other=0).to(tl.int64)
    dst = phys * run_len + (offs - j * run_len)
    src = b * seq * row_elems + offs
    EVICT: tl.constexpr = "evict_first" if STREAM else ""
    CACHE: tl.constexpr = ".cs" if STREAM else ""
    tl.store(kc_ptr + dst, tl.load(k_ptr + src, mask=mask, eviction_policy=EVICT), mask=mask, cache_modifier=CACHE)
    tl.store(vc_ptr + dst, tl.load(v_ptr + src, mask=mask, eviction_policy=EVICT), mask=mask, cache_modifier=CACHE)


def run(k: torch.Tensor, v: torch.Tensor, block_table: torch.Tensor, k_cache: torch.Tensor,
        v_cache: torch.Tensor) -> None:
    batch, seq, kv_heads, head_dim = k.shape
    block_size = k_cache.shape[1]
    blocks_per_seq = block_table.shape[1]
    if batch * seq == 0:
        return
    if CONFIG.get("FLAT"):
        _kv_paged_flat_kernel[(triton.cdiv(seq * kv_heads * head_dim, CONFIG["BLOCK"]), batch)](
            k, v, block_table, k_cache, v_cache, seq, block_size, blocks_per_seq, kv_heads * head_dim,
            BLOCK=CONFIG["BLOCK"], STREAM=CONFIG["STREAM"], num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
        return
    grid = (triton.cdiv(seq, block_size), batch, 1 if CONFIG["KV_TOGETHER"] else 2)
    _kv_paged_kernel[grid](k, v, block_table, k_cache, v_cache, seq, block_size, blocks_per_seq, kv_heads * head_dim,
                           BLOCK=CONFIG["BLOCK"], KV_TOGETHER=CONFIG["KV_TOGETHER"], STREAM=CONFIG["STREAM"],
                           num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
