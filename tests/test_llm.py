"""LLM backends through the real Anthropic and OpenAI SDK clients against the scripted server
on 127.0.0.1: request/response formats, tool schemas, retries with backoff, timeouts, errors,
cost accounting and the budget cap."""
from __future__ import annotations

import time

import pytest

from avo.operators.llm import BudgetExhausted, CostMeter, LLMError, LLMSpec, Message, ToolCall, ToolSpec
from avo.operators.providers import anthropic_messages, make_client
from avo.operators.tools import ALL_TOOLS
from fake_llm_server import Call, FakeLLMServer, Turn, call

PROVIDERS = ["anthropic", "openai"]
KEY = "sk-avo-test-4f1c9e7d2b"
READ = ToolSpec(name="read_file", description="read a file",
                parameters={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})


def spec_for(srv: FakeLLMServer, provider: str, **kw) -> LLMSpec:
    base = srv.anthropic_url if provider == "anthropic" else srv.openai_url
    defaults = dict(provider=provider, model="fake-model", base_url=base, api_key_env="AVO_TEST_LLM_KEY",
                    backoff_s=0.05, timeout_s=10, max_retries=3, price_input_per_mtok=3.0, price_output_per_mtok=15.0)
    return LLMSpec(**{**defaults, **kw})


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("AVO_TEST_LLM_KEY", KEY)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_call_round_trip(provider):
    with FakeLLMServer([Turn(text="reading", calls=[call("read_file", path="kernel.py")]),
                        Turn(text="done", input_tokens=300, output_tokens=40)]) as srv:
        client = make_client(spec_for(srv, provider))
        msgs = [Message(role="system", text="be brief"), Message(role="user", text="go")]
        t1 = client.chat(msgs, [READ])
        assert t1.text == "reading"
        assert [(c.name, c.arguments) for c in t1.tool_calls] == [("read_file", {"path": "kernel.py"})]
        assert t1.usage.input_tokens == 100 and t1.usage.output_tokens == 20
        assert t1.cost_usd == pytest.approx((100 * 3 + 20 * 15) / 1e6)
        msgs += [Message(role="assistant", text=t1.text, tool_calls=t1.tool_calls),
                 Message(role="tool", tool_call_id=t1.tool_calls[0].id, text="FILE CONTENT")]
        t2 = client.chat(msgs, [READ])
        assert t2.text == "done" and not t2.tool_calls
        assert t2.cost_usd == pytest.approx((300 * 3 + 40 * 15) / 1e6)
    first, second = srv.requests
    assert first.headers.get("authorization") == f"Bearer {KEY}" or first.headers.get("x-api-key") == KEY
    body = second.body
    assert body["model"] == "fake-model"
    if provider == "anthropic":
        assert first.path == "/v1/messages"
        assert body["system"][0]["text"] == "be brief"
        assert body["tools"] == [{"name": "read_file", "description": "read a file", "input_schema": READ.parameters}]
        user_blocks = body["messages"][-1]["content"]
        assert user_blocks[0]["type"] == "tool_result"
        assert user_blocks[0]["tool_use_id"] == t1.tool_calls[0].id and user_blocks[0]["content"] == "FILE CONTENT"
        assert body["messages"][1]["content"][1] == {"type": "tool_use", "id": t1.tool_calls[0].id,
                                                     "name": "read_file", "input": {"path": "kernel.py"}}
    else:
        assert first.path == "/v1/chat/completions"
        assert body["messages"][0] == {"role": "system", "content": "be brief"}
        assert body["tools"] == [{"type": "function", "function": {"name": "read_file", "description": "read a file",
                                                                   "parameters": READ.parameters}}]
        assert body["messages"][-1] == {"role": "tool", "tool_call_id": t1.tool_calls[0].id, "content": "FILE CONTENT"}
        assert body["messages"][-2]["tool_calls"][0]["function"] == {"name": "read_file", "arguments": '{"path": "kernel.py"}'}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_429_and_503_are_retried_with_backoff(provider):
    with FakeLLMServer([Turn(status=429), Turn(status=503), Turn(text="ok")]) as srv:
        turn = make_client(spec_for(srv, provider, backoff_s=0.2)).chat([Message(role="user", text="hi")], [])
    assert turn.text == "ok"
    assert [r.wait_s for r in turn.retries] == [0.2, 0.4]  # exponential
    assert "429" in turn.retries[0].error and "503" in turn.retries[1].error
    t = [r.t for r in srv.requests]
    assert len(t) == 3
    assert t[1] - t[0] >= 0.19 and t[2] - t[1] >= 0.39  # the waits really happened


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_header_is_honoured(provider):
    with FakeLLMServer([Turn(status=429, retry_after="0.5"), Turn(text="ok")]) as srv:
        turn = make_client(spec_for(srv, provider, backoff_s=0.01)).chat([Message(role="user", text="hi")], [])
    assert turn.retries[0].wait_s == 0.5
    assert srv.requests[1].t - srv.requests[0].t >= 0.49


