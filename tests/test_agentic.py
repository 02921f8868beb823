"""The agentic operator end to end on CPU: the real SDK clients talk to the scripted server, the
tools act on a real workspace, `evaluate` runs the real harness (Triton interpreter) on
grammar_bitmask."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from avo.operators.agentic import AgenticOperator
from avo.operators.context import compact, estimate_tokens
from avo.operators.base import AttemptView, GiveUp, LineageView, Proposal, StepContext, VersionView
from avo.operators.llm import CostMeter, Message, ToolCall
from avo.tasks import REPO_ROOT, load_task, solution_from_kernel_file
from fake_llm_server import Call, FakeLLMServer, Turn, call

KEY = "sk-avo-agentic-secret-93b1"
SEED = (REPO_ROOT / "kernels/grammar/bitmask_seed.py").read_text()
TASK = load_task("grammar_bitmask")
SMALL = [w for w in TASK.select("cpu") if w.uuid == "cpu_b3_v1000_float32"]


class Spec:
    """The fields AgenticOperator reads from the config's AgenticSpec."""
    def __init__(self, srv: FakeLLMServer, provider: str, **kw):
        self.name, self.provider, self.model = "agentic", provider, "fake-model"
        self.base_url = srv.anthropic_url if provider == "anthropic" else srv.openai_url
        self.api_key_env = "AVO_TEST_AGENT_KEY"
        self.max_steps, self.context_tokens, self.temperature = 20, 200_000, None
        self.price_in_per_mtok, self.price_out_per_mtok = 3.0, 15.0
        self.timeout_s, self.max_retries, self.backoff_s = 10.0, 2, 0.05
        self.__dict__.update(kw)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("AVO_TEST_AGENT_KEY", KEY)


def step_ctx(tmp_path: Path, evaluator=None) -> StepContext:
    def evaluate(source: str):
        k = tmp_path / "eval" / "kernel.py"
        k.parent.mkdir(exist_ok=True)
        k.write_text(source)
        return evaluator.evaluate(TASK, solution_from_kernel_file(TASK, k), SMALL)
    return StepContext(seed=0, workdir=tmp_path / "step", evaluate=evaluate if evaluator else None)


def view(**kw) -> LineageView:
    best = VersionView(commit="a1b2c3d4e5", source=SEED, note="seed", latencies_ms=kw.pop("latencies", {}))
    return LineageView(task="grammar_bitmask", island=0, best=best, **kw)


