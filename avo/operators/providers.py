"""The three API shapes behind `LLMClient` (avo/operators/llm.py): `AnthropicClient` (Messages
API: tool use, extended thinking with its signed blocks sent back verbatim, prompt caching on a
stable prefix), `OpenAIClient` (chat completions; any OpenAI-compatible server via `base_url`:
vLLM, SGLang, Ollama, llama.cpp) and `OpenAIResponsesClient` (the Responses API, stateless:
`store: false`, encrypted reasoning items carried across turns). Each renders the neutral
`Message` list into its request, streams the answer and parses it back into a `_Reply`; the
retries, truncation policy and parameter fallbacks are the base class's. `make_client(spec)`
picks one."""
from __future__ import annotations

import copy
import json
import logging
from typing import Any

from avo.operators.llm import (LLMClient, LLMError, LLMSpec, Message, StreamBroken, ToolCall, Usage, _Reply,
                               parse_arguments)

log = logging.getLogger("avo.llm")


# ---------------------------------------------------------------- Anthropic

ANTHROPIC_EFFORT = {"none": "low", "minimal": "low", "low": "low", "medium": "medium", "high": "high",
                    "xhigh": "xhigh", "max": "max"}


class AnthropicClient(LLMClient):
    provider = "anthropic"
    api = "anthropic"

    def _make_client(self, key: str) -> Any:
        import anthropic
        return anthropic.Anthropic(api_key=key, base_url=self.spec.base_url, max_retries=0, timeout=self._timeout(anthropic))

    def _request(self, system, messages, tools, budget, prefill):
        msgs = anthropic_messages(messages, self.spec.prompt_cache)
        if prefill is not None:
            blocks = copy.deepcopy(prefill.opaque)
            blocks[-1]["text"] = blocks[-1]["text"].rstrip()  # the API refuses trailing whitespace in a prefill
            msgs.append({"role": "assistant", "content": blocks})
        kw: dict[str, Any] = dict(model=self.spec.model, max_tokens=budget, messages=msgs)
        if tools:
            kw["tools"] = [t.anthropic() for t in tools]
        if system:
            block: dict[str, Any] = {"type": "text", "text": system}
            if self.spec.prompt_cache:
                block["cache_control"] = {"type": "ephemeral"}
            kw["system"] = [block]
        if self.spec.thinking_budget_tokens is not None:
            kw["thinking"] = {"type": "enabled", "budget_tokens": min(self.spec.thinking_budget_tokens, budget - 1)}
        elif self.spec.thinking_adaptive:
            kw["thinking"] = {"type": "adaptive"}
        if self.spec.reasoning_effort is not None:
            self._optional(kw, "output_config", {"effort": ANTHROPIC_EFFORT[self.spec.reasoning_effort]})
        extra: dict[str, Any] = {}
        if self.spec.temperature is not None and self.spec.sampling_allowed():
            self._optional(extra, "temperature", self.spec.temperature)  # not a parameter of this SDK
        if extra:
            kw["extra_body"] = extra
        if not self.spec.stream:
            return self._parse(self._client.messages.create(**kw))
        with self._client.messages.stream(**kw) as s:
            msg = s.get_final_message()
        if msg.stop_reason is None:
            raise StreamBroken("the message ended without a stop_reason")
        return self._parse(msg)

    def _parse(self, resp) -> _Reply:
        texts, thinking, calls, opaque = [], [], [], []
        for b in resp.content:
            if b.type == "text":
                texts.append(b.text)
                if b.text:  # the API refuses empty text blocks in input
                    opaque.append({"type": "text", "text": b.text})
            elif b.type == "thinking":
                thinking.append(b.thinking)
                opaque.append({"type": "thinking", "thinking": b.thinking, "signature": b.signature})
            elif b.type == "redacted_thinking":
                opaque.append({"type": "redacted_thinking", "data": b.data})
            elif b.type == "tool_use":
                args, err = parse_arguments(b.input)
                calls.append(ToolCall(id=b.id, name=b.name, arguments=args, parse_error=err))
                opaque.append({"type": "tool_use", "id": b.id, "name": b.name, "input": b.input})
            else:  # server-side tool blocks: back as they came
                opaque.append(b.to_dict(mode="json"))
        u = resp.usage
        details = getattr(u, "output_tokens_details", None)
        usage = Usage(input_tokens=u.input_tokens or 0, output_tokens=u.output_tokens or 0,
                      cache_read_tokens=getattr(u, "cache_read_input_tokens", None) or 0,
                      cache_write_tokens=getattr(u, "cache_creation_input_tokens", None) or 0,
                      reasoning_tokens=getattr(details, "thinking_tokens", 0) or 0)
        stop = resp.stop_reason or ""
        return _Reply(text="\n".join(texts), thinking="\n".join(thinking),
                      tool_calls=calls, opaque=opaque, usage=usage, stop_reason=stop,
                      truncated=stop in ("max_tokens", "model_context_window_exceeded"))

    def _can_continue(self, r: _Reply) -> bool:
        # A prefill continues text; it cannot finish a tool call, and thinking forbids it.
        return not self.spec.thinking and not r.tool_calls and bool(r.opaque) and r.opaque[-1]["type"] == "text" \
            and all(b["type"] == "text" for b in r.opaque)

    def _continued(self, prefill: _Reply, r: _Reply) -> _Reply:
        blocks = copy.deepcopy(prefill.opaque)
        blocks[-1]["text"] = blocks[-1]["text"].rstrip()
        more = copy.deepcopy(r.opaque)
        if more and more[0]["type"] == "text":
            blocks[-1]["text"] += more.pop(0)["text"]
        blocks += more
        text = "\n".join(b["text"] for b in blocks if b["type"] == "text")
        return r.model_copy(update={"text": text, "opaque": blocks})


