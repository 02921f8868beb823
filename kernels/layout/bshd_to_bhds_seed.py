"""Seed x0 for layout_bshd_to_bhds: y[b, h, d, s] = x[b, s, h, d].

Viewed as x [batch, seq, heads*dim] -> y [batch, heads*dim, seq], this is a batched 2-D transpose:
each program loads a BLOCK_R x BLOCK_C tile (coalesced along heads*dim), transposes it in
registers (`tl.trans`) and stores it coalesced along seq; tiles run in GROUP-swizzled order.
"""
import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK_R=64, BLOCK_C=64, GROUP=8, TRANS=True, STREAM=False, num_warps=4, num_stages=1, TMA=False)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    BLOCK_R=[16, 32, 64, 128],
    BLOCK_C=[16, 32, 64, 128],
    GROUP=[1, 4, 8, 16],  # row tiles per group: programs of a group share source lines in L2
    TRANS=[True, False],  # tl.trans the tile so the store is coalesced along the output row
    STREAM=[False, True],  # evict_first loads, .cs stores: data touched once stays out of L2
    num_warps=[1, 2, 4, 8],
    num_stages=[1, 2, 3],
    TMA=[False, True],  # tiles in and out through TMA descriptors ([nb, R, C] -> [nb, C, R]); pointers where TMA can't
)


@triton.jit
def _grouped_tile(R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, GROUP: tl.constexpr):
    """This program's (row tile, column tile) in grouped order: GROUP consecutive row tiles sweep the
    column tiles together, so programs of a group share source lines in L2."""
    pid = tl.program_id(0)
    n_c = tl.cdiv(C, BLOCK_C)
    in_group = GROUP * n_c
    first_r = (pid // in_group) * GROUP
    size = tl.minimum(tl.cdiv(R, BLOCK_R) - first_r, GROUP)
    return first_r + (pid % in_group) % size, (pid % in_group) // size


@triton.jit
def _batched_transpose_kernel(x_ptr, y_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                              GROUP: tl.constexpr, TRANS: tl.constexpr, STREAM: tl.constexpr):
    """y[b, c, r] = x[b, r, c] for one BLOCK_R x BLOCK_C tile; program_id(1) = b."""
    pid_r, pid_c = _grouped_tile(R, C, BLOCK_R, BLOCK_C, GROUP)
    base = tl.program_id(1).to(tl.int64) * R * C
    offs_r = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    offs_c = (pid_c * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask = (offs_r[:, None] < R) & (offs_c[None, :] < C)
    EVICT: tl.constexpr = "evict_first" if STREAM else ""  # "" = the default: STREAM=False is the plain load/store
    CACHE: tl.constexpr = ".cs" if STREAM else ""
    tile = tl.load(x_ptr + base + offs_r[:, None] * C + offs_c[None, :], mask=mask, eviction_policy=EVICT)
    if TRANS:
        mask_t = (offs_c[:, None] < C) & (offs_r[None, :] < R)
        tl.store(y_ptr + base + offs_c[:, None] * R + offs_r[None, :], tl.trans(tile), mask=mask_t, cache_modifier=CACHE)
    else:
        tl.store(y_ptr + base + offs_c[None, :] * R + offs_r[:, None], tile, mask=mask, cache_modifier=CACHE)


@triton.jit
def _transpose_tma_kernel(x_desc, y_desc, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, GROUP: tl.constexpr):
    """TMA: the tile comes in as a [1, BLOCK_R, BLOCK_C] box of x [nb, R, C] (zeros past the edges) and
    leaves as a [1, BLOCK_C, BLOCK_R] box of y [nb, C, R] (clipped at the edges)."""
    pid_r, pid_c = _grouped_tile(R, C, BLOCK_R, BLOCK_C, GROUP)
    b = tl.program_id(1)
    box = tl.reshape(x_desc.load([b, pid_r * BLOCK_R, pid_c * BLOCK_C]), [BLOCK_R, BLOCK_C])
    y_desc.store([b, pid_c * BLOCK_C, pid_r * BLOCK_R], tl.reshape(tl.trans(box), [1, BLOCK_C, BLOCK_R]))


def _tma_fits(x: torch.Tensor, y: torch.Tensor, r: int, c: int) -> bool:
    """TMA's rules for the [nb, r, c] and [nb, c, r] views (dense, as the pointer path assumes too):
    16-byte aligned starts (storages are) and rows, boxes of at least 16 bytes along the inner dim."""
    isz = x.element_size()
    return (not (x.storage_offset() | y.storage_offset()) * isz % 16 and not (r * isz) % 16 and not (c * isz) % 16
            and min(CONFIG["BLOCK_R"], CONFIG["BLOCK_C"]) * isz >= 16)


def _launch(x: torch.Tensor, y: torch.Tensor, nb: int, r: int, c: int) -> None:
    if nb * r * c == 0:
        return
    grid = (triton.cdiv(r, CONFIG["BLOCK_R"]) * triton.cdiv(c, CONFIG["BLOCK_C"]), nb)
    if CONFIG.get("TMA") and _tma_fits(x, y, r, c):  # absent in older lineages: off
        br, bc = CONFIG["BLOCK_R"], CONFIG["BLOCK_C"]
        x_desc = TensorDescriptor(x, [nb, r, c], [r * c, c, 1], [1, br, bc])
        y_desc = TensorDescriptor(y, [nb, c, r], [r * c, r, 1], [1, bc, br])
        _transpose_tma_kernel[grid](x_desc, y_desc, r, c, BLOCK_R=br, BLOCK_C=bc, GROUP=CONFIG["GROUP"],
                                    num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
        return
    _batched_transpose_kernel[grid](x, y, r, c, BLOCK_R=CONFIG["BLOCK_R"], BLOCK_C=CONFIG["BLOCK_C"],
                                    GROUP=CONFIG["GROUP"], TRANS=CONFIG["TRANS"], STREAM=CONFIG["STREAM"],
                                    num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])


def run(x: torch.Tensor, y: torch.Tensor) -> None:
    batch, seq, heads, dim = x.shape
    _launch(x, y, batch, seq, heads * dim)
