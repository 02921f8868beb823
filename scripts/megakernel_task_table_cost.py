"""Host cost of the persistent decode megakernel's task table (kernels/megakernel/decode_layer_persistent.py):
build_tasks per decode step at the Llama-3-8B layer for a few batch sizes and KV lengths, in
microseconds (median of `repeat` builds), with the table's size. CPU only; the copy of the table to
the GPU is not included. Usage: python scripts/megakernel_task_table_cost.py [repeat]"""
import importlib.util
import statistics
import sys
import time
from pathlib import Path

KERNEL = Path(__file__).resolve().parents[1] / "kernels" / "megakernel" / "decode_layer_persistent.py"
LLAMA3_8B = dict(hidden=4096, q_dim=4096, kv_heads=8, head_dim=128, mlp=14336)


def _module():
    spec = importlib.util.spec_from_file_location("decode_layer_persistent", KERNEL)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def measure(shapes=((1, 512), (1, 4000), (8, 1000), (8, 8191), (64, 2048)), repeat=50, cfg=None, layer=LLAMA3_8B):
    """[(batch, kv_len, tasks, splits, median us, min us)] for build_tasks(batch, kv_len, layer, cfg)."""
    m = _module()
    rows = []
    for batch, kv_len in shapes:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            table, _, splits = m.build_tasks(batch, kv_len, cfg=cfg, **layer)
            times.append((time.perf_counter() - t0) * 1e6)
        rows.append((batch, kv_len, table.shape[0], splits, statistics.median(times), min(times)))
    return rows


if __name__ == "__main__":
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print("batch  kv_len  tasks  splits  median_us  min_us  (build_tasks, Llama-3-8B layer, CPU)")
    for r in measure(repeat=repeat):
        print("%5d  %6d  %5d  %6d  %9.1f  %6.1f" % r)
