"""Seed x0 for layout_bshd_to_bhsd: y[b, h, s, d] = x[b, s, h, d].

Every dim-row is contiguous in both layouts, so this is a row gather: one program copies a
BLOCK_S x BLOCK_D tile of rows (s0..s0+BLOCK_S, one head) from stride heads*dim to stride dim,
looping over dim in BLOCK_D chunks. H_FAST orders programs head-fastest (neighbouring programs
read neighbouring source memory) instead of seq-tile-fastest (neighbouring writes). TMA moves each
[BLOCK_S, BLOCK_D] box with the Hopper copy engine through host tensor descriptors (x as [B, S, H*D],
y as [B*H, S, D]; rows past S load as zeros and are not stored), where TMA's 16-byte rules hold.
"""
import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK_S=16, BLOCK_D=128, H_FAST=True, STREAM=False, num_warps=4, num_stages=1, TMA=False)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    BLOCK_S=[1, 4, 8, 16, 32, 64, 128, 256],
    BLOCK_D=[16, 32, 64, 128, 256],
    H_FAST=[True, False],
    STREAM=[False, True],  # evict_first loads, .cs stores: data touched once stays out of L2
    num_warps=[1, 2, 4, 8],
    num_stages=[1, 2, 3],
    TMA=[False, True],  # boxes through TMA descriptors (no per-thread addresses); the pointer path where TMA can't
)


@triton.jit
def _head_and_tile(S, H, BLOCK_S: tl.constexpr, H_FAST: tl.constexpr):
    """This program's (head, seq tile): head-fastest or seq-tile-fastest order."""
    pid = tl.program_id(0)
    if H_FAST:
        return pid % H, pid // H
    else:
        return pid // tl.cdiv(S, BLOCK_S), pid % tl.cdiv(S, BLOCK_S)


@triton.jit
def _bshd_to_bhsd_kernel(x_ptr, y_ptr, S, H, D, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                         H_FAST: tl.constexpr, STREAM: tl.constexpr):
    h, s_tile = _head_and_tile(S, H, BLOCK_S, H_FAST)
    b = tl.program_id(1).to(tl.int64)
    offs_s = (s_tile * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    src = x_ptr + ((b * S + offs_s[:, None]) * H + h) * D
    dst = y_ptr + ((b * H + h) * S + offs_s[:, None]) * D
    EVICT: tl.constexpr = "evict_first" if STREAM else ""  # "" = the default: STREAM=False is the plain load/store
    CACHE: tl.constexpr = ".cs" if STREAM else ""
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = (offs_s[:, None] < S) & (offs_d[None, :] < D)
        tl.store(dst + offs_d[None, :], tl.load(src + offs_d[None, :], mask=mask, eviction_policy=EVICT),
                 mask=mask, cache_modifier=CACHE)


@triton.jit
def _bshd_to_bhsd_tma_kernel(x_desc, y_desc, S, H, D, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                             H_FAST: tl.constexpr):
    h, s_tile = _head_and_tile(S, H, BLOCK_S, H_FAST)
    b = tl.program_id(1)
    for d0 in range(0, D, BLOCK_D):
        y_desc.store([b * H + h, s_tile * BLOCK_S, d0], x_desc.load([b, s_tile * BLOCK_S, h * D + d0]))


def _tma_block_d(x: torch.Tensor, y: torch.Tensor):
    """The dim chunk TMA can move (a power of two dividing D, >= 16 bytes, <= BLOCK_D), or None where
    TMA's rules fail: dense row-major tensors (the descriptors' views), 16-byte aligned starts and rows."""
    isz, (batch, seq, heads, dim) = x.element_size(), x.shape
    dense = x.stride() == (seq * heads * dim, heads * dim, dim, 1) and y.stride() == (heads * seq * dim, seq * dim, dim, 1)
    if not dense or (x.storage_offset() | y.storage_offset()) * isz % 16 or dim * isz % 16:  # storages: 16-aligned
        return None
    bd = CONFIG["BLOCK_D"]
    while bd * isz >= 16 and dim % bd:
        bd //= 2
    return bd if bd * isz >= 16 and bd <= 256 else None


def run(x: torch.Tensor, y: torch.Tensor) -> None:
    batch, seq, heads, dim = x.shape
    if x.numel() == 0:
        return
    bd = _tma_block_d(x, y) if CONFIG.get("TMA") else None  # absent in older lineages: off
    if bd is not None:
        bs = CONFIG["BLOCK_S"]
        x_desc = TensorDescriptor(x.view(batch, seq, heads * dim), [batch, seq, heads * dim],
                                  [seq * heads * dim, heads * dim, 1], [1, bs, bd])
        y_desc = TensorDescriptor(y.view(batch * heads, seq, dim), [batch * heads, seq, dim], [seq * dim, dim, 1],
                                  [1, bs, bd])
        _bshd_to_bhsd_tma_kernel[(triton.cdiv(seq, bs) * heads, batch)](
            x_desc, y_desc, seq, heads, dim, BLOCK_S=bs, BLOCK_D=bd, H_FAST=CONFIG["H_FAST"],
            num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
        return
    grid = (triton.cdiv(seq, CONFIG["BLOCK_S"]) * heads, batch)
    _bshd_to_bhsd_kernel[grid](x, y, seq, heads, dim, BLOCK_S=CONFIG["BLOCK_S"], BLOCK_D=CONFIG["BLOCK_D"],
                               H_FAST=CONFIG["H_FAST"], STREAM=CONFIG["STREAM"], num_warps=CONFIG["num_warps"],
                               num_stages=CONFIG["num_stages"])
