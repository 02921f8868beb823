"""How a call's device time is taken, and that every trace says how: CUPTI activity records are
attributed to the timed call whose host window launched them (any stream, any thread; the L2
flush and the spin launched before the window never count), events are the fallback where
cupti-python is missing, and the interpreter's wall time says so."""
import pytest

from avo.harness import timing
from avo.tasks import default_seed_path, load_task, solution_from_kernel_file


def test_work_launched_inside_a_window_counts_on_any_stream_and_flushes_before_it_do_not():
    # host ns: call 0 spans [100, 200], call 1 [300, 400]
    windows = [(100, 200), (300, 400)]
    launches = [(90, 1),    # the L2 flush, launched before call 0's window
                (110, 2),   # call 0's kernel on the timed stream
                (150, 3),   # call 0's kernel on a side stream (or from a helper thread)
                (310, 4),   # call 1's kernel
                (350, 5)]   # an API call of call 1 that launched no GPU work (a sync, an alloc)
    activities = [(1_000, 9_000_000, 1),           # flush: 9 ms, must not count
                  (9_000_100, 9_500_100, 2),       # 0.5 ms
                  (9_400_100, 10_000_100, 3),      # overlaps, ends 0.5 ms later: span 1.0 ms
                  (20_000_000, 20_250_000, 4)]     # 0.25 ms
    assert timing.spans_ms(windows, launches, activities) == [pytest.approx(1.0), pytest.approx(0.25)]
    assert timing.spans_ms([(500, 600)], launches, activities) == [None]  # a call that launched nothing


def test_the_method_is_resolved_where_the_worker_runs():
    assert timing.resolve_method("cupti", "interpret") == ("wall", "")
    assert timing.resolve_method("events", "cuda") == ("events", "")
    method, note = timing.resolve_method("auto", "cuda")
    if timing.cupti_missing() is None:
        assert (method, note) == ("cupti", "")
    else:  # this machine: no cupti-python, so events, and the note says why
        assert method == "events" and note.startswith("CUPTI timing unavailable (cupti-python is not importable")


def test_every_trace_records_how_it_was_timed(quick_evaluator):
    task = load_task("grammar_bitmask")
    rep = quick_evaluator.evaluate(task, solution_from_kernel_file(task, default_seed_path("grammar_bitmask")),
                                   task.select("cpu")[:1])
    assert rep.passed, rep.message
    assert [t.evaluation.environment.timing_method for t in rep.traces] == ["wall"]
    assert '"timing_method":"wall"' in rep.traces[0].model_dump_json()


@pytest.mark.gpu
def test_cupti_and_events_agree_on_a_single_stream_kernel_and_cupti_sees_a_side_stream():
    """On CUDA: a copy kernel timed both ways agrees within noise, and CUPTI counts the same copy
    when it runs on a side stream (its launch is inside the call's window)."""
    import torch
    if timing.cupti_missing():
        pytest.skip(timing.cupti_missing())
    x = torch.randn(64 << 20, device="cuda")
    y = torch.empty_like(x)
    side = torch.cuda.Stream()

    def on_stream(_):
        y.copy_(x)

    def off_stream(_):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            y.copy_(x)
        torch.cuda.current_stream().wait_stream(side)

    ev = timing.time_interleaved([on_stream], [None], 1, 3, 20, "cuda", method="events")[0]
    cu = timing.time_interleaved([on_stream, off_stream], [None, None], 1, 3, 20, "cuda", method="cupti")
    med = sorted(ev)[10]
    assert sorted(cu[0])[10] == pytest.approx(med, rel=0.2)
    assert sorted(cu[1])[10] == pytest.approx(med, rel=0.2)


@pytest.mark.gpu
def test_clocks_are_read_from_the_gpu_the_worker_uses():
    """NVML numbers GPUs its own way; the handle is found by the UUID of torch's current device."""
    import pynvml
    import torch
    pynvml.nvmlInit()
    uuid = pynvml.nvmlDeviceGetUUID(timing.nvml_handle(pynvml))
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    assert uuid.removeprefix("GPU-") == str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid).removeprefix("GPU-")
    clock, _ = timing.gpu_clock_state()
    assert clock and clock > 100