def anthropic_messages(messages: list[Message], cache: bool = False) -> list[dict]:
    """Alternating user/assistant messages; tool results and user text that follow each other
    are merged into one user message of content blocks, as the Messages API requires. An
    assistant turn that came from this API goes back verbatim (its thinking blocks with their
    signatures). With `cache`, breakpoints go after the last two pinned messages (the stable
    prefix, which compaction never changes) and on the last block."""
    out: list[dict] = []
    pins: list[dict] = []  # the last block of each pinned message
    for m in messages:
        if m.role == "assistant":
            if m.opaque_api == "anthropic" and m.opaque:
                blocks = copy.deepcopy(m.opaque)
            else:
                blocks = [{"type": "text", "text": m.text}] if m.text else []
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
        if m.pinned:
            pins.append(block)
    if cache and out:
        marks = pins[-2:]
        if out[-1]["role"] == "user":
            marks.append(out[-1]["content"][-1])
        for b in marks:
            b["cache_control"] = {"type": "ephemeral"}
    return out


# ---------------------------------------------------------------- OpenAI chat completions

class OpenAIClient(LLMClient):
    provider = "openai"
    api = "openai-chat"

    def _make_client(self, key: str) -> Any:
        import openai
        return openai.OpenAI(api_key=key, base_url=self.spec.base_url, max_retries=0, timeout=self._timeout(openai))

    def _request(self, system, messages, tools, budget, prefill):
        msgs = ([{"role": "system", "content": system}] if system else []) + openai_messages(messages)
        kw: dict[str, Any] = dict(model=self.spec.model, messages=msgs)
        if "max_completion_tokens" in self.refused:
            kw["max_tokens"] = budget  # an older server
        else:
            self._optional(kw, "max_completion_tokens", budget)
        if tools:
            kw["tools"] = [t.openai() for t in tools]
        if self.spec.temperature is not None and self.spec.sampling_allowed():
            self._optional(kw, "temperature", self.spec.temperature)
        if self.spec.reasoning_effort is not None:
            self._optional(kw, "reasoning_effort", self.spec.reasoning_effort)
        if not self.spec.stream:
            return self._parse(self._client.chat.completions.create(**kw))
        self._optional(kw, "stream_options", {"include_usage": True})
        with self._client.chat.completions.create(stream=True, **kw) as stream:
            return self._accumulate(stream)

    def _accumulate(self, stream) -> _Reply:
        text: list[str] = []
        thinking: list[str] = []
        slots: dict[int, dict[str, str]] = {}
        finish, usage = "", None
        for ch in stream:
            if ch.usage is not None:
                usage = ch.usage
            for c in ch.choices[:1]:
                d = c.delta
                if d.content:
                    text.append(d.content)
                extra = d.model_extra or {}
                r = extra.get("reasoning_content") or extra.get("reasoning")
                if isinstance(r, str):
                    thinking.append(r)
                for tc in d.tool_calls or []:
                    slot = slots.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    slot["id"] = slot["id"] or tc.id or ""
                    if tc.function is not None:
                        slot["name"] = slot["name"] or tc.function.name or ""
                        slot["arguments"] += tc.function.arguments or ""
                if c.finish_reason:
                    finish = c.finish_reason
        if not finish:
            raise StreamBroken("the chat stream ended without a finish_reason")
        calls = [_tool_call(s["id"] or f"call_{i}", s["name"], s["arguments"]) for i, s in sorted(slots.items())]
        return _Reply(text="".join(text), thinking="".join(thinking), tool_calls=calls, usage=_chat_usage(usage),
                      stop_reason=finish, truncated=finish == "length")

    def _parse(self, resp) -> _Reply:
        if not resp.choices:
            raise LLMError("openai: response without choices")
        ch = resp.choices[0]
        calls = []
        for c in ch.message.tool_calls or []:
            fn = getattr(c, "function", None)
            if fn is not None:
                calls.append(_tool_call(c.id or f"call_{len(calls)}", fn.name or "", fn.arguments))
        extra = ch.message.model_extra or {}
        r = extra.get("reasoning_content") or extra.get("reasoning")
        finish = ch.finish_reason or ""
        return _Reply(text=ch.message.content or "", thinking=r if isinstance(r, str) else "", tool_calls=calls,
                      usage=_chat_usage(resp.usage), stop_reason=finish, truncated=finish == "length")


