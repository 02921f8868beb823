"""LLM backends for the agentic operator: one small interface, two real SDKs.

`LLMClient.chat(messages, tools) -> LLMTurn` (text, tool calls, usage, cost). Implementations:
`AnthropicClient` (Messages API with tool use) and `OpenAIClient` (chat completions with tool
calls; any OpenAI-compatible server via `base_url`: vLLM, SGLang, Ollama, llama.cpp).

Retries are ours, not the SDKs' (their `max_retries=0`): exponential backoff on 429, 408/409,
5xx, timeouts and connection errors, honouring Retry-After, each retry logged and recorded in
the turn. The API key is read from the environment variable the spec names at construction and
lives only inside the SDK client: it is never logged, stored or put in a transcript.
`Transcript` is that record: the JSONL of one exchange (an agentic step, a trajectory review).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

log = logging.getLogger("avo.llm")


class LLMSpec(BaseModel):
    """Connection and pricing of one model endpoint (built from the run config's agentic spec)."""
    model_config = {"extra": "forbid"}
    provider: Literal["anthropic", "openai"] = "anthropic"
    model: str = "claude-sonnet-4-5"
    base_url: Optional[str] = None  # None = the provider's public API
    api_key_env: Optional[str] = None  # None = ANTHROPIC_API_KEY / OPENAI_API_KEY; "" = no key (local server)
    max_output_tokens: int = Field(default=8192, ge=1)
    temperature: Optional[float] = None  # OpenAI-compatible servers only
    timeout_s: float = Field(default=180.0, gt=0)  # per HTTP call
    max_retries: int = Field(default=5, ge=0)
    backoff_s: float = Field(default=2.0, ge=0)  # first wait; doubles per retry
    backoff_max_s: float = Field(default=60.0, ge=0)
    price_input_per_mtok: float = Field(default=0.0, ge=0)  # USD per million input tokens
    price_output_per_mtok: float = Field(default=0.0, ge=0)
    prompt_cache: bool = True  # Anthropic: cache the system prompt and the conversation prefix


class LLMError(Exception):
    """An LLM call that failed for good (after retries, or not retryable). One-line message."""


class BudgetExhausted(LLMError):
    pass


class ToolSpec(BaseModel):
    """One tool, defined once; rendered for each provider."""
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object

    def anthropic(self) -> dict:
        return {"name": self.name, "description": self.description, "input_schema": self.parameters}

    def openai(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    parse_error: Optional[str] = None  # arguments were not a JSON object: told to the model


class Message(BaseModel):
    """Provider-neutral conversation entry. role=tool carries the result of one tool call."""
    role: Literal["system", "user", "assistant", "tool"]
    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: Optional[str] = None
    is_error: bool = False


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


class RetryEvent(BaseModel):
    attempt: int
    error: str
    wait_s: float


class LLMTurn(BaseModel):
    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    stop_reason: str = ""
    latency_s: float = 0.0
    retries: list[RetryEvent] = Field(default_factory=list)


class CostMeter:
    """Tokens and USD over a run; `check()` raises BudgetExhausted once the cap is reached.
    Shared by every agentic step (and the supervisor's reviews) of one run."""

    def __init__(self, limit_usd: Optional[float] = None):
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.tokens = 0
        self.calls = 0

    def check(self) -> None:
        if self.limit_usd is not None and self.spent_usd >= self.limit_usd:
            raise BudgetExhausted(f"LLM budget exhausted: spent ${self.spent_usd:.4f} of ${self.limit_usd:.4f}")

    def add(self, turn: LLMTurn) -> None:
        self.spent_usd += turn.cost_usd
        self.tokens += turn.usage.total
        self.calls += 1


def turn_cost(spec: LLMSpec, u: Usage) -> float:
    # Anthropic bills cache writes at 1.25x and cache reads at 0.1x the input price.
    inp = u.input_tokens + 1.25 * u.cache_write_tokens + 0.1 * u.cache_read_tokens
    return (inp * spec.price_input_per_mtok + u.output_tokens * spec.price_output_per_mtok) / 1e6


def parse_arguments(raw: Any) -> tuple[dict[str, Any], Optional[str]]:
    """Tool arguments as a dict, or ({}, why not) for the model to read."""
    if isinstance(raw, dict):
        return raw, None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}, None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as e:
        return {}, f"arguments are not valid JSON ({e.msg if hasattr(e, 'msg') else e}): {str(raw)[:200]!r}"
    if not isinstance(obj, dict):
        return {}, f"arguments must be a JSON object, got {type(obj).__name__}: {str(raw)[:200]!r}"
    return obj, None


class LLMClient:
    """Base: key lookup, retry loop, cost. Subclasses implement `_create` and `_parse`."""
    provider = ""

    def __init__(self, spec: LLMSpec):
        self.spec = spec
        env = key_env(spec)
        if env:
            key = os.environ.get(env, "")
            if not key:
                raise LLMError(f"environment variable {env} is not set (the API key for {self.provider}; "
                               f"set api_key_env: '' for a local server that needs none)")
        else:
            key = "no-key"  # the SDKs insist on a value; local servers ignore it
        self._client = self._make_client(key)  # the key lives only here

    def _make_client(self, key: str) -> Any:
        raise NotImplementedError

    def _create(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Any:
        raise NotImplementedError

    def _parse(self, resp: Any) -> LLMTurn:
        raise NotImplementedError

    def chat(self, messages: list[Message], tools: list[ToolSpec]) -> LLMTurn:
        system = "\n\n".join(m.text for m in messages if m.role == "system")
        rest = [m for m in messages if m.role != "system"]
        retries: list[RetryEvent] = []
        for attempt in range(self.spec.max_retries + 1):
            t0 = time.monotonic()
            try:
                resp = self._create(system, rest, tools)
            except Exception as e:  # noqa: BLE001 - classified below, re-raised as LLMError
                why, retry_after = self._retryable(e)
                if why is None:
                    raise LLMError(f"{self.provider} call failed: {_one_line(e)}") from None
                if attempt == self.spec.max_retries:
                    raise LLMError(f"{self.provider} call failed after {attempt + 1} tries: {why}") from None
                wait = min(self.spec.backoff_max_s, self.spec.backoff_s * 2 ** attempt)
                if retry_after is not None:
                    wait = min(self.spec.backoff_max_s, max(wait, retry_after))
                log.warning("%s: %s; retry %d/%d in %.2fs", self.provider, why, attempt + 1,
                            self.spec.max_retries, wait)
                retries.append(RetryEvent(attempt=attempt + 1, error=why, wait_s=wait))
                time.sleep(wait)
                continue
            turn = self._parse(resp)
            turn.latency_s = time.monotonic() - t0
            turn.retries = retries
            turn.cost_usd = turn_cost(self.spec, turn.usage)
            return turn
        raise AssertionError("unreachable")

    def _retryable(self, e: Exception) -> tuple[Optional[str], Optional[float]]:
        """(reason, Retry-After seconds) for a transient failure; (None, None) for a final one."""
        name = type(e).__name__
        if name in ("APITimeoutError",):
            return f"timeout after {self.spec.timeout_s:g}s", None
        if name in ("APIConnectionError",):
            return f"connection error: {_one_line(e)}", None
        status = getattr(e, "status_code", None)
        if status is not None and (status in (408, 409, 429) or status >= 500):
            ra = None
            try:
                ra = float(e.response.headers.get("retry-after"))  # type: ignore[attr-defined]
            except (AttributeError, TypeError, ValueError):
                pass
            return f"HTTP {status}: {_one_line(e)}", ra
        return None, None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


class AnthropicClient(LLMClient):
    provider = "anthropic"

    def _make_client(self, key: str) -> Any:
        import anthropic
        return anthropic.Anthropic(api_key=key, base_url=self.spec.base_url, max_retries=0,
                                   timeout=self.spec.timeout_s)

    def _create(self, system, messages, tools):
        kw: dict[str, Any] = dict(model=self.spec.model, max_tokens=self.spec.max_output_tokens,
                                  messages=anthropic_messages(messages, self.spec.prompt_cache),
                                  tools=[t.anthropic() for t in tools])
        if system:
            block: dict[str, Any] = {"type": "text", "text": system}
            if self.spec.prompt_cache:
                block["cache_control"] = {"type": "ephemeral"}
            kw["system"] = [block]
        # No temperature: this SDK's Messages API no longer takes one (the model's default applies).
        return self._client.messages.create(**kw)

    def _parse(self, resp) -> LLMTurn:
        texts, calls = [], []
        for b in resp.content:
            if b.type == "text":
                texts.append(b.text)
            elif b.type == "tool_use":
                args, err = parse_arguments(b.input)
                calls.append(ToolCall(id=b.id, name=b.name, arguments=args, parse_error=err))
        u = resp.usage
        usage = Usage(input_tokens=u.input_tokens or 0, output_tokens=u.output_tokens or 0,
                      cache_read_tokens=getattr(u, "cache_read_input_tokens", None) or 0,
                      cache_write_tokens=getattr(u, "cache_creation_input_tokens", None) or 0)
        return LLMTurn(text="\n".join(texts), tool_calls=calls, usage=usage, stop_reason=resp.stop_reason or "")


def anthropic_messages(messages: list[Message], cache: bool = False) -> list[dict]:
    """Alternating user/assistant messages; tool results and user text that follow each other
    are merged into one user message of content blocks, as the Messages API requires."""
    out: list[dict] = []
    for m in messages:
        if m.role == "assistant":
            blocks: list[dict] = [{"type": "text", "text": m.text}] if m.text else []
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in m.tool_calls]
            out.append({"role": "assistant", "content": blocks or [{"type": "text", "text": "(no output)"}]})
            continue
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.text or "(empty)",
                     "is_error": m.is_error}
        else:
            block = {"type": "text", "text": m.text or "(empty)"}
        if out and out[-1]["role"] == "user":
            out[-1]["content"].append(block)
        else:
            out.append({"role": "user", "content": [block]})
    if cache and out and out[-1]["role"] == "user":
        out[-1]["content"][-1] = {**out[-1]["content"][-1], "cache_control": {"type": "ephemeral"}}
    return out


