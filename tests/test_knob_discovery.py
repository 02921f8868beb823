"""The offline operator on a Triton kernel that declares no CONFIG/TUNABLES: it finds the knobs in
the kernel's launches and autotune configs, rewrites only their literals, and a short `avo evolve`
of such a kernel runs real evaluations of what it proposes. Declared knobs still win."""
from __future__ import annotations

from pathlib import Path

import pytest

from avo.config import load_config
from avo.lineage import Lineage
from avo.operators.base import LineageView, Proposal, StepContext, VersionView
from avo.operators.heuristic import HeuristicOperator
from avo.operators.knobs import KnobError, parse_knobs, rewrite_config
from avo.ui.run import evolve_local

PLAIN = Path(__file__).parent / "data" / "plain_kernels" / "transpose2d_plain.py"

AUTOTUNED = '''import triton
import triton.language as tl


@triton.autotune(configs=[triton.Config({"BLOCK": 64}, num_warps=2),
                          triton.Config({"BLOCK": 256}, num_warps=8)], key=["n"])
@triton.jit
def add_kernel(x, y, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out + offs, tl.load(x + offs, mask=offs < n) + tl.load(y + offs, mask=offs < n), mask=offs < n)


def run(x, y, out):
    n = x.numel()
    add_kernel[lambda m: (triton.cdiv(n, m["BLOCK"]),)](x, y, out, n)
'''


def changed_lines(a: str, b: str) -> list[tuple[str, str]]:
    la, lb = a.splitlines(), b.splitlines()
    assert len(la) == len(lb)
    return [(x, y) for x, y in zip(la, lb) if x != y]


def test_launch_literals_names_and_launch_options_are_knobs():
    src = PLAIN.read_text()
    k = parse_knobs(src)
    # the positional constexpr literal is followed to its local `block_m = 16`, BLOCK_N=TILE_N to the
    # module constant, num_warps is a launch literal and num_stages (absent) is offered at its default
    assert k.config == {"block_m": 16, "TILE_N": 32, "num_warps": 4, "num_stages": 3}
    assert k.tunables["block_m"] == [2, 4, 8, 16, 32, 64, 128] and k.tunables["TILE_N"][-1] == 256
    assert k.tunables["num_warps"] == [1, 2, 4, 8, 16] and k.tunables["num_stages"] == [1, 2, 3, 4, 5]
    new = rewrite_config(src, k, {**k.config, "block_m": 32, "TILE_N": 64, "num_warps": 8, "num_stages": 2})
    assert changed_lines(src, new) == [
        ("TILE_N = 32", "TILE_N = 64"),
        ("    block_m = 16", "    block_m = 32"),
        ("    transpose_kernel[grid](x, y, M, N, block_m, BLOCK_N=TILE_N, num_warps=4)",
         "    transpose_kernel[grid](x, y, M, N, block_m, BLOCK_N=TILE_N, num_warps=8, num_stages=2)")]
    # the rewritten kernel reads back with the new values: a lineage of such edits stays turnable
    assert parse_knobs(new).config == {"block_m": 32, "TILE_N": 64, "num_warps": 8, "num_stages": 2}
    assert rewrite_config(src, k, dict(k.config)) == src


def test_autotune_lists_are_pinned_then_their_config_is_turned():
    k = parse_knobs(AUTOTUNED)
    assert k.config == {"autotune": "all"} and k.tunables["autotune"] == ["all", 0, 1]
    pinned = rewrite_config(AUTOTUNED, k, {"autotune": 1})
    assert "configs=[triton.Config({\"BLOCK\": 256}, num_warps=8)]" in pinned and "64" not in pinned
    k2 = parse_knobs(pinned)
    assert k2.config == {"BLOCK": 256, "num_warps": 8}  # autotuned: no launch options at the call
    turned = rewrite_config(pinned, k2, {"BLOCK": 512, "num_warps": 4})
    assert "triton.Config({\"BLOCK\": 512}, num_warps=4)" in turned


