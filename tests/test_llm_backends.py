"""The three backend shapes (Anthropic Messages, OpenAI chat completions, OpenAI Responses)
through the real SDK clients against the scripted server on 127.0.0.1: streamed and plain
answers, a reasoning model refusing `temperature`, answers cut at the output budget, a long edit
streamed past an idle timeout shorter than the answer, thinking blocks and reasoning items
carried across tool turns, usage and cache accounting, and compaction that keeps the cached
prefix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from avo.operators.llm import LLMError, LLMSpec, Message, ToolSpec, llm_spec_from
from avo.operators.providers import make_client
from fake_llm_server import FakeLLMServer, Turn, call, signature

SHAPES = ["anthropic", "chat", "responses"]
KEY = "sk-avo-backend-test-77a1"
READ = ToolSpec(name="read_file", description="read a file",
                parameters={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})
WRITE = ToolSpec(name="write_file", description="write a file",
                 parameters={"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                             "required": ["path", "content"]})
BUDGET_PARAM = {"anthropic": "max_tokens", "chat": "max_completion_tokens", "responses": "max_output_tokens"}
# A full rewrite of a large kernel: ~36k characters, about 9k tokens (the decode-layer seed's size).
LONG_KERNEL = "".join(f"    acc{i % 97} = tl.load(ptr + offs * {i}) * scale  # line {i} of a long kernel\n"
                      for i in range(520))


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("AVO_TEST_LLM_KEY", KEY)


def spec_for(srv: FakeLLMServer, shape: str, **kw) -> LLMSpec:
    base = srv.anthropic_url if shape == "anthropic" else srv.openai_url
    defaults = dict(provider="anthropic" if shape == "anthropic" else "openai", api="responses" if shape == "responses" else "chat",
                    model="fake-model", base_url=base, api_key_env="AVO_TEST_LLM_KEY", backoff_s=0.05, timeout_s=10,
                    max_retries=2, price_input_per_mtok=3.0, price_output_per_mtok=15.0)
    return LLMSpec(**{**defaults, **kw})


def assistant(turn) -> Message:
    return Message(role="assistant", text=turn.text, tool_calls=turn.tool_calls, opaque=turn.opaque, opaque_api=turn.opaque_api)


def results(turn, text="RESULT") -> list[Message]:
    return [Message(role="tool", tool_call_id=c.id, text=text) for c in turn.tool_calls]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_round_trips_a_tool_turn(shape, stream):
    with FakeLLMServer([Turn(text="reading", calls=[call("read_file", path="kernel.py")]),
                        Turn(text="done", input_tokens=300, output_tokens=40)]) as srv:
        client = make_client(spec_for(srv, shape, stream=stream))
        msgs = [Message(role="system", text="be brief"), Message(role="user", text="go", pinned=True)]
        t1 = client.chat(msgs, [READ])
        assert t1.text == "reading" and [(c.name, c.arguments) for c in t1.tool_calls] == [("read_file", {"path": "kernel.py"})]
        assert t1.usage.input_tokens == 100 and t1.usage.output_tokens == 20 and t1.context_tokens == 120
        assert t1.cost_usd == pytest.approx((100 * 3 + 20 * 15) / 1e6) and not t1.truncated
        msgs += [assistant(t1), *results(t1, "FILE CONTENT")]
        t2 = client.chat(msgs, [READ])
        assert t2.text == "done" and not t2.tool_calls and t2.cost_usd == pytest.approx((300 * 3 + 40 * 15) / 1e6)
    assert not srv.refusals and srv.remaining == 0
    first, second = (r.body for r in srv.requests)
    assert bool(first.get("stream")) == stream and first[BUDGET_PARAM[shape]] == 32_000
    assert "temperature" not in first and ("max_tokens" not in first or shape == "anthropic")
    if shape == "chat" and stream:
        assert first["stream_options"] == {"include_usage": True}
    if shape == "responses":
        assert first["store"] is False and first["instructions"] == "be brief" and first["input"] == [{"role": "user", "content": "go"}]
        assert first["tools"] == [{"type": "function", "name": "read_file", "description": "read a file",
                                   "parameters": READ.parameters, "strict": False}]
        assert second["input"][1:] == [{"role": "assistant", "content": "reading"},
                                       {"type": "function_call", "call_id": t1.tool_calls[0].id, "name": "read_file",
                                        "arguments": '{"path": "kernel.py"}'},
                                       {"type": "function_call_output", "call_id": t1.tool_calls[0].id, "output": "FILE CONTENT"}]
    if shape == "anthropic":
        assert second["messages"][1] == {"role": "assistant", "content": [
            {"type": "text", "text": "reading"},
            {"type": "tool_use", "id": t1.tool_calls[0].id, "name": "read_file", "input": {"path": "kernel.py"}}]}
        # cache breakpoints: the system prompt, the pinned step prompt, the last block
        assert second["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert second["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
        assert second["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


def test_server_refuses_reasoning_model_parameters_as_openai_does():
    """What avo's earlier requests got from o-series / GPT-5: the SDK's BadRequestError with
    OpenAI's param and code, and no turn consumed."""
    import openai
    with FakeLLMServer([Turn(text="ok")]) as srv:
        raw = openai.OpenAI(api_key="k", base_url=srv.openai_url, max_retries=0)
        hi = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.BadRequestError) as e1:
            raw.chat.completions.create(model="o3", messages=hi, max_tokens=8192)
        with pytest.raises(openai.BadRequestError) as e2:
            raw.chat.completions.create(model="gpt-5", messages=hi, max_completion_tokens=8192, temperature=0.7)
        with pytest.raises(openai.BadRequestError) as e3:
            raw.responses.create(model="o4-mini", input="hi", temperature=0.7)
        assert raw.chat.completions.create(model="gpt-5", messages=hi, max_completion_tokens=8192).choices[0].message.content == "ok"
    assert (e1.value.param, e1.value.code) == ("max_tokens", "unsupported_parameter")
    assert (e2.value.param, e2.value.code) == ("temperature", "unsupported_value")
    assert (e3.value.param, e3.value.code) == ("temperature", "unsupported_parameter")
    assert "Use 'max_completion_tokens' instead" in str(e1.value) and srv.remaining == 0