class OpenAIClient(LLMClient):
    provider = "openai"

    def _make_client(self, key: str) -> Any:
        import openai
        return openai.OpenAI(api_key=key, base_url=self.spec.base_url, max_retries=0, timeout=self.spec.timeout_s)

    def _create(self, system, messages, tools):
        msgs = ([{"role": "system", "content": system}] if system else []) + openai_messages(messages)
        kw: dict[str, Any] = dict(model=self.spec.model, messages=msgs, max_tokens=self.spec.max_output_tokens)
        if tools:
            kw["tools"] = [t.openai() for t in tools]
        if self.spec.temperature is not None:
            kw["temperature"] = self.spec.temperature
        return self._client.chat.completions.create(**kw)

    def _parse(self, resp) -> LLMTurn:
        if not resp.choices:
            raise LLMError("openai: response without choices")
        ch = resp.choices[0]
        calls = []
        for c in ch.message.tool_calls or []:
            fn = getattr(c, "function", None)
            if fn is None:
                continue
            args, err = parse_arguments(fn.arguments)
            calls.append(ToolCall(id=c.id or f"call_{len(calls)}", name=fn.name or "", arguments=args, parse_error=err))
        u = resp.usage
        usage = Usage(input_tokens=(u.prompt_tokens or 0) if u else 0, output_tokens=(u.completion_tokens or 0) if u else 0)
        return LLMTurn(text=ch.message.content or "", tool_calls=calls, usage=usage, stop_reason=ch.finish_reason or "")


