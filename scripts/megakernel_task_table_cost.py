"""Host cost of the persistent decode megakernel's task table (kernels/megakernel/decode_layer_persistent.py)
per decode step at the Llama-3-8B layer (an H100's 132 SMs), in microseconds (median of `repeat`), CPU only:

  old build   build_tasks(batch, kv_len, ...) of the kernel file at OLD_COMMIT (a table per call: the
              KV length in every ATTN row, up to 32 splits a pair at every batch), from git; plus the
              table's host->device copy, the counters and the scratch allocation per call (not timed here)
  new build   build_tasks(batch, ...): the table without the KV length, built once per (device, batch,
              layer, CONFIG) on a plan's first call
  new call    run()'s per-call host work with the plan cached: the plan lookup, the counters' memset
              (a CPU memset here; on the GPU a memset launch) and the launch's argument list; the
              kernel launch itself (Triton's launcher) replaced by a stub, so not included.

Usage: python scripts/megakernel_task_table_cost.py [repeat]"""
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / "kernels" / "megakernel" / "decode_layer_persistent.py"
OLD_COMMIT = "6164c33"  # the last commit with the per-call table (build_tasks(batch, kv_len, ...))
LLAMA3_8B = dict(hidden=4096, q_dim=4096, kv_heads=8, head_dim=128, mlp=14336)
SHAPES = ((1, 512), (1, 4000), (8, 1000), (8, 8191), (16, 4000), (64, 2048), (64, 8191))


def _module(path=KERNEL, name="decode_layer_persistent"):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def _old_module():
    """The kernel file at OLD_COMMIT, or None (no git history here)."""
    r = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:{KERNEL.relative_to(ROOT)}"],
                       capture_output=True, text=True)
    if r.returncode:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(r.stdout)
    return _module(Path(f.name), "decode_layer_persistent_old")


def _median_us(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def _call_cost(m, batch, kv_len, layer, repeat):
    """run()'s host work per call with a cached plan, the launch stubbed out: weights as zero-stride
    CPU tensors of the layer's shapes (no memory), 132 SMs as on an H100."""
    import torch
    launches = []

    class Stub:  # the launch: record the arguments run() hands Triton, run nothing
        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append(len(a))

    m._persistent_kernel, m._check, m._num_sms = Stub(), lambda ctrl, table: None, lambda dev: 132
    e = lambda *shape: torch.zeros(1).expand(*shape)
    h, q, kvh, d, f = layer["hidden"], layer["q_dim"], layer["kv_heads"], layer["head_dim"], layer["mlp"]
    args = [e(batch, h), e(h), e(q, h), e(kvh * d, h), e(kvh * d, h), e(h, q), e(h), e(f, h), e(f, h), e(h, f),
            e(batch, kvh, 8192, d), e(batch, kvh, 8192, d), e(d), e(d), kv_len, e(batch, h), e(batch, kvh, d),
            e(batch, kvh, d)]
    m.run(*args)  # the first call builds the plan
    cost = _median_us(lambda: m.run(*args), repeat)
    assert launches and len(m._PLANS) >= 1
    return cost


def measure(shapes=SHAPES, repeat=50, layer=LLAMA3_8B):
    """[dict(batch, kv_len, old_tasks, old_us, new_tasks, splits, build_us, call_us)]: old_* None without git."""
    old, new = _old_module(), _module()
    rows = []
    for batch, kv_len in shapes:
        row = dict(batch=batch, kv_len=kv_len, old_tasks=None, old_us=None)
        if old is not None:
            row["old_tasks"] = old.build_tasks(batch, kv_len, **layer)[0].shape[0]
            row["old_us"] = _median_us(lambda: old.build_tasks(batch, kv_len, **layer), repeat)
        table, _, splits = new.build_tasks(batch, **layer)
        row.update(new_tasks=table.shape[0], splits=splits,
                   build_us=_median_us(lambda: new.build_tasks(batch, **layer), repeat),
                   call_us=_call_cost(new, batch, kv_len, layer, repeat))
        rows.append(row)
    return rows


def main(repeat=200):
    print(f"Llama-3-8B layer, 132 SMs, CPU, median of {repeat}; old: build_tasks at {OLD_COMMIT} (per call, "
          f"+ table copy + allocations not timed); new build: once per batch; new call: per call, launch excluded")
    print("batch  kv_len  old_tasks  old_build_us  new_tasks  splits  new_build_us  new_call_us")
    for r in measure(repeat=repeat):
        old_t = "%9d" % r["old_tasks"] if r["old_tasks"] is not None else "      n/a"
        old_us = "%12.1f" % r["old_us"] if r["old_us"] is not None else "         n/a"
        print(f"{r['batch']:5d}  {r['kv_len']:6d}  {old_t}  {old_us}  {r['new_tasks']:9d}  {r['splits']:6d}  "
              f"{r['build_us']:12.1f}  {r['call_us']:11.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