def test_declared_knobs_win_and_a_kernel_without_any_is_refused_in_one_line():
    declared = PLAIN.read_text() + "\nCONFIG = dict(A=1)\nTUNABLES = dict(A=[1, 2])\n"
    k = parse_knobs(declared)
    assert not k.discovered and k.config == {"A": 1}
    with pytest.raises(KnobError, match="no module-level CONFIG and TUNABLES, and no Triton launch"):
        parse_knobs("import torch\n\ndef run(x, y):\n    y.copy_(x)\n")
    # not powers of two, not ints, names assigned twice: no knob
    odd = PLAIN.read_text().replace("block_m = 16", "block_m = 24").replace("TILE_N = 32", "TILE_N = 32\nTILE_N = 64")
    assert set(parse_knobs(odd).config) == {"num_warps", "num_stages"}


def test_the_heuristic_operator_moves_discovered_knobs(tmp_path):
    src = PLAIN.read_text()
    view = LineageView(task="layout_transpose2d", island=0, best=VersionView(commit="c0ffee", source=src))
    out = HeuristicOperator().propose(view, StepContext(seed=0, workdir=tmp_path))
    assert isinstance(out, Proposal) and "->" in out.note
    moved = {n.split()[0] for n in out.note.split(": ")[-1].split(", ")}
    assert moved <= {"block_m", "TILE_N", "num_warps", "num_stages"}
    compile(out.source, "kernel.py", "exec")


def test_evolve_a_kernel_without_tunables(tmp_path):
    """A few offline attempts on the plain transpose in the interpreter: each proposal is a real
    rewrite of a discovered knob, evaluated on every cpu workload and gated."""
    cfg = tmp_path / "plain.yaml"
    cfg.write_text(f"""run: plain
lineage_dir: {tmp_path / 'plain'}
tasks: [layout_transpose2d]
seed_kernels: {{layout_transpose2d: {PLAIN}}}
islands_per_task: 1
budget: {{attempts: 3, wall_minutes: 10}}
gate: {{min_gain: 0.05, rounds: 2}}
device: interpret
""")
    assert evolve_local(load_config(cfg), live=False) == 0
    with Lineage.open(tmp_path / "plain") as lin:
        attempts = lin.attempts()
    assert len(attempts) == 3
    evaluated = [a for a in attempts if a.status in ("PASSED", "REJECTED")]
    assert evaluated, [(a.status, a.error[:200]) for a in attempts]
    knob_names = {"block_m", "TILE_N", "num_warps", "num_stages"}
    assert all(a.note.split()[0] in knob_names for a in attempts), [a.note for a in attempts]


PERSISTENT = '''import torch
import triton
import triton.language as tl

NUM_SMS = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 4


@triton.jit
def scale_kernel(x, out, n, BLOCK: tl.constexpr):
    for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        tl.store(out + offs, tl.load(x + offs, mask=offs < n) * 2, mask=offs < n)


def run(x, out):
    n = x.numel()
    grid = (min(NUM_SMS * 2, triton.cdiv(n, 1024)),)
    scale_kernel[grid](x, out, n, BLOCK=1024)
'''


def test_a_persistent_launchs_programs_per_sm_is_a_knob():
    """`NUM_SMS * 2` in the grid (NUM_SMS read from multi_processor_count): the 2 is GRID_PER_SM."""
    k = parse_knobs(PERSISTENT)
    assert k.config["GRID_PER_SM"] == 2 and k.tunables["GRID_PER_SM"] == [1, 2, 3, 4, 8]
    new = rewrite_config(PERSISTENT, k, {**k.config, "GRID_PER_SM": 4})
    assert changed_lines(PERSISTENT, new) == [("    grid = (min(NUM_SMS * 2, triton.cdiv(n, 1024)),)",
                                               "    grid = (min(NUM_SMS * 4, triton.cdiv(n, 1024)),)")]
    assert parse_knobs(new).config["GRID_PER_SM"] == 4