@pytest.mark.parametrize("shape", ["chat", "responses"])
def test_reasoning_model_gets_no_sampling_parameters(shape):
    with FakeLLMServer([Turn(text="ok")]) as srv:
        turn = make_client(spec_for(srv, shape, model="o3-mini", temperature=0.7, reasoning_effort="high")).chat(
            [Message(role="user", text="hi")], [])
    body = srv.requests[0].body
    assert turn.text == "ok" and not srv.refusals and not turn.retries
    assert "temperature" not in body and "max_tokens" not in body
    if shape == "chat":
        assert body["max_completion_tokens"] == 32_000 and body["reasoning_effort"] == "high"
    else:
        assert body["reasoning"] == {"effort": "high"} and body["include"] == ["reasoning.encrypted_content"]


@pytest.mark.parametrize("shape", ["chat", "responses"])
def test_reasoning_model_refusing_temperature_is_answered_without_it(shape):
    """A model the client does not know as a reasoning model (sampling: on) sends temperature;
    the server refuses it with OpenAI's 400 and the call is made again without it, and so is
    every later call."""
    with FakeLLMServer([Turn(text="first"), Turn(text="second")], reasoning_models=("my-reasoner",)) as srv:
        client = make_client(spec_for(srv, shape, model="my-reasoner-2", temperature=0.7, sampling="on"))
        t1 = client.chat([Message(role="user", text="hi")], [])
        t2 = client.chat([Message(role="user", text="again")], [])
    assert (t1.text, t2.text) == ("first", "second")
    (i, message), = srv.refusals
    assert i == 0 and ("Unsupported value: 'temperature'" in message if shape == "chat"
                       else "Unsupported parameter: 'temperature'" in message)
    assert "refused 'temperature'" in t1.retries[0].error and t1.retries[0].wait_s == 0
    assert [("temperature" in r.body) for r in srv.requests] == [True, False, False]
    assert client.refused == {"temperature"}


