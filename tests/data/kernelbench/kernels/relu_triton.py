"""ReLU for tests/data/kernelbench/level1/19_ReLU.py: one Triton kernel, destination-passing `run`."""
import torch
import triton
import triton.language as tl


@triton.jit
def _relu_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.maximum(x, 0.0), mask=mask)


CONFIG = dict(BLOCK=1024, num_warps=4)
TUNABLES = dict(BLOCK=[1024, 2048, 4096], num_warps=[4, 8])


def run(x: torch.Tensor, output: torch.Tensor) -> None:
    n = x.numel()
    _relu_kernel[(triton.cdiv(n, CONFIG["BLOCK"]),)](x, output, n, BLOCK=CONFIG["BLOCK"],
                                                     num_warps=CONFIG["num_warps"])