def tool_results(srv: FakeLLMServer, i: int) -> str:
    """Everything request i sent back to the model after its previous turn (tool results, nudges)."""
    msgs = srv.requests[i].body["messages"]
    last = max(j for j, m in enumerate(msgs) if m["role"] == "assistant")
    return json.dumps(msgs[last + 1:])


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_step_reads_edits_repairs_and_submits(tmp_path, evaluator, provider):
    script = [
        Turn(text="Plan: fewer, larger programs.", calls=[call("read_file", path="kernel.py"),
                                                          call("kb_search", query="launch overhead block size")]),
        Turn(calls=[call("edit", path="kernel.py", search="CONFIG = dict(BLOCK_SIZE=256,",
                         replace="CONFIG = dict(BLOCK_SIZE=1024,"),
                    call("edit", path="kernel.py", search="    vocab = logits.shape[1]\n",
                         replace="    vocab = logits.shape[1] +\n")]),  # a deliberate syntax error
        Turn(calls=[call("evaluate")]),
        Turn(text="Syntax error: repair.", calls=[call("edit", path="kernel.py", search="    vocab = logits.shape[1] +\n",
                                                       replace="    vocab = logits.shape[1]\n")]),
        Turn(calls=[call("evaluate")]),
        Turn(calls=[call("submit", note="BLOCK_SIZE 256 -> 1024")]),
        Turn(calls=[call("submit", note="BLOCK_SIZE 256 -> 1024: 4x fewer programs per row")]),
    ]
    with FakeLLMServer(script) as srv:
        op = AgenticOperator(Spec(srv, provider), device="interpret")
        out = op.propose(view(latencies={SMALL[0].uuid: 1e6}), step_ctx(tmp_path, evaluator))
    assert isinstance(out, Proposal), out
    assert out.note == "BLOCK_SIZE 256 -> 1024: 4x fewer programs per row" and out.parent == "a1b2c3d4e5"
    assert "CONFIG = dict(BLOCK_SIZE=1024," in out.source and "logits.shape[1] +" not in out.source
    assert out.cost_usd == pytest.approx(7 * (100 * 3 + 20 * 15) / 1e6) and out.tokens == 7 * 120
    assert srv.remaining == 0 and len(srv.requests) == 7
    assert f"kernel.py: {len(SEED.splitlines())} lines" in tool_results(srv, 1) and "grammar-bitmask" in tool_results(srv, 1)
    assert "COMPILE_ERROR" in tool_results(srv, 3) and "SyntaxError" in tool_results(srv, 3)
    assert "status: PASSED" in tool_results(srv, 5) and "vs island best" in tool_results(srv, 5)
    assert "critique your change" in tool_results(srv, 6) and "+CONFIG = dict(BLOCK_SIZE=1024" in tool_results(srv, 6)
    events = [json.loads(l) for l in Path(out.transcript).read_text().splitlines()]
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "end"
    assert [e["name"] for e in events if e["event"] == "tool"].count("evaluate") == 2
    assert [e["status"] for e in events[-1]["evaluations"]] == ["COMPILE_ERROR", "PASSED"]
    # The key reached the server, and nowhere on disk.
    assert KEY in json.dumps(srv.requests[0].headers)
    for f in (tmp_path / "step").rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(errors="replace"), f


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_malformed_tool_calls_are_answered_and_the_loop_goes_on(tmp_path, provider):
    bad_args = Call(name="read_file", arguments="{not json") if provider == "openai" else call("read_file", file="x")
    script = [
        Turn(calls=[call("frobnicate", x=1), bad_args]),
        Turn(calls=[call("edit", path="kernel.py", search="CONFIG = dict(BLOCK_SIZE=255, num_warps=4)", replace="x")]),
        Turn(calls=[call("edit", path="kernel.py", search="tl.store(", replace="tl.store (")]),
        Turn(calls=[call("read_file", path="../secrets.txt")]),
        Turn(text="I am thinking."),  # no tool call: nudged
        Turn(calls=[call("give_up", reason="nothing to gain")]),
    ]
    with FakeLLMServer(script) as srv:
        out = AgenticOperator(Spec(srv, provider), device="interpret").propose(view(), step_ctx(tmp_path))
    assert isinstance(out, GiveUp) and out.reason == "nothing to gain"
    r1 = tool_results(srv, 1)
    assert "unknown tool 'frobnicate'" in r1 and "available: list_files, read_file, edit" in r1
    assert ("not valid JSON" in r1) if provider == "openai" else ("bad arguments" in r1 and "path" in r1)
    r2 = tool_results(srv, 2)
    config_line = next(i for i, l in enumerate(SEED.splitlines(), 1) if l.startswith("CONFIG = dict("))
    assert "search text not found" in r2 and f"Nearest line {config_line}" in r2 and "CONFIG = dict(BLOCK_SIZE=256" in r2
    r3 = tool_results(srv, 3)
    lines = [i for i, l in enumerate(SEED.splitlines(), 1) if "tl.store(" in l]
    assert len(lines) >= 2 and f"found {len(lines)} times" in r3 and f"lines {lines[0]}, {lines[1]}" in r3
    assert "without '..'" in tool_results(srv, 4)
    assert "Continue with the tools" in tool_results(srv, 5)
    assert (tmp_path / "step" / "workspace" / "kernel.py").read_text() == SEED  # no edit went through


def test_hung_server_ends_the_step_cleanly_and_keeps_the_transcript(tmp_path):
    with FakeLLMServer([Turn(calls=[call("read_file", path="kernel.py")]), Turn(delay_s=30), Turn(delay_s=30)]) as srv:
        out = AgenticOperator(Spec(srv, "anthropic", timeout_s=0.5, max_retries=1),
                              device="interpret").propose(view(), step_ctx(tmp_path))
    assert isinstance(out, GiveUp) and "LLM error" in out.reason and "timeout" in out.reason
    events = [json.loads(l) for l in Path(out.transcript).read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "turn", "tool", "llm_error", "end"]
    assert f"kernel.py: {len(SEED.splitlines())} lines" in events[2]["result"]
    assert out.cost_usd > 0