def _tool_call(id_: str, name: str, raw: Any) -> ToolCall:
    args, err = parse_arguments(raw)
    return ToolCall(id=id_, name=name, arguments=args, parse_error=err)


def _chat_usage(u: Any) -> Usage:
    if u is None:
        return Usage()
    pd, cd = u.prompt_tokens_details, u.completion_tokens_details
    read = (pd.cached_tokens or 0) if pd else 0
    write = (getattr(pd, "cache_write_tokens", None) or 0) if pd else 0
    return Usage(input_tokens=max(0, (u.prompt_tokens or 0) - read - write), output_tokens=u.completion_tokens or 0,
                 cache_read_tokens=read, cache_write_tokens=write,
                 reasoning_tokens=(cd.reasoning_tokens or 0) if cd else 0)


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


# ---------------------------------------------------------------- OpenAI Responses API

class OpenAIResponsesClient(OpenAIClient):
    """The Responses API, stateless: `store: false`, every request carries the whole
    conversation; reasoning items come back with `encrypted_content` and go out again verbatim
    (without the item ids, which a server that stored nothing cannot resolve)."""
    api = "openai-responses"

    def _request(self, system, messages, tools, budget, prefill):
        kw: dict[str, Any] = dict(model=self.spec.model, input=responses_input(messages), store=False,
                                  max_output_tokens=budget)
        if system:
            kw["instructions"] = system
        if tools:
            kw["tools"] = [t.responses() for t in tools]
        if self.spec.temperature is not None and self.spec.sampling_allowed():
            self._optional(kw, "temperature", self.spec.temperature)
        reasoning = {k: v for k, v in (("effort", self.spec.reasoning_effort), ("summary", self.spec.reasoning_summary))
                     if v is not None}
        if reasoning:
            self._optional(kw, "reasoning", reasoning)
        if reasoning or self.spec.reasoning_model():
            self._optional(kw, "include", ["reasoning.encrypted_content"])
        if not self.spec.stream:
            return self._parse_response(self._client.responses.create(**kw))
        items: dict[int, Any] = {}
        final = None
        with self._client.responses.create(stream=True, **kw) as stream:
            for ev in stream:
                if ev.type == "response.output_item.done":
                    items[ev.output_index] = ev.item
                elif ev.type in ("response.completed", "response.incomplete"):
                    final = ev.response
                elif ev.type == "response.failed":
                    err = ev.response.error
                    raise StreamBroken(f"response.failed: {err.code if err else ''} {err.message if err else ''}")
                elif ev.type == "error":
                    raise StreamBroken(f"error event: {ev.code or ''} {ev.message}")
        if final is None:
            raise StreamBroken("the response stream ended without response.completed")
        if not final.output and items:
            final.output = [items[i] for i in sorted(items)]
        return self._parse_response(final)

    def _parse_response(self, resp) -> _Reply:
        texts, thinking, calls, opaque = [], [], [], []
        for it in resp.output:
            if it.type == "reasoning":
                thinking += [s.text for s in it.summary] + [c.text for c in (it.content or [])]
                if it.encrypted_content:  # without it a stateless request cannot carry the item
                    opaque.append({"type": "reasoning", "summary": [{"type": "summary_text", "text": s.text}
                                                                    for s in it.summary],
                                   "encrypted_content": it.encrypted_content})
            elif it.type == "message":
                t = "".join(c.text if c.type == "output_text" else f"[refusal] {c.refusal}" for c in it.content)
                texts.append(t)
                item: dict[str, Any] = {"role": "assistant", "content": t}
                if getattr(it, "phase", None):
                    item["phase"] = it.phase
                opaque.append(item)
            elif it.type == "function_call":
                calls.append(_tool_call(it.call_id, it.name, it.arguments))
                opaque.append({"type": "function_call", "call_id": it.call_id, "name": it.name, "arguments": it.arguments})
        u = resp.usage
        usage = Usage()
        if u is not None:
            read = (u.input_tokens_details.cached_tokens or 0) if u.input_tokens_details else 0
            write = (getattr(u.input_tokens_details, "cache_write_tokens", 0) or 0) if u.input_tokens_details else 0
            usage = Usage(input_tokens=max(0, u.input_tokens - read - write), output_tokens=u.output_tokens,
                          cache_read_tokens=read, cache_write_tokens=write,
                          reasoning_tokens=(u.output_tokens_details.reasoning_tokens or 0) if u.output_tokens_details else 0)
        reason = resp.incomplete_details.reason if resp.incomplete_details else None
        stop = f"incomplete:{reason}" if resp.status == "incomplete" else (resp.status or "completed")
        return _Reply(text="\n".join(texts), thinking="\n".join(thinking), tool_calls=calls, opaque=opaque, usage=usage,
                      stop_reason=stop, truncated=resp.status == "incomplete" and reason == "max_output_tokens")


def responses_input(messages: list[Message]) -> list[dict]:
    out: list[dict] = []
    for m in messages:
        if m.role == "assistant":
            if m.opaque_api == "openai-responses" and m.opaque:
                out += copy.deepcopy(m.opaque)
                continue
            if m.text or not m.tool_calls:
                out.append({"role": "assistant", "content": m.text or "(no output)"})
            out += [{"type": "function_call", "call_id": c.id, "name": c.name, "arguments": json.dumps(c.arguments)}
                    for c in m.tool_calls]
        elif m.role == "tool":
            out.append({"type": "function_call_output", "call_id": m.tool_call_id, "output": m.text or "(empty)"})
        else:
            out.append({"role": "user", "content": m.text or "(empty)"})
    return out


def make_client(spec: LLMSpec) -> LLMClient:
    if spec.provider == "anthropic":
        return AnthropicClient(spec)
    if spec.provider == "openai":
        return OpenAIResponsesClient(spec) if spec.api == "responses" else OpenAIClient(spec)
    raise LLMError(f"unknown LLM provider {spec.provider!r} (anthropic | openai)")