def test_server_refusing_newer_parameters_gets_the_older_ones():
    with FakeLLMServer([Turn(text="ok", thinking="vLLM-style reasoning")],
                       refuse=("max_completion_tokens", "stream_options")) as srv:
        turn = make_client(spec_for(srv, "chat")).chat([Message(role="user", text="hi")], [])
    assert turn.text == "ok" and turn.thinking == "vLLM-style reasoning" and len(srv.refusals) == 2
    last = srv.requests[-1].body
    assert last["max_tokens"] == 32_000 and "max_completion_tokens" not in last and "stream_options" not in last
    assert turn.usage.total == 0 and turn.context_tokens == 0  # no usage chunk without include_usage: size unknown


def test_anthropic_temperature_only_without_thinking():
    with FakeLLMServer([Turn(text="a"), Turn(text="b")]) as srv:
        make_client(spec_for(srv, "anthropic", temperature=0.3)).chat([Message(role="user", text="hi")], [])
        make_client(spec_for(srv, "anthropic", temperature=0.3, thinking_adaptive=True)).chat([Message(role="user", text="hi")], [])
    plain, thinking = (r.body for r in srv.requests)
    assert plain["temperature"] == 0.3 and "thinking" not in plain
    assert "temperature" not in thinking and thinking["thinking"] == {"type": "adaptive"}


def test_reasoning_families_are_configurable():
    with FakeLLMServer([Turn(text="ok")], reasoning_models=("my-reasoner",)) as srv:
        spec = spec_for(srv, "chat", model="my-reasoner-2", temperature=0.7, reasoning_models=["^my-reasoner"])
        assert spec.reasoning_model() and not spec.sampling_allowed()
        make_client(spec).chat([Message(role="user", text="hi")], [])
    assert "temperature" not in srv.requests[0].body and not srv.refusals
    for model in ("o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5.1-codex", "openai/gpt-5-mini"):
        assert LLMSpec(provider="openai", model=model).reasoning_model(), model
    for model in ("gpt-4.1", "gpt-4o", "llama-3.1-70b", "claude-sonnet-4-5"):
        assert not LLMSpec(provider="openai", model=model).reasoning_model(), model
    assert LLMSpec(provider="openai", model="gpt-4.1", temperature=0.2).sampling_allowed()
    assert not LLMSpec(provider="openai", model="gpt-4.1", temperature=0.2, sampling="off").sampling_allowed()


@pytest.mark.parametrize("shape", SHAPES)
def test_cut_tool_call_is_asked_again_with_double_the_budget(shape):
    big = call("write_file", path="kernel.py", content=LONG_KERNEL)
    with FakeLLMServer([Turn(calls=[big], output_tokens=40_000), Turn(calls=[big], output_tokens=40_000)]) as srv:
        turn = make_client(spec_for(srv, shape)).chat([Message(role="user", text="rewrite it")], [WRITE])
    assert not turn.truncated and turn.tool_calls[0].arguments == {"path": "kernel.py", "content": LONG_KERNEL}
    assert [r.body[BUDGET_PARAM[shape]] for r in srv.requests] == [32_000, 64_000]
    assert [(t.action, t.budget, t.next_budget) for t in turn.truncations] == [("retry", 32_000, 64_000)]
    assert turn.usage.output_tokens == 32_000 + 40_000  # both calls are paid for
    assert turn.cost_usd == pytest.approx((200 * 3 + 72_000 * 15) / 1e6)


@pytest.mark.parametrize("shape", SHAPES)
def test_answer_still_cut_at_the_cap_comes_back_truncated_without_its_call(shape):
    big = call("write_file", path="kernel.py", content=LONG_KERNEL)
    with FakeLLMServer([Turn(text="Rewriting.", calls=[big], output_tokens=90_000)] * 2) as srv:
        turn = make_client(spec_for(srv, shape)).chat([Message(role="user", text="rewrite it")], [WRITE])
    assert turn.truncated and turn.tool_calls == [] and turn.opaque == [] and turn.text == "Rewriting."
    assert [t.action for t in turn.truncations] == ["retry", "gave_up"] and turn.truncations[-1].budget == 64_000
    assert turn.stop_reason in ("max_tokens", "length", "incomplete:max_output_tokens")


