"""Diagnose a grammar_bitmask mismatch on the GPU: run the seed kernel and the reference on the
same seeded inputs in one process and print where they differ (kernel value, reference value,
bitmask bit). Usage: python scripts/diag_bitmask_gpu.py [workload-uuid] [trials]"""
import importlib.util
import sys

import torch

from avo.harness import inputs
from avo.tasks import REPO_ROOT, load_task

uuid = sys.argv[1] if len(sys.argv) > 1 else "gpu_b512_v128256_float32"
trials = int(sys.argv[2]) if len(sys.argv) > 2 else 5
task = load_task("grammar_bitmask")
d = task.definition
w = next(x for x in task.workloads if x.uuid == uuid)
ns: dict = {}
exec(d.reference, ns)
spec = importlib.util.spec_from_file_location("seed", REPO_ROOT / "kernels/grammar/bitmask_seed.py")
seed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seed)
for t in range(trials):
    s = 1000 + t
    a = inputs.make_inputs(d, w, s, "cuda", ns["make_inputs"])
    b = inputs.make_inputs(d, w, s, "cuda", ns["make_inputs"])
    same = all(torch.equal(inputs.bits(a[k]), inputs.bits(b[k])) for k in a)
    ref = inputs.upcast(b)
    ns["run"](*ref.values())
    seed.run(*a.values())
    torch.cuda.synchronize()
    o, r = a["logits"].float(), ref["logits"]
    bad = ~((o == r) | (torch.isnan(o) & torch.isnan(r)))
    n = int(bad.sum())
    print(f"trial {t}: inputs identical across two generations: {same}; mismatches {n}; "
          f"ref NaN {int(torch.isnan(r).sum())}, out NaN {int(torch.isnan(o).sum())}")
    for row, col in bad.nonzero()[:5].tolist():
        word = int(a["bitmask"][row, col // 32])
        print(f"  [{row},{col}] kernel={o[row, col].item()} ref={r[row, col].item()} bit={(word >> (col % 32)) & 1}")