@pytest.mark.parametrize("provider", PROVIDERS)
def test_hung_server_times_out_then_fails_cleanly(provider):
    with FakeLLMServer([Turn(delay_s=30), Turn(delay_s=30)]) as srv:
        client = make_client(spec_for(srv, provider, timeout_s=0.5, max_retries=1))
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="timeout"):
            client.chat([Message(role="user", text="hi")], [])
        assert time.monotonic() - t0 < 5
        assert len(srv.requests) == 2  # one try + one retry


@pytest.mark.parametrize("provider", PROVIDERS)
def test_client_error_is_not_retried(provider):
    with FakeLLMServer([Turn(status=400), Turn(text="never")]) as srv:
        with pytest.raises(LLMError, match="400"):
            make_client(spec_for(srv, provider)).chat([Message(role="user", text="hi")], [])
        assert len(srv.requests) == 1 and srv.remaining == 1


def test_missing_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("AVO_TEST_UNSET_KEY", raising=False)
    with pytest.raises(LLMError, match="AVO_TEST_UNSET_KEY is not set"):
        make_client(LLMSpec(provider="openai", model="m", api_key_env="AVO_TEST_UNSET_KEY"))


def test_local_server_without_key():
    with FakeLLMServer([Turn(text="hello")]) as srv:
        turn = make_client(spec_for(srv, "openai", api_key_env="")).chat([Message(role="user", text="hi")], [])
    assert turn.text == "hello"
    assert KEY not in str(srv.requests[0].headers)


def test_malformed_json_arguments_are_reported_not_raised():
    with FakeLLMServer([Turn(calls=[Call(name="read_file", arguments="{bad json"),
                                    Call(name="read_file", arguments="[1, 2]")])]) as srv:
        turn = make_client(spec_for(srv, "openai")).chat([Message(role="user", text="hi")], [READ])
    bad, wrong = turn.tool_calls
    assert bad.arguments == {} and "not valid JSON" in bad.parse_error and "{bad json" in bad.parse_error
    assert "must be a JSON object" in wrong.parse_error


def test_cost_meter_stops_at_the_budget():
    meter = CostMeter(limit_usd=0.001)
    with FakeLLMServer([Turn(text="a"), Turn(text="b"), Turn(text="c")]) as srv:
        client = make_client(spec_for(srv, "anthropic"))
        for _ in range(2):
            meter.check()
            meter.add(client.chat([Message(role="user", text="hi")], []))
        with pytest.raises(BudgetExhausted, match=r"spent \$0.0012 of \$0.0010"):
            meter.check()
    assert meter.calls == 2 and meter.tokens == 240 and srv.remaining == 1


def test_tool_schemas_come_from_one_definition():
    for tool in ALL_TOOLS:
        s = tool.spec()
        a, o = s.anthropic(), s.openai()
        assert a["input_schema"] == o["function"]["parameters"] == s.parameters
        assert a["name"] == o["function"]["name"] == tool.name
        assert s.parameters["type"] == "object" and "title" not in s.parameters
    edit = next(t for t in ALL_TOOLS if t.name == "edit").spec().parameters
    assert sorted(edit["required"]) == ["path", "replace", "search"]
    assert edit["additionalProperties"] is False


def test_anthropic_merges_consecutive_tool_results():
    calls = [ToolCall(id="t1", name="a"), ToolCall(id="t2", name="b")]
    out = anthropic_messages([Message(role="user", text="go"), Message(role="assistant", tool_calls=calls),
                              Message(role="tool", tool_call_id="t1", text="r1"),
                              Message(role="tool", tool_call_id="t2", text="r2", is_error=True),
                              Message(role="user", text="two turns left")])
    assert [m["role"] for m in out] == ["user", "assistant", "user"]
    assert [b["type"] for b in out[2]["content"]] == ["tool_result", "tool_result", "text"]
    assert out[2]["content"][1]["is_error"] is True


def test_key_variable_defaults_by_provider(monkeypatch):
    from avo.config import AgenticSpec
    from avo.operators.agentic import llm_spec_from
    from avo.operators.llm import key_env
    assert key_env(llm_spec_from(AgenticSpec(model="m"))) == "ANTHROPIC_API_KEY"
    assert key_env(llm_spec_from(AgenticSpec(model="m", provider="openai"))) == "OPENAI_API_KEY"
    assert key_env(llm_spec_from(AgenticSpec(model="m", provider="openai", api_key_env=""))) == ""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY is not set"):
        make_client(llm_spec_from(AgenticSpec(model="m", provider="openai", base_url="http://127.0.0.1:9/v1")))