def test_larger_budget_refused_returns_the_cut_answer_and_its_cost():
    big = call("write_file", path="kernel.py", content=LONG_KERNEL)
    with FakeLLMServer([Turn(text="Rewriting.", calls=[big], output_tokens=40_000), Turn(status=400)]) as srv:
        turn = make_client(spec_for(srv, "chat")).chat([Message(role="user", text="rewrite it")], [WRITE])
    assert turn.truncated and turn.text == "Rewriting." and turn.tool_calls == []
    assert [t.action for t in turn.truncations] == ["retry", "gave_up"] and "400" in turn.truncations[1].error
    assert turn.usage.output_tokens == 32_000 and turn.cost_usd > 0.4


def test_cut_text_is_continued_with_a_prefill():
    first = "Plan: " + "the loads coalesce along the vocabulary axis; " * 40
    with FakeLLMServer([Turn(text=first + "then", output_tokens=10_000), Turn(text=" submit.")]) as srv:
        spec = spec_for(srv, "anthropic", max_output_tokens=8000, max_output_tokens_cap=8000)
        turn = make_client(spec).chat([Message(role="user", text="plan")], [])
    prefill = srv.requests[1].body["messages"][-1]
    assert prefill["role"] == "assistant" and not prefill["content"][0]["text"].endswith(" ")  # the API refuses that
    assert [t.action for t in turn.truncations] == ["continue"] and not turn.truncated and not srv.refusals
    assert turn.text == prefill["content"][0]["text"] + " submit." and turn.text.startswith("Plan: the loads")
    assert turn.usage.output_tokens == 8000 + 20


def test_model_without_prefill_falls_back_to_a_larger_budget():
    text = "x " * 2000
    with FakeLLMServer([Turn(text=text, output_tokens=40_000), Turn(text=text, output_tokens=40_000)], prefill=False) as srv:
        turn = make_client(spec_for(srv, "anthropic")).chat([Message(role="user", text="go")], [])
    assert not turn.truncated and turn.text == text
    assert [t.action for t in turn.truncations] == ["continue", "retry"]
    assert "does not support assistant message prefill" in turn.truncations[1].error
    assert [r.body["max_tokens"] for r in srv.requests] == [32_000, 32_000, 64_000]


@pytest.mark.parametrize("shape", SHAPES)
def test_streamed_long_edit_outlasts_the_idle_timeout(shape):
    """A ~9k-token rewrite streamed over ~1.5 s with an idle timeout of 0.5 s: the timeout is
    between bytes, not for the whole answer."""
    big = call("write_file", path="kernel.py", content=LONG_KERNEL)
    with FakeLLMServer([Turn(calls=[big], output_tokens=9000, chunk_delay_s=0.01, delta_chars=256)]) as srv:
        turn = make_client(spec_for(srv, shape, timeout_s=0.5, max_retries=0)).chat([Message(role="user", text="go")], [WRITE])
    assert turn.tool_calls[0].arguments["content"] == LONG_KERNEL and not turn.retries
    assert turn.latency_s > 1.0 and turn.usage.output_tokens == 9000


@pytest.mark.parametrize("shape", SHAPES)
def test_stream_that_stalls_is_retried(shape):
    with FakeLLMServer([Turn(text="never finished", stall_after=3), Turn(text="ok")]) as srv:
        turn = make_client(spec_for(srv, shape, timeout_s=0.5)).chat([Message(role="user", text="go")], [])
    assert turn.text == "ok" and "timeout" in turn.retries[0].error and len(srv.requests) == 2


def test_error_event_inside_a_stream_is_retried():
    with FakeLLMServer([Turn(text="partial", stream_error="overloaded_error"), Turn(text="ok")]) as srv:
        turn = make_client(spec_for(srv, "anthropic")).chat([Message(role="user", text="go")], [])
    assert turn.text == "ok" and "overloaded_error" in turn.retries[0].error