def test_run_budget_stops_the_step(tmp_path):
    meter = CostMeter(limit_usd=0.001)  # each scripted turn costs $0.0006
    turns = [Turn(calls=[call("list_files")]) for _ in range(5)]
    with FakeLLMServer(turns) as srv:
        op = AgenticOperator(Spec(srv, "openai"), meter=meter, device="interpret")
        out = op.propose(view(), step_ctx(tmp_path))
        assert isinstance(out, GiveUp) and "LLM budget exhausted" in out.reason
        assert len(srv.requests) == 2 and out.cost_usd == pytest.approx(0.0012)
        again = op.propose(view(), step_ctx(tmp_path / "2"))  # the next step stops before any call
        assert isinstance(again, GiveUp) and "budget" in again.reason and len(srv.requests) == 2


def test_turn_limit_hands_over_an_evaluated_improvement(tmp_path, evaluator):
    script = [Turn(calls=[call("edit", path="kernel.py", search="BLOCK_SIZE=256,", replace="BLOCK_SIZE=2048,")]),
              Turn(calls=[call("evaluate")])]
    with FakeLLMServer(script) as srv:
        out = AgenticOperator(Spec(srv, "anthropic", max_steps=2), device="interpret").propose(
            view(latencies={SMALL[0].uuid: 1e6}), step_ctx(tmp_path, evaluator))
    assert isinstance(out, Proposal) and "auto-submitted (turn limit (2) reached)" in out.note
    assert "BLOCK_SIZE=2048," in out.source


def test_submit_refuses_unchanged_and_already_tried_kernels(tmp_path):
    from avo.tasks import source_hash
    tried = SEED.replace("BLOCK_SIZE=256,", "BLOCK_SIZE=512,")
    script = [Turn(calls=[call("submit", note="nothing")]),
              Turn(calls=[call("write_file", path="kernel.py", content=tried), call("submit", note="again")]),
              Turn(calls=[call("give_up", reason="out of ideas")])]
    with FakeLLMServer(script) as srv:
        out = AgenticOperator(Spec(srv, "openai"), device="interpret").propose(
            view(seen_hashes={source_hash(tried)}), step_ctx(tmp_path))
    assert isinstance(out, GiveUp)
    assert "unchanged from the parent" in tool_results(srv, 1)
    assert "already tried on this task" in tool_results(srv, 2)


def _conversation(sizes: list[int]) -> list[Message]:
    msgs = [Message(role="system", text="s" * 2000), Message(role="user", text="step " * 500, pinned=True)]
    for i, size in enumerate(sizes):
        msgs.append(Message(role="assistant", text="t" * 600, tool_calls=[
            ToolCall(id=f"c{i}", name="write_file", arguments={"path": "k.py", "content": "x" * size})]))
        msgs.append(Message(role="tool", tool_call_id=f"c{i}", text=f"result {i}\n" + "y" * size))
    return msgs


def _pairs_intact(msgs: list[Message]) -> bool:
    """Every tool result answers a call of the assistant turn before it, and every call is answered."""
    open_calls: set[str] = set()
    for m in msgs:
        if m.role == "tool":
            if m.tool_call_id not in open_calls:
                return False
            open_calls.discard(m.tool_call_id)
        elif open_calls:
            return False
        if m.role == "assistant":
            open_calls = {c.id for c in m.tool_calls}
    return not open_calls


def test_compaction_cuts_whole_old_turns_after_the_stable_prefix():
    msgs = _conversation([40_000] * 6 + [100] * 4)
    before = [m.model_copy() for m in msgs]
    info = compact(msgs, context_tokens=50_000)
    assert info and info["removed"] >= 2 and estimate_tokens(msgs) <= 0.35 * 50_000
    assert msgs[:2] == before[:2]  # system and step prompt: byte-identical
    note = msgs[2]
    assert note.role == "user" and note.pinned and note.text.startswith("[context compacted")
    assert "write_file(path=k.py, content=xxxx" in note.text and "-> result 0" in note.text
    assert msgs[3:] == before[2 + info["removed"]:]  # the rest untouched, not edited in place
    assert msgs[3].role == "assistant" and _pairs_intact(msgs)
    assert compact(msgs, context_tokens=50_000) is None  # under the limit now: nothing to do

    # A second compaction cuts after the first notice: the prefix up to it stays as it was.
    prefix = [m.model_copy() for m in msgs[:3]]
    for i in range(10, 14):
        msgs += [Message(role="assistant", tool_calls=[ToolCall(id=f"c{i}", name="read_file", arguments={"path": "k.py"})]),
                 Message(role="tool", tool_call_id=f"c{i}", text=f"result {i}\n" + "z" * 40_000)]
    info = compact(msgs, context_tokens=50_000)
    assert info and msgs[:3] == prefix and msgs[3].pinned and msgs[3].text.startswith("[context compacted")
    assert _pairs_intact(msgs) and estimate_tokens(msgs) <= 0.35 * 50_000