def openai_messages(messages: list[Message]) -> list[dict]:
    out: list[dict] = []
    for m in messages:
        if m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.text or None}
            if m.tool_calls:
                msg["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                                     for c in m.tool_calls]
            elif not m.text:
                msg["content"] = "(no output)"
            out.append(msg)
        elif m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text or "(empty)"})
        else:
            out.append({"role": "user", "content": m.text or "(empty)"})
    return out


def key_env(spec: LLMSpec) -> str:
    """The environment variable holding the key ("" = none needed)."""
    if spec.api_key_env is not None:
        return spec.api_key_env
    return "ANTHROPIC_API_KEY" if spec.provider == "anthropic" else "OPENAI_API_KEY"


def make_client(spec: LLMSpec) -> LLMClient:
    if spec.provider == "anthropic":
        return AnthropicClient(spec)
    if spec.provider == "openai":
        return OpenAIClient(spec)
    raise LLMError(f"unknown LLM provider {spec.provider!r} (anthropic | openai)")


class Transcript:
    """Append-only JSONL of one step; flushed per event so a crash loses nothing written."""

    def __init__(self, path: Path, secrets: list[str]):
        self.path = path
        self.secrets = [s for s in secrets if s and len(s) >= 6]
        self.t0 = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")

    def write(self, event: str, **data: Any) -> None:
        line = json.dumps({"t": round(time.monotonic() - self.t0, 3), "event": event, **data}, default=str)
        for s in self.secrets:
            line = line.replace(s, "[redacted]")
        self.f.write(line + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()
