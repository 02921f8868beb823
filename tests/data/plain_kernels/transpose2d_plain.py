"""A 2-D transpose written as in Triton's tutorials: no CONFIG, no TUNABLES. avo's offline operator
finds its knobs itself (the block sizes at the launch, num_warps, the launch options it lacks)."""
import triton
import triton.language as tl

TILE_N = 32


@triton.jit
def transpose_kernel(x_ptr, y_ptr, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tile = tl.load(x_ptr + rm[:, None] * N + rn[None, :], mask=mask)
    tl.store(y_ptr + rn[None, :] * M + rm[:, None], tile, mask=mask)


def run(x, y):
    M, N = x.shape
    block_m = 16
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, TILE_N))
    transpose_kernel[grid](x, y, M, N, block_m, BLOCK_N=TILE_N, num_warps=4)
