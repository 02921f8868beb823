"""avo.harness.timing.device_ms, the benchmark scripts' second column, on its CPU path (host clock;
the CUDA path is the evaluator's event timing, exercised on the GPU by scripts/bench_*.py)."""
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