def test_compaction_keeps_the_newest_turn_and_cuts_only_its_unsent_results():
    msgs = _conversation([40_000] * 4)
    msgs += [Message(role="assistant", text="read it", tool_calls=[ToolCall(id="big", name="read_file", arguments={"path": "log"})]),
             Message(role="tool", tool_call_id="big", text="head line\n" + "y" * 200_000 + "\ntail line")]
    newest = msgs[-2].model_copy()
    info = compact(msgs, context_tokens=50_000)
    assert info["removed"] == 8 and info["cut_results"] == 1
    assert msgs[-2] == newest and msgs[2].text.startswith("[context compacted") and len(msgs) == 5
    assert msgs[-1].text.startswith("head line") and msgs[-1].text.endswith("tail line")
    assert "characters cut to fit the context window" in msgs[-1].text and estimate_tokens(msgs) <= 0.6 * 50_000


def test_compaction_notices_stay_bounded():
    msgs = _conversation([])
    for round_ in range(6):
        for i in range(4):
            k = f"r{round_}c{i}"
            msgs += [Message(role="assistant", tool_calls=[ToolCall(id=k, name="evaluate", arguments={})]),
                     Message(role="tool", tool_call_id=k, text=f"status: PASSED {k}\n" + "y" * 20_000)]
        compact(msgs, context_tokens=50_000)
        assert _pairs_intact(msgs)
    notes = [m for m in msgs if m.text.startswith("[context compacted")]
    assert 1 <= len(notes) <= 3 and all(m.pinned for m in notes)
    assert "PASSED r4c" in "".join(m.text for m in notes)  # merged notices keep the recent calls


def test_review_proposes_directions(tmp_path):
    recent = [AttemptView(id=f"a{i}", status="REJECTED", accepted=False, note="BLOCK_SIZE tweak", gain=0.001)
              for i in range(6)]
    reply = "Diagnosis: knob moves only.\n- Use a persistent grid over rows.\n- Vectorise bitmask loads (int32 -> 32 tokens)."
    with FakeLLMServer([Turn(text=reply)]) as srv:
        op = AgenticOperator(Spec(srv, "anthropic"), device="interpret")
        res = op.review(view(recent=recent), StepContext(seed=0, workdir=tmp_path))
    assert res.directions == ["Use a persistent grid over rows.", "Vectorise bitmask loads (int32 -> 32 tokens)."]
    assert res.cost_usd > 0 and Path(res.transcript).exists()
    prompt = srv.requests[0].body["messages"][0]["content"][0]["text"]
    assert "6 attempts without an accepted version" in prompt and "a5 REJECTED" in prompt and "def run(" in prompt