def test_thinking_blocks_go_back_verbatim_across_tool_turns():
    script = [Turn(thinking="The kernel reads the mask twice; read it first.", text="Reading.",
                   calls=[call("read_file", path="kernel.py")]),
              Turn(thinking="One load per word is enough.", calls=[call("read_file", path="notes.md")]),
              Turn(thinking="Done.", text="All read.")]
    with FakeLLMServer(script) as srv:
        client = make_client(spec_for(srv, "anthropic", thinking_budget_tokens=4096, max_output_tokens=16_000,
                                      temperature=0.5, reasoning_effort="high"))
        msgs = [Message(role="system", text="sys"), Message(role="user", text="go", pinned=True)]
        for _ in range(3):
            turn = client.chat(msgs, [READ])
            msgs += [assistant(turn), *results(turn)]
    assert not srv.refusals and srv.remaining == 0 and turn.text == "All read." and turn.thinking == "Done."
    first, second, third = (r.body for r in srv.requests)
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 4096} and first["max_tokens"] == 16_000
    assert "temperature" not in first and "temperature" not in json.dumps(first)  # thinking refuses sampling
    assert first["output_config"] == {"effort": "high"}
    sent = second["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": script[0].thinking, "signature": signature(script[0].thinking)}
    assert [b["type"] for b in sent] == ["thinking", "text", "tool_use"]
    assert third["messages"][1]["content"] == sent and third["messages"][3]["content"][0]["type"] == "thinking"


def test_thinking_blocks_left_out_are_refused_as_the_api_does():
    with FakeLLMServer([Turn(thinking="plan", calls=[call("read_file", path="k")]), Turn(text="never")]) as srv:
        client = make_client(spec_for(srv, "anthropic", thinking_budget_tokens=2048))
        msgs = [Message(role="user", text="go")]
        turn = client.chat(msgs, [READ])
        msgs += [Message(role="assistant", text=turn.text, tool_calls=turn.tool_calls), *results(turn)]  # no opaque
        with pytest.raises(LLMError, match="must start with a thinking block"):
            client.chat(msgs, [READ])
        tampered = [dict(b) for b in turn.opaque]
        tampered[0]["thinking"] = "a different plan"
        msgs[1] = assistant(turn).model_copy(update={"opaque": tampered})
        with pytest.raises(LLMError, match="Invalid `signature`"):
            client.chat(msgs, [READ])
    assert srv.remaining == 1


def test_reasoning_items_go_back_on_the_next_request():
    script = [Turn(thinking="Check the mask layout first.", text="Reading.", calls=[call("read_file", path="kernel.py")]),
              Turn(text="done")]
    with FakeLLMServer(script) as srv:
        client = make_client(spec_for(srv, "responses", model="gpt-5", reasoning_summary="auto"))
        msgs = [Message(role="system", text="sys"), Message(role="user", text="go")]
        t1 = client.chat(msgs, [READ])
        client.chat(msgs + [assistant(t1), *results(t1)], [READ])
    assert not srv.refusals and t1.thinking == "Check the mask layout first." and t1.usage.reasoning_tokens > 0
    first, second = (r.body for r in srv.requests)
    assert first["include"] == ["reasoning.encrypted_content"] and first["reasoning"] == {"summary": "auto"}
    reasoning, message, fcall, output = second["input"][1:]
    assert reasoning["type"] == "reasoning" and reasoning["encrypted_content"] in srv.encrypted and "id" not in reasoning
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Check the mask layout first."}]
    assert message == {"role": "assistant", "content": "Reading."}
    assert fcall["type"] == "function_call" and "id" not in fcall and output["type"] == "function_call_output"


def test_item_ids_are_refused_when_nothing_is_stored():
    """The check the client's id-free items pass: the server refuses what a stateless request cannot carry."""
    with FakeLLMServer([Turn(thinking="x", calls=[call("read_file", path="k")]), Turn(text="never")]) as srv:
        client = make_client(spec_for(srv, "responses", model="gpt-5"))
        t1 = client.chat([Message(role="user", text="go")], [READ])
        bad = [dict(t1.opaque[0], id="rs_2")] + t1.opaque[1:]
        msgs = [Message(role="user", text="go"), assistant(t1).model_copy(update={"opaque": bad}), *results(t1)]
        with pytest.raises(LLMError, match="Items are not persisted when `store` is set to false"):
            client.chat(msgs, [READ])


