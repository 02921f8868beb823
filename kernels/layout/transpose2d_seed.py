"""Seed x0 for layout_transpose2d: y = x^T for x [rows, cols], one tiled Triton transpose.

Each program loads a BLOCK_R x BLOCK_C tile (coalesced along cols), transposes it in registers
(`tl.trans`) and stores it coalesced along the output row; tiles run in GROUP-swizzled order.
"""
import torch
import triton
import triton.language as tl

# Current choice of every knob; the heuristic operator rewrites this line.
CONFIG = dict(BLOCK_R=64, BLOCK_C=64, GROUP=8, TRANS=True, STREAM=False, num_warps=4, num_stages=1)
# Allowed values per knob: the search space the heuristic operator explores.
TUNABLES = dict(
    BLOCK_R=[16, 32, 64, 128],
    BLOCK_C=[16, 32, 64, 128],
    GROUP=[1, 4, 8, 16],  # row tiles per group: programs of a group share source lines in L2
    TRANS=[True, False],  # tl.trans the tile so the store is coalesced along the output row
    STREAM=[False, True],  # evict_first loads, .cs stores: data touched once stays out of L2
    num_warps=[1, 2, 4, 8],
    num_stages=[1, 2, 3],
)


@triton.jit
def _batched_transpose_kernel(x_ptr, y_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                              GROUP: tl.constexpr, TRANS: tl.constexpr, STREAM: tl.constexpr):
    """y[b, c, r] = x[b, r, c] for one BLOCK_R x BLOCK_C tile; program_id(1) = b."""
    pid = tl.program_id(0)
    n_r = tl.cdiv(R, BLOCK_R)
    n_c = tl.cdiv(C, BLOCK_C)
    # Grouped order: GROUP consecutive row tiles sweep the column tiles together.
    in_group = GROUP * n_c
    first_r = (pid // in_group) * GROUP
    size = tl.minimum(n_r - first_r, GROUP)
    pid_r = first_r + (pid % in_group) % size
    pid_c = (pid % in_group) // size
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


def _launch(x: torch.Tensor, y: torch.Tensor, nb: int, r: int, c: int) -> None:
    if nb * r * c == 0:
        return
    grid = (triton.cdiv(r, CONFIG["BLOCK_R"]) * triton.cdiv(c, CONFIG["BLOCK_C"]), nb)
    _batched_transpose_kernel[grid](x, y, r, c, BLOCK_R=CONFIG["BLOCK_R"], BLOCK_C=CONFIG["BLOCK_C"],
                                    GROUP=CONFIG["GROUP"], TRANS=CONFIG["TRANS"], STREAM=CONFIG["STREAM"],
                                    num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])


def run(x: torch.Tensor, y: torch.Tensor) -> None:
    rows, cols = x.shape
    _launch(x, y, 1, rows, cols)
