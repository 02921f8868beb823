"""LLM backends for the agentic operator: one small interface, three real API shapes.

`LLMClient.chat(messages, tools) -> LLMTurn` (text, tool calls, usage, cost). This file holds the
nouns (spec, messages, usage, turns), the cost meter, the transcript and the base client: the
retries, the truncation policy and the parameter fallbacks every API shares. The three
implementations (`AnthropicClient`, `OpenAIClient`, `OpenAIResponsesClient`) and `make_client`
are in avo/operators/providers.py.

Every call streams by default (`stream`), so `timeout_s` is an idle timeout: the longest wait for
the next bytes, not for the whole answer, and a long answer (a rewrite of a 9k-token kernel) is
not cut by a wall-clock limit. The output budget (`max_output_tokens`, thinking/reasoning
included) is sent as `max_tokens` (Anthropic), `max_completion_tokens` (chat) or
`max_output_tokens` (Responses). An answer cut at that budget (`stop_reason: max_tokens`,
`finish_reason: length`, `status: incomplete`) is continued once where the API allows it
(Anthropic, a cut text answer without thinking: the partial text as an assistant prefill), else
asked again with double the budget up to `max_output_tokens_cap`; a turn still cut comes back
with `truncated` set and its unfinished tool calls dropped.

Sampling parameters (`temperature`) are sent only where the model takes them: `sampling: auto`
leaves them out for model names matching `reasoning_models` (o1/o3/o4, GPT-5, codex), `off`
never sends them, `on` always does. A 400 that names an optional parameter we sent
(`temperature`, `reasoning_effort`, `max_completion_tokens`, `stream_options`, ...) drops it (or
falls back to `max_tokens`) for the rest of the client's life and the call is made again.

Retries are ours, not the SDKs' (their `max_retries=0`): exponential backoff on 429, 408/409,
5xx, timeouts, connection errors and streams that break off, honouring Retry-After, each retry
logged and recorded in the turn. The API key is read from the environment variable the spec
names at construction and lives only inside the SDK client: it is never logged, stored or put
in a transcript. `Transcript` is that record: the JSONL of one exchange (an agentic step, a
trajectory review).
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, model_validator

log = logging.getLogger("avo.llm")

# Model families (OpenAI) that refuse sampling parameters and `max_tokens`; matched anywhere after
# a provider prefix ("openai/gpt-5" on a router).
REASONING_MODELS = [r"(^|/)o\d", r"(^|/)gpt-5", r"(^|/)codex"]
# Optional request parameters a server may refuse; a 400 naming one drops it and the call is made again.
ADAPTABLE = {"temperature", "top_p", "reasoning_effort", "reasoning", "reasoning.effort", "reasoning.summary",
             "max_completion_tokens", "stream_options", "include", "output_config", "output_config.effort"}


class LLMSpec(BaseModel):
    """Connection, request shape and pricing of one model endpoint (built from the run config's
    agentic spec by `llm_spec_from`)."""
    model_config = {"extra": "forbid"}
    provider: Literal["anthropic", "openai"] = "anthropic"
    model: str = "claude-sonnet-4-5"
    api: Literal["chat", "responses"] = "chat"  # OpenAI: chat completions or the Responses API
    base_url: Optional[str] = None  # None = the provider's public API
    api_key_env: Optional[str] = None  # None = ANTHROPIC_API_KEY / OPENAI_API_KEY; "" = no key (local server)
    stream: bool = True  # stream every call (timeout_s is then an idle timeout)
    max_output_tokens: int = Field(default=32_000, ge=1)  # per call, thinking / reasoning included
    max_output_tokens_cap: int = Field(default=64_000, ge=1)  # a cut answer is retried with double the budget up to this
    continue_truncated: bool = True  # Anthropic: continue a cut text answer once (prefill) before retrying
    sampling: Literal["auto", "on", "off"] = "auto"  # auto: no sampling parameters for reasoning models
    reasoning_models: list[str] = Field(default_factory=lambda: list(REASONING_MODELS))  # regexes on the model name
    temperature: Optional[float] = None  # None: the model's default
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]] = None
    reasoning_summary: Optional[Literal["auto", "concise", "detailed"]] = None  # Responses API: summaries of the reasoning
    thinking_budget_tokens: Optional[int] = Field(default=None, ge=1024)  # Anthropic extended thinking
    thinking_adaptive: bool = False  # Anthropic: {"type": "adaptive"} thinking instead of a fixed budget
    timeout_s: float = Field(default=300.0, gt=0)  # idle: the longest wait for the next bytes of an answer
    max_retries: int = Field(default=5, ge=0)
    backoff_s: float = Field(default=2.0, ge=0)  # first wait; doubles per retry
    backoff_max_s: float = Field(default=60.0, ge=0)
    price_input_per_mtok: float = Field(default=0.0, ge=0)  # USD per million input tokens
    price_output_per_mtok: float = Field(default=0.0, ge=0)
    price_cache_read_per_mtok: Optional[float] = Field(default=None, ge=0)  # None: 0.1x the input price
    price_cache_write_per_mtok: Optional[float] = Field(default=None, ge=0)  # None: 1.25x (anthropic), 1x (openai)
    prompt_cache: bool = True  # Anthropic: cache breakpoints on the system prompt, the stable prefix, the last block

    @model_validator(mode="after")
    def _check(self) -> "LLMSpec":
        if self.thinking_budget_tokens is not None:
            if self.thinking_adaptive:
                raise ValueError("thinking_budget_tokens and thinking_adaptive exclude each other")
            if self.thinking_budget_tokens >= self.max_output_tokens:
                raise ValueError(f"thinking_budget_tokens ({self.thinking_budget_tokens}) must be below "
                                 f"max_output_tokens ({self.max_output_tokens}), which includes the thinking")
        if self.max_output_tokens_cap < self.max_output_tokens:
            raise ValueError("max_output_tokens_cap must be at least max_output_tokens")
        for p in self.reasoning_models:
            re.compile(p)
        return self

    @property
    def thinking(self) -> bool:
        return self.provider == "anthropic" and (self.thinking_budget_tokens is not None or self.thinking_adaptive)

    def reasoning_model(self) -> bool:
        return any(re.search(p, self.model) for p in self.reasoning_models)

    def sampling_allowed(self) -> bool:
        return self.sampling == "on" or (self.sampling == "auto" and not self.reasoning_model() and not self.thinking)


class LLMError(Exception):
    """An LLM call that failed for good (after retries, or not retryable). One-line message;
    `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


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

    def responses(self) -> dict:
        # strict is on by default in the Responses API and wants every property required: off.
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters, "strict": False}


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    parse_error: Optional[str] = None  # arguments were not a JSON object: told to the model


class Message(BaseModel):
    """Provider-neutral conversation entry. role=tool carries the result of one tool call.

    `opaque` is an assistant turn's output as the API returned it (`opaque_api` names which):
    Anthropic content blocks with thinking blocks and their signatures, Responses output items
    with encrypted reasoning. A request to the same API sends it back verbatim in place of
    `text`/`tool_calls` (those stay for avo's own use); another API ignores it.
    `pinned` marks the stable prefix (the step prompt, compaction notices): never removed by
    compaction, and an Anthropic cache breakpoint goes after it."""
    role: Literal["system", "user", "assistant", "tool"]
    text: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: Optional[str] = None
    is_error: bool = False
    opaque: list[dict[str, Any]] = Field(default_factory=list)
    opaque_api: str = ""
    pinned: bool = False


class Usage(BaseModel):
    """Tokens of one or more calls as the provider reported them. input_tokens is the uncached
    input; reasoning_tokens is the part of output_tokens spent thinking."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def prompt(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def __add__(self, o: "Usage") -> "Usage":
        return Usage(**{k: getattr(self, k) + getattr(o, k) for k in Usage.model_fields})


class RetryEvent(BaseModel):
    attempt: int
    error: str
    wait_s: float


class TruncationEvent(BaseModel):
    """An answer cut at its output budget and what was done: continue | retry | gave_up."""
    budget: int
    action: Literal["continue", "retry", "gave_up"]
    next_budget: Optional[int] = None
    error: Optional[str] = None


class LLMTurn(BaseModel):
    text: str = ""
    thinking: str = ""  # thinking / reasoning summary text, for the transcript
    tool_calls: list[ToolCall] = Field(default_factory=list)
    opaque: list[dict[str, Any]] = Field(default_factory=list)  # see Message.opaque
    opaque_api: str = ""
    usage: Usage = Field(default_factory=Usage)  # summed over every call the turn took
    context_tokens: int = 0  # the conversation's size after this turn, from the last call's usage (0: unknown)
    cost_usd: float = 0.0
    stop_reason: str = ""
    truncated: bool = False  # still cut at the largest budget: tool calls dropped
    latency_s: float = 0.0
    retries: list[RetryEvent] = Field(default_factory=list)
    truncations: list[TruncationEvent] = Field(default_factory=list)


class _Reply(BaseModel):
    """One call's answer, parsed."""
    text: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    opaque: list[dict[str, Any]] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    stop_reason: str = ""
    truncated: bool = False

    @property
    def context(self) -> int:
        return self.usage.prompt + self.usage.output_tokens - self.usage.reasoning_tokens if self.usage.prompt else 0


class StreamBroken(Exception):
    """A stream that ended without its final event, or carried an error event: retried."""


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

    def left(self) -> Optional[float]:
        """USD left under the cap (None: no cap)."""
        return None if self.limit_usd is None else max(0.0, self.limit_usd - self.spent_usd)

    def charge(self, cost_usd: float, tokens: int) -> None:
        """What one call (or a whole external agent's step) cost."""
        self.spent_usd += cost_usd
        self.tokens += tokens
        self.calls += 1

    def add(self, turn: LLMTurn) -> None:
        self.charge(turn.cost_usd, turn.usage.total)


def turn_cost(spec: LLMSpec, u: Usage) -> float:
    """USD: cache reads at price_cache_read (default 0.1x input, as Anthropic and OpenAI's recent
    models bill them), cache writes at price_cache_write (default 1.25x on Anthropic, 1x on OpenAI)."""
    p_in = spec.price_input_per_mtok
    p_read = spec.price_cache_read_per_mtok if spec.price_cache_read_per_mtok is not None else 0.1 * p_in
    p_write = spec.price_cache_write_per_mtok if spec.price_cache_write_per_mtok is not None else \
        (1.25 if spec.provider == "anthropic" else 1.0) * p_in
    return (u.input_tokens * p_in + u.cache_read_tokens * p_read + u.cache_write_tokens * p_write
            + u.output_tokens * spec.price_output_per_mtok) / 1e6


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
    """Base: key lookup, the retry loop, the truncation policy, adaptive parameters, cost.
    Subclasses implement `_make_client` and `_request` (one call, streamed or not, parsed)."""
    provider = ""
    api = ""  # Message.opaque_api of what this client returns and sends back

    def __init__(self, spec: LLMSpec):
        self.spec = spec
        self.refused: set[str] = set()  # optional parameters the server refused: no longer sent
        self._sent: set[str] = set()  # optional parameters of the request in flight
        env = key_env(spec)
        if env:
            key = os.environ.get(env, "")
            if not key:
                raise LLMError(f"environment variable {env} is not set (the API key for {self.provider}; "
                               f"set api_key_env: '' for a local server that needs none)")
        else:
            key = "no-key"  # the SDKs insist on a value; local servers ignore it
        self._client = self._make_client(key)  # the key lives only here

    def _timeout(self, sdk: Any) -> Any:
        # read = idle: the longest gap between bytes of a streamed answer
        return sdk.Timeout(self.spec.timeout_s, connect=min(self.spec.timeout_s, 30.0))

    def _make_client(self, key: str) -> Any:
        raise NotImplementedError

    def _request(self, system: str, messages: list[Message], tools: list[ToolSpec], budget: int,
                 prefill: Optional[_Reply]) -> _Reply:
        raise NotImplementedError

    def _can_continue(self, r: _Reply) -> bool:
        return False

    def _continued(self, prefill: _Reply, r: _Reply) -> _Reply:
        raise NotImplementedError

    def _optional(self, kw: dict, name: str, value: Any) -> None:
        """Put an optional parameter in the request unless the server refused it before."""
        if name not in self.refused:
            kw[name] = value
            self._sent.add(name)

    def chat(self, messages: list[Message], tools: list[ToolSpec]) -> LLMTurn:
        system = "\n\n".join(m.text for m in messages if m.role == "system")
        rest = [m for m in messages if m.role != "system"]
        t0 = time.monotonic()
        retries: list[RetryEvent] = []
        truncs: list[TruncationEvent] = []
        usage = Usage()
        budget = self.spec.max_output_tokens
        prefill: Optional[_Reply] = None
        last: Optional[_Reply] = None  # the latest (cut) answer, returned if asking again fails
        continued = False
        while True:
            try:
                r = self._call(system, rest, tools, budget, prefill, retries)
            except LLMError as e:
                if last is None:
                    raise
                # asking again failed: the cut answer comes back (and what it cost is counted)
                if prefill is not None and e.status is not None and 400 <= e.status < 500 \
                        and budget < self.spec.max_output_tokens_cap:
                    # the prefill was refused (a model without prefill): ask again with more room
                    nxt = min(self.spec.max_output_tokens_cap, 2 * budget)
                    truncs.append(TruncationEvent(budget=budget, action="retry", next_budget=nxt, error=str(e)))
                    prefill, budget = None, nxt
                    continue
                truncs.append(TruncationEvent(budget=budget, action="gave_up", error=str(e)))
                r = last
                break
            usage = usage + r.usage
            if prefill is not None:
                r = self._continued(prefill, r)
                prefill = None
            last = r
            if not r.truncated or r.stop_reason == "model_context_window_exceeded":
                break
            if self.spec.continue_truncated and not continued and self._can_continue(r):
                continued, prefill = True, r
                truncs.append(TruncationEvent(budget=budget, action="continue"))
                log.warning("%s: answer cut at %d output tokens; continuing it", self.provider, budget)
                continue
            if budget >= self.spec.max_output_tokens_cap:
                truncs.append(TruncationEvent(budget=budget, action="gave_up"))
                break
            nxt = min(self.spec.max_output_tokens_cap, 2 * budget)
            truncs.append(TruncationEvent(budget=budget, action="retry", next_budget=nxt))
            log.warning("%s: answer cut at %d output tokens; asking again with %d", self.provider, budget, nxt)
            budget = nxt
        turn = LLMTurn(text=r.text, thinking=r.thinking, tool_calls=r.tool_calls, opaque=r.opaque,
                       opaque_api=self.api if r.opaque else "", usage=usage, context_tokens=r.context,
                       stop_reason=r.stop_reason, truncated=r.truncated, latency_s=time.monotonic() - t0,
                       retries=retries, truncations=truncs)
        if r.truncated:  # unfinished tool calls (and the thinking that led to them) are not sent back
            turn.tool_calls, turn.opaque, turn.opaque_api = [], [], ""
        turn.cost_usd = turn_cost(self.spec, usage)
        return turn

    def _call(self, system: str, rest: list[Message], tools: list[ToolSpec], budget: int,
              prefill: Optional[_Reply], retries: list[RetryEvent]) -> _Reply:
        attempt = 0
        while True:
            self._sent = set()
            try:
                return self._request(system, rest, tools, budget, prefill)
            except Exception as e:  # noqa: BLE001 - classified below, re-raised as LLMError
                param = self._refused_param(e)
                if param is not None:
                    self.refused.add(param)
                    why = f"HTTP 400: the server refused {param!r}; sent without it from now on"
                    log.warning("%s: %s", self.provider, why)
                    retries.append(RetryEvent(attempt=len(retries) + 1, error=why, wait_s=0.0))
                    continue
                why, retry_after = self._retryable(e)
                if why is None:
                    raise LLMError(f"{self.provider} call failed: {_one_line(e)}", getattr(e, "status_code", None)) from None
                if attempt == self.spec.max_retries:
                    raise LLMError(f"{self.provider} call failed after {attempt + 1} tries: {why}") from None
                wait = min(self.spec.backoff_max_s, self.spec.backoff_s * 2 ** attempt)
                if retry_after is not None:
                    wait = min(self.spec.backoff_max_s, max(wait, retry_after))
                log.warning("%s: %s; retry %d/%d in %.2fs", self.provider, why, attempt + 1, self.spec.max_retries, wait)
                retries.append(RetryEvent(attempt=len(retries) + 1, error=why, wait_s=wait))
                time.sleep(wait)
                attempt += 1

    def _refused_param(self, e: Exception) -> Optional[str]:
        """The optional parameter a 400 names, when we sent it (OpenAI's error `param`, or
        "Unsupported parameter/value: 'x'" in the message)."""
        if getattr(e, "status_code", None) != 400:
            return None
        names = [getattr(e, "param", None)] + re.findall(r"[Uu]nsupported (?:parameter|value): '([\w.]+)'", str(e))
        for n in names:
            if n and n in ADAPTABLE:
                top = n.split(".")[0]
                if top in self._sent:
                    return top
        return None

    def _retryable(self, e: Exception) -> tuple[Optional[str], Optional[float]]:
        """(reason, Retry-After seconds) for a transient failure; (None, None) for a final one."""
        name = type(e).__name__
        if isinstance(e, StreamBroken):
            return f"stream broke off: {_one_line(e)}", None
        if name in ("APITimeoutError",):
            return f"timeout: no data for {self.spec.timeout_s:g}s", None
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
        body = getattr(e, "body", None)
        err = body.get("error", body) if isinstance(body, dict) else None
        kind = err.get("type") if isinstance(err, dict) else None
        mid_stream = (status is None and name == "APIError") or \
            (status == 200 and kind in ("overloaded_error", "api_error", "rate_limit_error"))
        if mid_stream:  # an error event inside a 200 stream: transient
            return f"error event in the stream: {kind or _one_line(e)}", None
        return None, None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def key_env(spec: LLMSpec) -> str:
    """The environment variable holding the key ("" = none needed)."""
    if spec.api_key_env is not None:
        return spec.api_key_env
    return "ANTHROPIC_API_KEY" if spec.provider == "anthropic" else "OPENAI_API_KEY"


# Run-config field (AgenticSpec) -> LLMSpec field, where the names differ.
CONFIG_NAMES = {"max_tokens": "max_output_tokens", "max_tokens_cap": "max_output_tokens_cap",
                "price_in_per_mtok": "price_input_per_mtok", "price_out_per_mtok": "price_output_per_mtok",
                "price_cache_read_per_mtok": "price_cache_read_per_mtok",
                "price_cache_write_per_mtok": "price_cache_write_per_mtok"}


def llm_spec_from(spec: Any) -> LLMSpec:
    """The backend settings from a run config's AgenticSpec: every LLMSpec field the spec has
    (by the same name or the one in CONFIG_NAMES); fields absent there keep LLMSpec defaults."""
    back = {v: k for k, v in CONFIG_NAMES.items()}
    kw = {}
    for f in LLMSpec.model_fields:
        v = getattr(spec, back.get(f, f), None)
        if v is not None:
            kw[f] = v
    return LLMSpec(**kw)


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