@pytest.mark.parametrize("shape", SHAPES)
def test_usage_reports_cache_reads_and_prices_them(shape):
    with FakeLLMServer([Turn(text="a", calls=[call("read_file", path="k")], input_tokens=None),
                        Turn(text="b", input_tokens=None)], emulate_cache=True) as srv:
        client = make_client(spec_for(srv, shape))
        msgs = [Message(role="system", text="system prompt " * 300), Message(role="user", text="step " * 300, pinned=True)]
        t1 = client.chat(msgs, [READ])
        t2 = client.chat(msgs + [assistant(t1), *results(t1)], [READ])
    assert t1.usage.cache_read_tokens == 0 and t2.usage.cache_read_tokens > 1000
    if shape == "anthropic":
        assert t1.usage.cache_write_tokens > 1000  # written at the breakpoints, read back next time
    u = t2.usage
    assert t2.context_tokens == u.input_tokens + u.cache_read_tokens + u.cache_write_tokens + u.output_tokens
    write_price = 1.25 * 3 if shape == "anthropic" else 3
    assert t2.cost_usd == pytest.approx((u.input_tokens * 3 + u.cache_read_tokens * 0.3
                                         + u.cache_write_tokens * write_price + u.output_tokens * 15) / 1e6)


def test_config_reaches_the_backend():
    from avo.config import AgenticSpec
    s = llm_spec_from(AgenticSpec(model="gpt-5", provider="openai", api="responses", reasoning_effort="medium",
                                  max_tokens=16_000, max_tokens_cap=100_000, sampling="off", timeout_s=120,
                                  price_cache_read_per_mtok=0.125))
    assert (s.api, s.reasoning_effort, s.max_output_tokens, s.max_output_tokens_cap, s.sampling, s.timeout_s,
            s.price_cache_read_per_mtok) == ("responses", "medium", 16_000, 100_000, "off", 120, 0.125)
    d = llm_spec_from(AgenticSpec(model="claude-sonnet-4-5", thinking_budget_tokens=8000))
    assert d.thinking and d.stream and d.temperature is None and d.max_output_tokens == 32_000
    assert d.reasoning_models == LLMSpec().reasoning_models
    with pytest.raises(ValueError, match="must be below max_tokens"):
        AgenticSpec(model="m", thinking_budget_tokens=8000, max_tokens=4000)


class _Spec:
    def __init__(self, srv: FakeLLMServer, shape: str, **kw):
        self.name, self.model = "agentic", "fake-model"
        self.provider = "anthropic" if shape == "anthropic" else "openai"
        self.api = "responses" if shape == "responses" else "chat"
        self.base_url = srv.anthropic_url if shape == "anthropic" else srv.openai_url
        self.api_key_env = "AVO_TEST_LLM_KEY"
        self.max_steps, self.context_tokens = 20, 200_000
        self.price_in_per_mtok, self.price_out_per_mtok = 3.0, 15.0
        self.timeout_s, self.max_retries, self.backoff_s = 10.0, 1, 0.05
        self.__dict__.update(kw)


def _step(tmp_path: Path, srv: FakeLLMServer, shape: str, **kw):
    from avo.operators.agentic import AgenticOperator
    from avo.operators.base import LineageView, StepContext, VersionView
    from avo.tasks import REPO_ROOT
    seed = (REPO_ROOT / "kernels/grammar/bitmask_seed.py").read_text()
    view = LineageView(task="grammar_bitmask", island=0, best=VersionView(commit="a1b2c3d4e5", source=seed, note="seed"))
    out = AgenticOperator(_Spec(srv, shape, **kw), device="interpret").propose(view, StepContext(seed=0, workdir=tmp_path))
    return out, [json.loads(l) for l in Path(out.transcript).read_text().splitlines()]


