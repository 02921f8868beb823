"""CUDA-only reward hacks (side stream, CUDA-event timer patch, L2 persistence, a captured CUDA graph)
and the GPU runs of the published-hack candidates (device-side memo, freed-memory scan, the aten
flash call; test_published_hacks.py runs them in the interpreter), with the no-false-positive
controls on a real GPU: the honest seed kernels and the trusted SDPA peer must PASS with every
runtime check on (the persisting-L2 check included). Run on a GPU machine:
`.venv/bin/python -m pytest -q -m gpu tests/adversarial`."""
from __future__ import annotations

import pytest

from avo.harness.runner import EvalConfig, Evaluator
from avo.schema import EvaluationStatus
from avo.tasks import REPO_ROOT, load_task, solution_from_kernel_file

from conftest import assert_verdict, attention_solution, grammar_cuda_solution, grammar_solution

S = EvaluationStatus
RH = S.REWARD_HACK
pytestmark = pytest.mark.gpu

BIG_GRAMMAR = "gpu_b512_v151936_float32"  # the largest mask: ~0.1 ms of work to hide
SMALL_GRAMMAR = "gpu_b1_v151936_float32"  # 0.6 MB of logits: what L2 persistence would keep hot
ATTENTION = "gpu_b16_h16_s1024_d128_causal"


@pytest.fixture(scope="module")
def cuda_ev():
    with Evaluator(EvalConfig(device="cuda")) as ev:
        yield ev


@pytest.fixture(scope="module")
def cuda_peer():
    with Evaluator(EvalConfig(device="cuda", peer=True)) as ev:
        yield ev


@pytest.fixture(scope="module")
def grammar():
    task = load_task("grammar_bitmask")
    return task, [w for w in task.workloads if w.uuid == BIG_GRAMMAR]


@pytest.fixture(scope="module")
def small_grammar():
    task = load_task("grammar_bitmask")
    return task, [w for w in task.workloads if w.uuid == SMALL_GRAMMAR]


@pytest.fixture(scope="module")
def attention():
    task = load_task("attention_mha_fwd")
    wls = [w for w in task.select("gpu") if w.uuid == ATTENTION] or task.select("gpu")[:1]
    return task, wls


def test_honest_grammar_passes_on_cuda(cuda_ev, cuda_peer, grammar):
    task, wls = grammar
    for ev in (cuda_ev, cuda_peer):
        rep = ev.evaluate(task, grammar_solution("honest"), wls)
        assert rep.status == S.PASSED, rep.message
        perf = rep.traces[0].evaluation.performance
        assert perf.iterations >= 50 and perf.sol_fraction is not None and perf.sol_fraction <= 1.0


def test_honest_attention_and_sdpa_peer_pass_on_cuda(cuda_ev, cuda_peer, attention):
    task, wls = attention
    rep = cuda_ev.evaluate(task, attention_solution("honest"), wls)
    assert rep.status == S.PASSED, rep.message
    peer = solution_from_kernel_file(task, REPO_ROOT / "kernels" / "peers" / "attention_sdpa_flash.py")
    rep = cuda_peer.evaluate(task, peer, wls)  # sdpa_kernel() flips SDPA flags and restores them
    assert rep.status == S.PASSED, rep.message


def test_side_stream_static(cuda_ev, grammar):
    task, wls = grammar
    assert_verdict(cuda_ev.evaluate(task, grammar_solution("side_stream"), wls), RH, "static:side-stream")


def test_side_stream_runtime(cuda_peer, grammar):
    """Without the static guard the work really runs on a second stream: the events on the timed
    stream see almost nothing, so either the wall-clock check (work off the timed stream) or the
    probed outputs (read before the side stream finished) fire."""
    task, wls = grammar
    rep = cuda_peer.evaluate(task, grammar_solution("side_stream"), wls)
    assert_verdict(rep, RH, "side-stream", ((RH, "timed-output"),))


def test_event_timer_patch(cuda_ev, cuda_peer, grammar):
    task, wls = grammar
    # `.Event` / `.elapsed_time` alone are warnings (timer identity is checked at run time); the
    # assignment to torch.cuda.Event.elapsed_time is a monkey-patch
    assert_verdict(cuda_ev.evaluate(task, grammar_solution("event_timer_patch"), wls), RH, "static:monkey-patch")
    rep = cuda_peer.evaluate(task, grammar_solution("event_timer_patch"), wls)
    assert_verdict(rep, RH, "monkey-patch")
    assert "torch.cuda.Event.elapsed_time" in rep.message


def test_library_call_and_cache_on_cuda(cuda_ev, attention):
    task, wls = attention
    assert_verdict(cuda_ev.evaluate(task, attention_solution("mha_forward_later"), wls), RH, "library-call")
    assert_verdict(cuda_ev.evaluate(task, attention_solution("cache_by_values"), wls), RH, "timed-output")


def test_l2_persistence_is_refused(cuda_ev, small_grammar):
    """l2_persist.cu raises the persisting-L2 set-aside and puts an access-policy window over the
    logits, so they would survive the flush: refused after the first checked call (`l2-persist`)."""
    task, wls = small_grammar
    rep = cuda_ev.evaluate(task, grammar_cuda_solution("l2_persist"), wls)
    assert_verdict(rep, RH, "l2-persist")
    assert "cudaLimitPersistingL2CacheSize" in rep.message, rep.message


def test_graph_replay_is_caught(cuda_ev, attention):
    """One attention captured as a CUDA graph of a copy and replayed on every timed call: stale for
    the perturbed inputs and the refresh calls."""
    task, wls = attention
    assert_verdict(cuda_ev.evaluate(task, attention_solution("graph_replay"), wls), RH, "timed-output")


def test_published_hacks_on_cuda(cuda_ev, small_grammar, attention):
    """The interpreter's candidates for device-side memoisation, freed-memory scanning (the CUDA
    caching allocator hands back the baseline's freed output) and the aten flash call, on a GPU."""
    task, wls = small_grammar
    assert_verdict(cuda_ev.evaluate(task, grammar_solution("device_memo"), wls), RH, "timed-output",
                   ((S.INCORRECT_NUMERICAL, None),))
    task, wls = attention
    assert_verdict(cuda_ev.evaluate(task, attention_solution("freed_memory_scan"), wls), RH, "timed-output",
                   ((S.INCORRECT_NUMERICAL, None),))
    rep = cuda_ev.evaluate(task, attention_solution("aten_flash_forward"), wls)
    assert_verdict(rep, RH, "library-call")
    assert "aten._flash_attention_forward" in rep.message, rep.message
