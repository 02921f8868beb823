"""CPU: the DRAM-traffic floor of grammar_bitmask per workload, from the task's own masks.

    .venv/bin/python tests/bitmask_floor.py [--workloads REGEX] [--gbps 3020] [--seed 1] [--doc FILE ...]

The SOL byte model (definition.json) counts one write pass over the logits. HBM moves whole 32-byte
sectors, and a sector that is only partly overwritten must be read first (HBM3 on the H100 has ECC
always on, so a partial write is a read-modify-write somewhere: in the kernel, in L2, or at DRAM).
Per sector of logits, then: every token allowed -> no traffic; every token blocked -> a 32-byte
write; mixed -> a 32-byte read and a 32-byte write. Plus the bitmask rows once. The floor is those
bytes at --gbps (default: 3.02 TB/s, the copy ceiling the session log quotes for the H100).
Where the docs (default: docs/benchmarks.md and the session log docs/data/benchmark-sessions.md)
hold xgrammar rows for the workload (device µs; the fastest one counts), the table shows what 1.3x
of it asks and whether the floor allows it. No kernel can beat this floor; it bounds issue goals.
Its result is recorded in knowledge_base/memory-bound/grammar-bitmask.md; tests/test_bench_timing_and_doc.py
exercises it (hence its place beside the tests).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
SECTOR = 32
DOCS = [REPO_ROOT / "docs" / "benchmarks.md", REPO_ROOT / "docs" / "data" / "benchmark-sessions.md"]
XG_ROW = re.compile(r"^\| grammar_bitmask \| (\S+) \| (xgrammar \w+) \|(.*)\|\s*$")


def sector_bytes(blocked, isz: int) -> tuple[int, int]:
    """(write-only bytes, read+write bytes) for a [rows, vocab] bool tensor of blocked tokens."""
    import torch
    per = SECTOR // isz
    rows, vocab = blocked.shape
    # tokens past vocab pad the tail sector as allowed, so a tail sector counts as mixed: its bytes past
    # vocab are the next row's (rows here start on sector boundaries), which a write must preserve
    pad = (-vocab) % per
    b = torch.nn.functional.pad(blocked, (0, pad)).view(rows, -1, per).sum(-1)
    full, mixed = int((b == per).sum()), int(((b > 0) & (b < per)).sum())
    return full * SECTOR, mixed * 2 * SECTOR


def recorded_xgrammar_us(doc: Path) -> dict[tuple[str, str], float]:
    """(workload, peer) -> the fastest device µs recorded in the doc's bench/sweep rows (the strictest
    yardstick for what 1.3x of it asks)."""
    out = {}
    for line in doc.read_text().splitlines() if doc.exists() else []:
        m = XG_ROW.match(line)
        if m:
            cells = [c.strip() for c in m.group(3).split("|")]
            if len(cells) >= 7:  # µs, GB/s, % SOL, speedup, µs device, speedup device, check
                try:
                    us = float(cells[4])
                except ValueError:
                    continue
                key = (m.group(1), m.group(2))
                out[key] = min(us, out.get(key, us))
    return out


def main(argv: list[str] | None = None) -> int:
    import torch
    from avo.harness.inputs import make_inputs
    from avo.tasks import load_task
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="^gpu_", help="regex over workload uuids")
    ap.add_argument("--gbps", type=float, default=3020.0, help="achievable HBM bandwidth, GB/s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--doc", type=Path, action="append", default=None,
                    help="a markdown file with bench rows (repeatable; default: " + ", ".join(str(d.relative_to(REPO_ROOT)) for d in DOCS) + ")")
    a = ap.parse_args(argv)
    task = load_task("grammar_bitmask")
    ns: dict = {}
    exec(compile(task.definition.reference, "<grammar_bitmask/reference>", "exec"), ns)  # its make_inputs
    rec: dict[tuple[str, str], float] = {}
    for doc in a.doc or DOCS:
        for key, us in recorded_xgrammar_us(doc).items():
            rec[key] = min(us, rec.get(key, us))
    wls = [w for w in task.workloads if re.search(a.workloads, w.uuid)]
    if not wls:
        print(f"error: no grammar_bitmask workload matches {a.workloads!r}", file=sys.stderr)
        return 2
    print("| workload | bitmask MB | write-only MB | read+write MB | floor MB | SOL-model MB | floor µs "
          "| xgrammar µs (recorded) | 1.3x needs µs | 1.3x possible |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for w in wls:
        inp = make_inputs(task.definition, w, a.seed, "cpu", ns["make_inputs"])
        logits, bitmask, indices = inp["logits"], inp["bitmask"], inp["indices"].long()
        vocab, isz = logits.shape[1], logits.element_size()
        shifts = torch.arange(32, dtype=torch.int32)
        bits = ((bitmask[indices].unsqueeze(-1) >> shifts) & 1).reshape(len(indices), -1)[:, :vocab]
        wr, rw = sector_bytes(bits == 0, isz)
        bm = len(indices) * bitmask.shape[1] * 4
        floor = bm + wr + rw
        sol_model = bm + len(indices) * vocab * isz
        us = floor / (a.gbps * 1e3)
        xg = [v for (wl, _), v in rec.items() if wl == w.uuid]
        best = min(xg) if xg else None
        need = f"{best / 1.3:.1f}" if best else "-"
        ok = ("yes" if us <= best / 1.3 else "no") if best else "-"
        print(f"| {w.uuid} | {bm / 1e6:.1f} | {wr / 1e6:.1f} | {rw / 1e6:.1f} | {floor / 1e6:.1f} | "
              f"{sol_model / 1e6:.1f} | {us:.1f} | {best if best else '-'} | {need} | {ok} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