def test_evolve_local_commits_an_agentic_proposal(tmp_path):
    """The whole path: an agentic island in a short local run; the gate re-measures the agent's
    kernel against the seed and commits it with the agent's note and transcript."""
    from avo.config import AgenticSpec, BudgetConfig, GateConfig, RunConfig
    from avo.ui.run import evolve_local
    from avo.lineage import Lineage
    script = [Turn(calls=[call("read_file", path="kernel.py")]),
              Turn(calls=[call("edit", path="kernel.py", search="BLOCK_SIZE=256,", replace="BLOCK_SIZE=2048,")]),
              Turn(calls=[call("evaluate")]),
              Turn(calls=[call("submit", note="one program per row: BLOCK_SIZE 2048")]),
              Turn(calls=[call("submit", note="one program per row: BLOCK_SIZE 2048")])]
    with FakeLLMServer(script) as srv:
        agent = AgenticSpec(name="claude", provider="openai", model="fake-model", base_url=srv.openai_url,
                            api_key_env="AVO_TEST_AGENT_KEY", max_steps=8, price_in_per_mtok=3.0, price_out_per_mtok=15.0)
        cfg = RunConfig(run="agentic-e2e", lineage_dir=tmp_path / "lineage", tasks=["grammar_bitmask"],
                        workloads={"grammar_bitmask": [SMALL[0].uuid]}, operators=[agent],
                        budget=BudgetConfig(wall_minutes=None, attempts=1, llm_usd=1.0),
                        gate=GateConfig(min_gain=0.05, rounds=2), device="interpret")
        code = evolve_local(cfg, live=False)
    assert code == 0 and srv.remaining == 0
    with Lineage.open(tmp_path / "lineage") as lin:
        head = lin.head("grammar_bitmask", 0)
        attempts = lin.attempts()
    assert head.meta.kind == "version" and head.meta.operator == "claude", head.meta
    assert head.meta.note == "one program per row: BLOCK_SIZE 2048" and "BLOCK_SIZE=2048," in head.source
    assert head.meta.cost_usd == pytest.approx(5 * (100 * 3 + 20 * 15) / 1e6)
    assert head.meta.transcript and Path(head.meta.transcript).exists()
    (rec,) = attempts
    assert rec.accepted and rec.commit == head.sha and rec.transcript == head.meta.transcript
    events = [json.loads(l)["event"] for l in Path(rec.transcript).read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "end" and events.count("tool") == 5


@pytest.mark.gpu
def test_profile_tool_summarises_ncu_on_the_gpu(tmp_path):
    """On a GPU with ncu, the profile tool is registered and reports the candidate's kernel."""
    from avo.operators.profile import make_profiler, ncu_available
    from avo.operators.tools import ProfileArgs, ToolEnv, profile, tools_for
    assert ncu_available(), "this GPU test needs ncu on PATH"
    env = ToolEnv(workspace=tmp_path, view=view(), ctx=StepContext(seed=0, workdir=tmp_path), parent_source=SEED,
                  profiler=make_profiler("grammar_bitmask"))
    (tmp_path / "kernel.py").write_text(SEED)
    assert "profile" in [t.name for t in tools_for(env)]
    out = profile(env, ProfileArgs(workload="gpu_b512_v151936_float32"))
    print(out)
    assert "workload gpu_b512_v151936_float32" in out and "_bitmask_kernel" in out
    assert "Duration" in out and "Memory Throughput" in out


def test_evolve_review_directions_reach_the_next_step(tmp_path):
    """A stagnant agentic island: the supervisor's LLM review proposes directions, they are
    logged as an intervention and appear in the next step's prompt."""
    from avo.config import AgenticSpec, BudgetConfig, RunConfig, SupervisorConfig
    from avo.ui.run import evolve_local
    from avo.lineage import Lineage
    script = [Turn(calls=[call("give_up", reason="no idea")]),
              Turn(text="Knob moves stall.\n- Load each bitmask word once per 32 tokens.\n- Persistent grid over rows."),
              Turn(calls=[call("give_up", reason="still no idea")]),
              Turn(text="- Split long rows over several programs.")]  # the review after the last attempt
    with FakeLLMServer(script) as srv:
        agent = AgenticSpec(name="claude", provider="anthropic", model="fake-model", base_url=srv.anthropic_url,
                            api_key_env="AVO_TEST_AGENT_KEY", max_retries=0)
        cfg = RunConfig(run="agentic-review", lineage_dir=tmp_path / "lineage", tasks=["grammar_bitmask"],
                        workloads={"grammar_bitmask": [SMALL[0].uuid]}, operators=[agent],
                        budget=BudgetConfig(wall_minutes=None, attempts=2),
                        supervisor=SupervisorConfig(stagnation_k=1, review_operator="claude"), device="interpret")
        assert evolve_local(cfg, live=False) == 0
    assert srv.remaining == 0
    review_prompt = srv.requests[1].body["messages"][0]["content"][0]["text"]
    assert "Review its trajectory" in review_prompt and "GAVE_UP" in review_prompt and "no idea" in review_prompt
    step2 = srv.requests[2].body["messages"][0]["content"][0]["text"]
    assert "- Load each bitmask word once per 32 tokens.\n- Persistent grid over rows." in step2
    with Lineage.open(tmp_path / "lineage") as lin:
        reviews = [iv for iv in lin.interventions() if iv["kind"] == "review"]
    assert reviews and reviews[0]["directions"] == ["Load each bitmask word once per 32 tokens.", "Persistent grid over rows."]
    assert reviews[0]["cost_usd"] > 0
