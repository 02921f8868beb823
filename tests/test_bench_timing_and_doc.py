"""The benchmark scripts' shared parts on CPU: avo.harness.timing.device_ms (their device-time column;
the CUDA path is the evaluator's event timing, run on the GPU by scripts/bench_*.py) and the doc sections."""
import time

from avo.harness.timing import device_ms


def test_device_ms_gives_one_median_per_function_in_order_and_counts_calls():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.003)

    fast_ms, slow_ms = device_ms([fast, slow], iters=12, warmup=2, device="cpu")
    assert calls == {"fast": 14, "slow": 14}  # warm-up plus timed calls, interleaved
    assert fast_ms < 1.0 and 2.9 <= slow_ms < 30.0


def test_bench_memory_bound_subset_run_keeps_the_full_table(tmp_path):
    import importlib.util
    from avo.tasks import REPO_ROOT
    spec = importlib.util.spec_from_file_location("bmb_under_test", REPO_ROOT / "scripts" / "bench_memory_bound.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = tmp_path / "benchmarks.md"
    mod.write_doc("all families v1\n", doc)
    mod.write_doc("decode layer v1\n", doc, tasks=["megakernel_decode_layer"])
    mod.write_doc("all families v2\n", doc, tasks=list(mod.BENCH_TASKS))
    mod.write_doc("decode layer v2\n", doc, tasks=["megakernel_decode_layer"])
    text = doc.read_text()
    assert "all families v2" in text and "decode layer v2" in text
    assert "v1" not in text and text.count("<!-- bench_memory_bound -->") == 1
    assert text.count("<!-- bench_memory_bound megakernel_decode_layer -->") == 1