@pytest.mark.parametrize("shape", ["anthropic", "chat"])
def test_compaction_in_a_step_keeps_the_cached_prefix(tmp_path, shape):
    """A step that reads the kernel again and again in a small context window: compaction
    triggers from the server's own token counts, removes whole turns after the step prompt, and
    the next request still reads the prefix (tools, system, step prompt) from the cache."""
    reads = [Turn(calls=[call("read_file", path="kernel.py")], input_tokens=None) for _ in range(7)]
    with FakeLLMServer(reads + [Turn(calls=[call("give_up", reason="enough")], input_tokens=None)], emulate_cache=True) as srv:
        out, events = _step(tmp_path, srv, shape, context_tokens=16_000)
    assert out.reason == "enough" and not srv.refusals and srv.remaining == 0  # pairs intact, as the API checks
    compactions = [e for e in events if e["event"] == "compact"]
    assert compactions and all(e["basis"] == "usage" and e["removed"] >= 2 for e in compactions)
    turns = [e for e in events if e["event"] == "turn"]
    assert max(t["context_tokens"] for t in turns) <= 16_000
    first = srv.requests[0].body
    prefix_chars = len(json.dumps(first.get("tools"))) + len(json.dumps(first.get("system") or first["messages"][0]))
    for i, req in enumerate(srv.requests[1:], 1):
        b = req.body
        if shape == "anthropic":
            assert b["system"] == first["system"] and b["tools"] == first["tools"]
            step = {k: v for k, v in b["messages"][0]["content"][0].items() if k != "cache_control"}
            assert step == {k: v for k, v in first["messages"][0]["content"][0].items() if k != "cache_control"}
        else:
            assert b["messages"][:2] == first["messages"][:2] and b["tools"] == first["tools"]
        assert turns[i]["usage"]["cache_read_tokens"] >= prefix_chars // 4 * 0.9, (i, turns[i]["usage"])
    after = next(i for i, r in enumerate(srv.requests) if "[context compacted" in json.dumps(r.body["messages"]))
    assert turns[after]["usage"]["cache_read_tokens"] < turns[after - 1]["usage"]["cache_read_tokens"]  # the cut
    assert turns[after + 1]["usage"]["cache_read_tokens"] > turns[after]["usage"]["cache_read_tokens"]  # cached again


def test_compaction_follows_the_reported_usage_not_characters(tmp_path):
    """Short messages, but the server reports a prompt of 150k tokens in a 200k window: the next
    turn compacts (the character estimate would say ~3k)."""
    script = [Turn(calls=[call("list_files")]), Turn(calls=[call("list_files")], input_tokens=150_000),
              Turn(calls=[call("give_up", reason="done")])]
    with FakeLLMServer(script) as srv:
        out, events = _step(tmp_path, srv, "anthropic")
    (c,) = [e for e in events if e["event"] == "compact"]
    assert c["basis"] == "usage" and c["size_before"] > 150_000 and c["removed"] == 2
    assert "[context compacted: 2 earlier messages" in json.dumps(srv.requests[2].body["messages"])


def test_agentic_step_with_thinking_records_it_and_stays_valid(tmp_path):
    script = [Turn(thinking="Look at the launch first.", calls=[call("read_file", path="kernel.py")]),
              Turn(thinking="Nothing cheap to change.", calls=[call("give_up", reason="no idea")])]
    with FakeLLMServer(script) as srv:
        out, events = _step(tmp_path, srv, "anthropic", thinking_budget_tokens=2048, max_tokens=8000)
    assert out.reason == "no idea" and not srv.refusals
    turns = [e for e in events if e["event"] == "turn"]
    assert [t["thinking"] for t in turns] == ["Look at the launch first.", "Nothing cheap to change."]
    assert all(t["cost_usd"] > 0 and t["usage"]["output_tokens"] == 20 for t in turns)
    assert srv.requests[1].body["messages"][1]["content"][0]["type"] == "thinking"
    assert all(KEY not in f.read_text() for f in tmp_path.rglob("*.jsonl"))


def test_truncated_turn_tells_the_agent_to_work_in_smaller_pieces(tmp_path):
    big = call("write_file", path="kernel.py", content=LONG_KERNEL)
    script = [Turn(calls=[big], output_tokens=200_000)] * 2 + [Turn(calls=[call("give_up", reason="too big")])]
    with FakeLLMServer(script) as srv:
        out, events = _step(tmp_path, srv, "chat")
    assert out.reason == "too big"
    t1 = next(e for e in events if e["event"] == "turn")
    assert t1["truncated"] and t1["tool_calls"] == [] and [t["action"] for t in t1["truncations"]] == ["retry", "gave_up"]
    assert "cut off at the output limit" in srv.requests[2].body["messages"][-1]["content"]
    assert (tmp_path / "workspace" / "kernel.py").read_text() != LONG_KERNEL  # the cut call never ran
