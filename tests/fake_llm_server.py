"""A scripted LLM server on 127.0.0.1 for offline tests of the real SDK clients.

It speaks Anthropic's `/v1/messages`, OpenAI's `/v1/chat/completions` and OpenAI's Responses API
`/v1/responses`, each streamed (server-sent events, when the request says `stream: true`) or as
one JSON body, and replays a script of turns, one per request, whichever endpoint asks. Every
request is recorded (path, headers, JSON body, arrival time) so a test can check what the
client really sent.

Every body and every event is an instance of the SDKs' own pydantic types (anthropic.types.
RawMessageStartEvent, openai.types.chat.ChatCompletionChunk, openai.types.responses.
ResponseCompletedEvent, openai.types.ErrorObject, ...) serialised with their `to_dict`, so the
shapes cannot drift from what the clients parse. Streams follow the APIs' event order:

- Anthropic: message_start, ping, per block content_block_start / content_block_delta
  (thinking_delta + signature_delta, text_delta, input_json_delta) / content_block_stop,
  message_delta (stop_reason, cumulative usage), message_stop.
- Chat completions: chat.completion.chunk deltas (role, content, tool_calls by index with the
  arguments in pieces, `reasoning_content` as vLLM/DeepSeek send it), a chunk with
  finish_reason, a usage chunk when `stream_options.include_usage`, `data: [DONE]`.
- Responses: response.created, response.in_progress, per output item output_item.added ...
  (reasoning_summary_part/text, content_part + output_text, function_call_arguments) ...
  output_item.done, then response.completed (or response.incomplete) with usage.

A script item is a `Turn`: text, tool calls, `thinking` (an Anthropic thinking block with a
signature, a Responses reasoning item with encrypted content, chat `reasoning_content`),
usage, or an injected failure (`status`, `delay_s` before answering, `stall_after` events then
a hang, `stream_error` mid-stream). A turn whose `output_tokens` exceed the request's output
limit is cut there, as the APIs cut it (`stop_reason: max_tokens`, `finish_reason: length`,
`status: incomplete`).

Besides the script the server checks requests as the real APIs do, answering with their error
bodies and without consuming a turn: OpenAI reasoning models (names matching
`reasoning_models`) refuse `max_tokens` and `temperature`; Anthropic wants the thinking blocks
of the last tool-use turn back, unchanged (signature checked), `budget_tokens` below
`max_tokens`, no trailing whitespace in a prefill (with `prefill=False`, no prefill at all);
every API wants each tool result to answer a tool call of the turn before it; `refuse` names
OpenAI parameters a stricter server refuses; with
`store: false` the Responses API refuses item ids and encrypted reasoning it did not issue. With `emulate_cache=True` input tokens are counted from
the request (JSON characters / 4) and split into cache reads and writes by prefix, as the
providers do (Anthropic at its `cache_control` breakpoints, looking back up to 20 blocks from
each, OpenAI at any earlier prefix).

Run standalone for manual checks: `python tests/fake_llm_server.py script.json` (prints the port).
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional, Union

from anthropic import types as at
from anthropic.types.raw_message_delta_event import Delta as AnthropicMessageDelta
from openai.types import CompletionUsage, ErrorObject
from openai.types import responses as rt
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as ChatChoice
from openai.types.chat.chat_completion_chunk import (Choice as ChunkChoice, ChoiceDelta, ChoiceDeltaToolCall,
                                                     ChoiceDeltaToolCallFunction)
from openai.types.chat.chat_completion_message_function_tool_call import ChatCompletionMessageFunctionToolCall, Function
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails
from openai.types.responses.response_reasoning_item import Summary as ReasoningSummary
from openai.types.responses.response_reasoning_summary_part_added_event import Part as SummaryPartAdded
from openai.types.responses.response_reasoning_summary_part_done_event import Part as SummaryPartDone
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails
from pydantic import BaseModel, Field

# OpenAI model families that refuse sampling parameters and `max_tokens` (as avo's default).
REASONING_MODELS = (r"(^|/)o\d", r"(^|/)gpt-5", r"(^|/)codex")
CHARS_PER_TOKEN = 4


class Call(BaseModel):
    name: str
    arguments: Union[dict[str, Any], str] = Field(default_factory=dict)  # str = raw (maybe bad) JSON


class Turn(BaseModel):
    text: str = ""
    calls: list[Call] = Field(default_factory=list)
    thinking: Optional[str] = None  # a thinking block / reasoning item / reasoning_content before the answer
    input_tokens: Optional[int] = 100  # None: counted from the request (JSON chars / 4)
    output_tokens: int = 20  # above the request's output limit: the answer is cut at the limit
    status: int = 200  # != 200: answer with this HTTP error instead of a turn
    retry_after: Optional[str] = None  # Retry-After header sent with an error status
    delay_s: float = 0.0  # sleep before answering (a hung server when above the client timeout)
    chunk_delay_s: float = 0.0  # pause between streamed events
    delta_chars: int = 64  # characters per streamed text / argument delta
    stall_after: Optional[int] = None  # streamed events sent before the stream hangs
    stream_error: Optional[str] = None  # Anthropic: an `error` event of this type after the first block


class Recorded(BaseModel):
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    t: float  # time.monotonic() at arrival


def call(name: str, **arguments: Any) -> Call:
    return Call(name=name, arguments=arguments)


class Refusal(Exception):
    """A request the real API would refuse: (HTTP status, error type, message, param, code)."""

    def __init__(self, status: int, kind: str, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.param, self.code = status, kind, message, param, code


def signature(text: str) -> str:
    """What the fake server signs a thinking block with (opaque to the client)."""
    return "sig_" + hashlib.sha256(("avo-fake:" + text).encode()).hexdigest()


class FakeLLMServer:
    """`with FakeLLMServer([Turn(...), ...]) as srv:` then point a client at `srv.anthropic_url`
    or `srv.openai_url` (chat completions and the Responses API). When the script runs out the
    server answers 500 "script exhausted"."""

    def __init__(self, script: list[Turn], reasoning_models: tuple[str, ...] = REASONING_MODELS,
                 emulate_cache: bool = False, prefill: bool = True, refuse: tuple[str, ...] = ()):
        self.script = list(script)
        self.refuse = refuse  # OpenAI parameters this server refuses (an older or stricter server)
        self.prefill = prefill  # False: a model that refuses a conversation ending with an assistant turn
        self.requests: list[Recorded] = []
        self.refusals: list[tuple[int, str]] = []  # (request index, message) of validation errors sent
        self.reasoning_models = reasoning_models
        self.emulate_cache = emulate_cache
        self.cache_keys: set[str] = set()
        self.encrypted: dict[str, str] = {}  # encrypted_content issued -> reasoning item id
        self.lock = threading.Lock()
        self.stop = threading.Event()  # cuts injected delays short at shutdown
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FakeLLMServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def remaining(self) -> int:
        return len(self.script)

    def is_reasoning(self, model: str) -> bool:
        return any(re.search(p, model) for p in self.reasoning_models)

    def _next(self, rec: Recorded, api: str) -> tuple[Optional[Turn], Optional[Refusal], int]:
        with self.lock:
            self.requests.append(rec)
            n = len(self.requests)
            try:
                for p in self.refuse if api != "anthropic" else ():
                    if p in rec.body:
                        raise Refusal(400, "invalid_request_error", f"Unsupported parameter: '{p}' is not supported "
                                      "with this model.", p, "unsupported_parameter")
                VALIDATE[api](self, rec.body)
            except Refusal as r:
                self.refusals.append((n - 1, r.message))
                return None, r, n
            return (self.script.pop(0) if self.script else None), None, n

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                rec = Recorded(path=self.path, headers={k.lower(): v for k, v in self.headers.items()},
                               body=body, t=time.monotonic())
                path = self.path.rstrip("/")
                api = ("anthropic" if path.endswith("/messages") else "chat" if path.endswith("/chat/completions")
                       else "responses" if path.endswith("/responses") else None)
                if api is None:
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                turn, refusal, n_req = server._next(rec, api)
                if refusal is not None:
                    return self._json(refusal.status, error_body(api, refusal))
                if turn is None:
                    return self._json(500, error_body(api, Refusal(500, "api_error", "script exhausted")))
                if turn.delay_s and server.stop.wait(turn.delay_s):
                    return
                if turn.status != 200:
                    kind = {429: "rate_limit_error", 529: "overloaded_error", 400: "invalid_request_error",
                            401: "authentication_error"}.get(turn.status, "api_error")
                    hdrs = {"retry-after": turn.retry_after} if turn.retry_after is not None else {}
                    return self._json(turn.status, error_body(api, Refusal(turn.status, kind, f"injected {turn.status}")), hdrs)
                reply = REPLY[api](server, turn, body, n_req)
                if body.get("stream"):
                    self._stream(api, turn, reply)
                else:
                    self._json(200, reply)

            def _json(self, code: int, obj: dict, headers: Optional[dict] = None) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def _stream(self, api: str, turn: Turn, events: Any) -> None:
                try:
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("cache-control", "no-cache")
                    self.end_headers()
                    for i, (name, data) in enumerate(events):
                        if turn.stall_after is not None and i >= turn.stall_after:
                            server.stop.wait(3600)
                            return
                        if i and turn.chunk_delay_s and server.stop.wait(turn.chunk_delay_s):
                            return
                        frame = (f"event: {name}\n" if name else "") + f"data: {data}\n\n"
                        self.wfile.write(frame.encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


def error_body(api: str, r: Refusal) -> dict:
    if api == "anthropic":
        err = {"invalid_request_error": at.InvalidRequestErrorObject, "rate_limit_error": at.RateLimitErrorObject,
               "overloaded_error": at.OverloadedErrorObject, "authentication_error": at.AuthenticationErrorObject,
               "not_found_error": at.NotFoundErrorObject}.get(r.kind, at.APIErrorObject)
        kind = r.kind if err is not at.APIErrorObject else "api_error"
        return at.ErrorResponse(type="error", error=err(type=kind, message=r.message),
                                request_id=f"req_fake{abs(hash(r.message)) % 10**8}").to_dict(mode="json")
    return {"error": ErrorObject(message=r.message, type=r.kind, param=r.param, code=r.code).to_dict(mode="json")}


def _raw_args(c: Call) -> str:
    return c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)


def _pieces(s: str, n: int) -> Iterator[str]:
    for i in range(0, len(s), max(1, n)):
        yield s[i:i + n]


def _tokens(obj: Any) -> int:
    return max(1, len(json.dumps(obj, sort_keys=True)) // CHARS_PER_TOKEN)


class Cut:
    """The part of a turn that fits the request's output limit: thinking, then text, then the
    calls' arguments, in order, each cut to the characters that fit."""

    def __init__(self, turn: Turn, limit: Optional[int]):
        self.truncated = bool(limit) and turn.output_tokens > limit
        self.output_tokens = min(turn.output_tokens, limit) if self.truncated else turn.output_tokens
        parts = [turn.thinking or "", turn.text] + [_raw_args(c) for c in turn.calls]
        total = sum(len(p) for p in parts)
        keep = int(total * limit / turn.output_tokens) if self.truncated else total
        out = []
        for p in parts:
            out.append(p[:max(0, keep)])
            keep -= len(p)
        self.thinking, self.text = out[0] if turn.thinking is not None else None, out[1]
        self.calls: list[tuple[Call, str, bool]] = []  # (call, raw arguments sent, complete)
        for c, raw in zip(turn.calls, out[2:]):
            if raw or _raw_args(c) == "":
                self.calls.append((c, raw, raw == _raw_args(c)))
            if raw != _raw_args(c):
                break


def _input_usage(srv: FakeLLMServer, turn: Turn, blocks: list[Any], breakpoints: Optional[list[int]]) -> tuple[int, int, int]:
    """(uncached input, cache read, cache write) tokens. Breakpoints None: OpenAI's automatic
    prefix cache (any earlier request's prefix); else Anthropic's explicit cache_control blocks."""
    if not srv.emulate_cache and turn.input_tokens is not None:
        return turn.input_tokens, 0, 0
    sizes = [_tokens(b) for b in blocks]
    total = sum(sizes)
    if not srv.emulate_cache:
        return total, 0, 0
    keys = [hashlib.sha256(json.dumps(blocks[:i + 1], sort_keys=True).encode()).hexdigest() for i in range(len(blocks))]
    points = range(len(blocks)) if breakpoints is None else breakpoints
    # Anthropic looks for an earlier entry up to 20 blocks before each breakpoint
    looked = set(points) if breakpoints is None else {j for i in points for j in range(max(0, i - 19), i + 1)}
    read = max((sum(sizes[:i + 1]) for i in looked if keys[i] in srv.cache_keys), default=0)
    last = max(points, default=-1)
    write = max(0, sum(sizes[:last + 1]) - read) if breakpoints is not None and last >= 0 else 0
    srv.cache_keys.update(keys[i] for i in points)
    return total - read - write, read, write


def _strip_cache(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip_cache(v) for k, v in x.items() if k != "cache_control"}
    if isinstance(x, list):
        return [_strip_cache(v) for v in x]
    return x


# ---------------------------------------------------------------- Anthropic Messages API

def _validate_anthropic(srv: FakeLLMServer, body: dict) -> None:
    msgs = body.get("messages") or []
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens", 0)
        if budget < 1024:
            raise Refusal(400, "invalid_request_error", "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if body.get("max_tokens", 0) <= budget:
            raise Refusal(400, "invalid_request_error", "`max_tokens` must be greater than `thinking.budget_tokens`. "
                          "Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size")
    for i, m in enumerate(msgs):
        content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        if m["role"] == "assistant":
            for b in content:
                if b["type"] == "thinking" and b.get("signature") != signature(b.get("thinking", "")):
                    raise Refusal(400, "invalid_request_error", f"messages.{i}.content: Invalid `signature` in `thinking` block")
            uses = [b["id"] for b in content if b["type"] == "tool_use"]
            nxt = msgs[i + 1] if i + 1 < len(msgs) else None
            answered = [b.get("tool_use_id") for b in (nxt["content"] if nxt and isinstance(nxt["content"], list) else [])
                        if b.get("type") == "tool_result"]
            missing = [u for u in uses if u not in answered]
            if missing:
                raise Refusal(400, "invalid_request_error", f"messages.{i}: `tool_use` ids were found without `tool_result` "
                              f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                              "corresponding `tool_result` block in the next message.")
            if i == len(msgs) - 1:  # a prefill
                if not srv.prefill:
                    raise Refusal(400, "invalid_request_error", "This model does not support assistant message "
                                  "prefill. The conversation must end with a user message.")
                last = content[-1] if content else {}
                if last.get("type") == "text" and last.get("text", "") != last.get("text", "").rstrip():
                    raise Refusal(400, "invalid_request_error", "messages: final assistant content cannot end with trailing whitespace")
        else:
            prev = msgs[i - 1] if i else None
            uses = [b["id"] for b in (prev["content"] if prev and isinstance(prev["content"], list) else [])
                    if b.get("type") == "tool_use"] if prev and prev["role"] == "assistant" else []
            for b in content:
                if b.get("type") == "tool_result" and b.get("tool_use_id") not in uses:
                    raise Refusal(400, "invalid_request_error", f"messages.{i}.content: unexpected `tool_use_id` found in "
                                  f"`tool_result` blocks: {b.get('tool_use_id')}. Each `tool_result` block must have a "
                                  "corresponding `tool_use` block in the previous message.")
    if thinking.get("type") in ("enabled", "adaptive"):
        # The last assistant turn of a tool-use loop must start with its thinking block.
        for i in range(len(msgs) - 1, -1, -1):
            m = msgs[i]
            if m["role"] == "assistant" and isinstance(m["content"], list) and any(b["type"] == "tool_use" for b in m["content"]):
                if m["content"][0]["type"] not in ("thinking", "redacted_thinking"):
                    raise Refusal(400, "invalid_request_error",
                                  f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                                  f"`{m['content'][0]['type']}`. When `thinking` is enabled, a final `assistant` message "
                                  "must start with a thinking block (preceeding the lastmost set of `tool_use` and "
                                  "`tool_result` blocks). We recommend you include thinking blocks from previous turns. "
                                  "To avoid this requirement, disable `thinking`.")
                break
            if m["role"] == "user" and isinstance(m["content"], list) and not any(
                    b.get("type") == "tool_result" for b in m["content"]):
                break


def _anthropic_blocks(body: dict) -> tuple[list[Any], list[int]]:
    blocks: list[Any] = []
    points: list[int] = []
    for t in body.get("tools") or []:
        blocks.append(_strip_cache(t))
        if "cache_control" in t:
            points.append(len(blocks) - 1)
    system = body.get("system") or []
    for b in ([{"type": "text", "text": system}] if isinstance(system, str) else system):
        blocks.append(_strip_cache(b))
        if "cache_control" in b:
            points.append(len(blocks) - 1)
    for m in body.get("messages") or []:
        content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        for b in content:
            blocks.append([m["role"], _strip_cache(b)])
            if isinstance(b, dict) and "cache_control" in b:
                points.append(len(blocks) - 1)
    return blocks, points


def _anthropic_reply(srv: FakeLLMServer, turn: Turn, body: dict, n: int) -> Any:
    cut = Cut(turn, body.get("max_tokens"))
    blocks, points = _anthropic_blocks(body)
    uncached, read, write = _input_usage(srv, turn, blocks, points)
    stop = "max_tokens" if cut.truncated else "tool_use" if turn.calls else "end_turn"
    content: list[Any] = []
    if cut.thinking is not None:
        content.append(at.ThinkingBlock(type="thinking", thinking=cut.thinking,
                                        signature=signature(cut.thinking) if not cut.truncated or cut.text or cut.calls else ""))
    if cut.text:
        content.append(at.TextBlock(type="text", text=cut.text))
    for i, (c, raw, complete) in enumerate(cut.calls):
        # The Messages API always returns an object; a raw string is wrapped so the test still
        # exercises "arguments the tool cannot accept". A cut call has what fitted (streamed) or {}.
        content.append(at.ToolUseBlock(type="tool_use", id=f"toolu_{n}_{i}", name=c.name,
                                       input=_anthropic_input(c) if complete else {}))
    usage = at.Usage(input_tokens=uncached, output_tokens=cut.output_tokens, cache_read_input_tokens=read,
                     cache_creation_input_tokens=write)
    if not body.get("stream"):
        return at.Message(id=f"msg_{n}", type="message", role="assistant", model=body.get("model", "fake"),
                          content=content, stop_reason=stop, stop_sequence=None, usage=usage).to_dict(mode="json")
    return _anthropic_events(turn, body, n, cut, content, usage, stop)


def _anthropic_input(c: Call) -> dict:
    return c.arguments if isinstance(c.arguments, dict) else {"_raw": c.arguments}


def _anthropic_events(turn: Turn, body: dict, n: int, cut: Cut, content: list, usage: Any, stop: str) -> Iterator[tuple[str, str]]:
    def ev(obj: Any) -> tuple[str, str]:
        return obj.type, obj.to_json(indent=None)

    start_usage = at.Usage(input_tokens=usage.input_tokens, output_tokens=1,
                           cache_read_input_tokens=usage.cache_read_input_tokens,
                           cache_creation_input_tokens=usage.cache_creation_input_tokens)
    yield ev(at.RawMessageStartEvent(type="message_start", message=at.Message(
        id=f"msg_{n}", type="message", role="assistant", model=body.get("model", "fake"), content=[],
        stop_reason=None, stop_sequence=None, usage=start_usage)))
    yield "ping", json.dumps({"type": "ping"})
    calls = iter(cut.calls)
    for idx, block in enumerate(content):
        empty = {"thinking": lambda: at.ThinkingBlock(type="thinking", thinking="", signature=""),
                 "text": lambda: at.TextBlock(type="text", text=""),
                 "tool_use": lambda: at.ToolUseBlock(type="tool_use", id=block.id, name=block.name, input={})}[block.type]()
        yield ev(at.RawContentBlockStartEvent(type="content_block_start", index=idx, content_block=empty))
        if block.type == "thinking":
            for p in _pieces(block.thinking, turn.delta_chars):
                yield ev(at.RawContentBlockDeltaEvent(type="content_block_delta", index=idx,
                                                      delta=at.ThinkingDelta(type="thinking_delta", thinking=p)))
            if block.signature:
                yield ev(at.RawContentBlockDeltaEvent(type="content_block_delta", index=idx,
                                                      delta=at.SignatureDelta(type="signature_delta", signature=block.signature)))
        elif block.type == "text":
            for p in _pieces(block.text, turn.delta_chars):
                yield ev(at.RawContentBlockDeltaEvent(type="content_block_delta", index=idx,
                                                      delta=at.TextDelta(type="text_delta", text=p)))
        else:
            c, raw, complete = next(calls)
            js = json.dumps(_anthropic_input(c)) if complete else raw
            for p in _pieces(js, turn.delta_chars):
                yield ev(at.RawContentBlockDeltaEvent(type="content_block_delta", index=idx,
                                                      delta=at.InputJSONDelta(type="input_json_delta", partial_json=p)))
        if turn.stream_error:
            yield "error", json.dumps(error_body("anthropic", Refusal(200, turn.stream_error, "Overloaded")))
            return
        yield ev(at.RawContentBlockStopEvent(type="content_block_stop", index=idx))
    yield ev(at.RawMessageDeltaEvent(type="message_delta", delta=AnthropicMessageDelta(stop_reason=stop, stop_sequence=None),
                                     usage=at.MessageDeltaUsage(output_tokens=usage.output_tokens)))
    yield ev(at.RawMessageStopEvent(type="message_stop"))


# ---------------------------------------------------------------- OpenAI chat completions

def _reasoning_refusals(srv: FakeLLMServer, body: dict, responses: bool) -> None:
    model = body.get("model", "")
    if not srv.is_reasoning(model):
        return
    if not responses and "max_tokens" in body:
        raise Refusal(400, "invalid_request_error", "Unsupported parameter: 'max_tokens' is not supported with this "
                      "model. Use 'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
    for p in ("temperature", "top_p"):
        if p in body and body[p] is not None:
            if responses:
                raise Refusal(400, "invalid_request_error", f"Unsupported parameter: '{p}' is not supported with this model.",
                              p, "unsupported_parameter")
            if body[p] != 1:
                raise Refusal(400, "invalid_request_error", f"Unsupported value: '{p}' does not support {body[p]} with this "
                              "model. Only the default (1) value is supported.", p, "unsupported_value")


def _validate_chat(srv: FakeLLMServer, body: dict) -> None:
    _reasoning_refusals(srv, body, responses=False)
    msgs = body.get("messages") or []
    pending: list[str] = []
    for i, m in enumerate(msgs):
        if m["role"] == "tool":
            if m.get("tool_call_id") not in pending:
                raise Refusal(400, "invalid_request_error", "Invalid parameter: messages with role 'tool' must be a "
                              "response to a preceeding message with 'tool_calls'.", f"messages.[{i}].role")
            pending.remove(m["tool_call_id"])
            continue
        if pending:
            raise Refusal(400, "invalid_request_error", "An assistant message with 'tool_calls' must be followed by tool "
                          "messages responding to each 'tool_call_id'. The following tool_call_ids did not have response "
                          f"messages: {', '.join(pending)}", f"messages.[{i}].role")
        if m["role"] == "assistant":
            pending = [c["id"] for c in m.get("tool_calls") or []]
    if pending:
        raise Refusal(400, "invalid_request_error", "An assistant message with 'tool_calls' must be followed by tool "
                      f"messages responding to each 'tool_call_id'. The following tool_call_ids did not have response "
                      f"messages: {', '.join(pending)}", "messages")


def _chat_usage(srv: FakeLLMServer, turn: Turn, body: dict, cut: Cut) -> CompletionUsage:
    blocks = [_strip_cache(body.get("tools") or [])] + list(body.get("messages") or [])
    uncached, read, _ = _input_usage(srv, turn, blocks, None)
    reasoning = min(cut.output_tokens, _tokens(cut.thinking) if cut.thinking else 0)
    return CompletionUsage(prompt_tokens=uncached + read, completion_tokens=cut.output_tokens,
                           total_tokens=uncached + read + cut.output_tokens,
                           prompt_tokens_details=PromptTokensDetails(cached_tokens=read),
                           completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning))


def _chat_reply(srv: FakeLLMServer, turn: Turn, body: dict, n: int) -> Any:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    cut = Cut(turn, limit)
    usage = _chat_usage(srv, turn, body, cut)
    finish = "length" if cut.truncated else "tool_calls" if turn.calls else "stop"
    model = body.get("model", "fake")
    if not body.get("stream"):
        msg = ChatCompletionMessage(role="assistant", content=cut.text or None, tool_calls=[
            ChatCompletionMessageFunctionToolCall(id=f"call_{n}_{i}", type="function", function=Function(name=c.name, arguments=raw))
            for i, (c, raw, _) in enumerate(cut.calls)] or None)
        if cut.thinking:
            msg.reasoning_content = cut.thinking  # type: ignore[attr-defined]  # vLLM / DeepSeek extension
        return ChatCompletion(id=f"chatcmpl-{n}", object="chat.completion", created=int(time.time()), model=model,
                              choices=[ChatChoice(index=0, message=msg, finish_reason=finish)], usage=usage).to_dict(mode="json")
    return _chat_events(turn, body, n, cut, usage, finish)


def _chat_events(turn: Turn, body: dict, n: int, cut: Cut, usage: CompletionUsage, finish: str) -> Iterator[tuple[str, str]]:
    created, model = int(time.time()), body.get("model", "fake")

    def chunk(delta: Optional[ChoiceDelta] = None, finish_reason: Optional[str] = None, with_usage: bool = False):
        ch = ChatCompletionChunk(id=f"chatcmpl-{n}", object="chat.completion.chunk", created=created, model=model,
                                 choices=[] if with_usage else [ChunkChoice(index=0, delta=delta or ChoiceDelta(),
                                                                            finish_reason=finish_reason)],
                                 usage=usage if with_usage else None)
        return "", ch.to_json(indent=None)

    yield chunk(ChoiceDelta(role="assistant", content=""))
    if cut.thinking:
        for p in _pieces(cut.thinking, turn.delta_chars):
            yield chunk(ChoiceDelta(reasoning_content=p))  # type: ignore[call-arg]  # vLLM / DeepSeek extension
    for p in _pieces(cut.text, turn.delta_chars):
        yield chunk(ChoiceDelta(content=p))
    for i, (c, raw, _) in enumerate(cut.calls):
        yield chunk(ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(index=i, id=f"call_{n}_{i}", type="function",
                                                                function=ChoiceDeltaToolCallFunction(name=c.name, arguments=""))]))
        for p in _pieces(raw, turn.delta_chars):
            yield chunk(ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(index=i, function=ChoiceDeltaToolCallFunction(arguments=p))]))
    yield chunk(ChoiceDelta(), finish_reason=finish)
    if (body.get("stream_options") or {}).get("include_usage"):
        yield chunk(with_usage=True)
    yield "", "[DONE]"


# ---------------------------------------------------------------- OpenAI Responses API

def _validate_responses(srv: FakeLLMServer, body: dict) -> None:
    _reasoning_refusals(srv, body, responses=True)
    items = body.get("input") or []
    if isinstance(items, str):
        return
    calls: set[str] = set()
    for i, it in enumerate(items):
        kind = it.get("type", "message")
        if body.get("store") is False and it.get("id"):
            raise Refusal(404, "invalid_request_error", f"Item with id '{it['id']}' not found. Items are not persisted when "
                          "`store` is set to false. Try again with `store` set to true, or remove this item from your input.",
                          "input")
        if kind == "reasoning":
            if it.get("encrypted_content") not in srv.encrypted:
                raise Refusal(400, "invalid_request_error", f"The encrypted content for item input[{i}] could not be "
                              "verified.", f"input[{i}].encrypted_content", "invalid_encrypted_content")
            if it.get("content"):
                raise Refusal(400, "invalid_request_error", f"Invalid 'input[{i}].content': array too long. Expected an "
                              "array with maximum length 0.", f"input[{i}].content", "array_above_max_length")
        elif kind == "function_call":
            calls.add(it["call_id"])
        elif kind == "function_call_output" and it.get("call_id") not in calls:
            raise Refusal(400, "invalid_request_error", f"No tool call found for function call output with call_id "
                          f"{it.get('call_id')}.", "input")


def _responses_reply(srv: FakeLLMServer, turn: Turn, body: dict, n: int) -> Any:
    cut = Cut(turn, body.get("max_output_tokens"))
    blocks = [body.get("instructions") or "", _strip_cache(body.get("tools") or [])] + list(body.get("input") or [])
    uncached, read, write = _input_usage(srv, turn, blocks, None)
    reasoning_tokens = min(cut.output_tokens, _tokens(cut.thinking) if cut.thinking else 0)
    usage = rt.ResponseUsage(input_tokens=uncached + read, output_tokens=cut.output_tokens,
                             total_tokens=uncached + read + cut.output_tokens,
                             input_tokens_details=InputTokensDetails(cached_tokens=read, cache_write_tokens=write),
                             output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens))
    items: list[Any] = []
    if cut.thinking is not None:
        enc = "enc_" + hashlib.sha256(f"{n}:{cut.thinking}".encode()).hexdigest()
        srv.encrypted[enc] = f"rs_{n}"
        items.append(rt.ResponseReasoningItem(type="reasoning", id=f"rs_{n}", status="completed", encrypted_content=enc,
                                              summary=[ReasoningSummary(type="summary_text", text=cut.thinking)] if cut.thinking else []))
    if cut.text:
        items.append(rt.ResponseOutputMessage(type="message", id=f"msg_{n}", role="assistant",
                                              status="incomplete" if cut.truncated and not cut.calls else "completed",
                                              content=[rt.ResponseOutputText(type="output_text", text=cut.text, annotations=[])]))
    for i, (c, raw, complete) in enumerate(cut.calls):
        items.append(rt.ResponseFunctionToolCall(type="function_call", id=f"fc_{n}_{i}", call_id=f"call_{n}_{i}", name=c.name,
                                                 arguments=raw, status="completed" if complete else "incomplete"))

    def response(status: str, output: list, with_usage: bool) -> rt.Response:
        return rt.Response(id=f"resp_{n}", object="response", created_at=float(int(time.time())), model=body.get("model", "fake"),
                           output=output, parallel_tool_calls=True, tool_choice="auto", tools=[], status=status,
                           incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,
                           usage=usage if with_usage else None, store=body.get("store", True))

    final = response("incomplete" if cut.truncated else "completed", items, True)
    if not body.get("stream"):
        return final.to_dict(mode="json")
    return _responses_events(turn, n, items, response, final)


def _responses_events(turn: Turn, n: int, items: list, response: Any, final: rt.Response) -> Iterator[tuple[str, str]]:
    seq = iter(range(10**6))

    def ev(cls: Any, **kw: Any) -> tuple[str, str]:
        obj = cls(sequence_number=next(seq), **kw)
        return obj.type, obj.to_json(indent=None)

    yield ev(rt.ResponseCreatedEvent, type="response.created", response=response("in_progress", [], False))
    yield ev(rt.ResponseInProgressEvent, type="response.in_progress", response=response("in_progress", [], False))
    for oi, item in enumerate(items):
        if item.type == "reasoning":
            yield ev(rt.ResponseOutputItemAddedEvent, type="response.output_item.added", output_index=oi,
                     item=rt.ResponseReasoningItem(type="reasoning", id=item.id, summary=[], status="in_progress"))
            for si, s in enumerate(item.summary):
                yield ev(rt.ResponseReasoningSummaryPartAddedEvent, type="response.reasoning_summary_part.added",
                         item_id=item.id, output_index=oi, summary_index=si, part=SummaryPartAdded(type="summary_text", text=""))
                for p in _pieces(s.text, turn.delta_chars):
                    yield ev(rt.ResponseReasoningSummaryTextDeltaEvent, type="response.reasoning_summary_text.delta",
                             item_id=item.id, output_index=oi, summary_index=si, delta=p)
                yield ev(rt.ResponseReasoningSummaryTextDoneEvent, type="response.reasoning_summary_text.done",
                         item_id=item.id, output_index=oi, summary_index=si, text=s.text)
                yield ev(rt.ResponseReasoningSummaryPartDoneEvent, type="response.reasoning_summary_part.done",
                         item_id=item.id, output_index=oi, summary_index=si, part=SummaryPartDone(type="summary_text", text=s.text))
        elif item.type == "message":
            text = item.content[0].text
            yield ev(rt.ResponseOutputItemAddedEvent, type="response.output_item.added", output_index=oi,
                     item=rt.ResponseOutputMessage(type="message", id=item.id, role="assistant", status="in_progress", content=[]))
            yield ev(rt.ResponseContentPartAddedEvent, type="response.content_part.added", item_id=item.id, output_index=oi,
                     content_index=0, part=rt.ResponseOutputText(type="output_text", text="", annotations=[]))
            for p in _pieces(text, turn.delta_chars):
                yield ev(rt.ResponseTextDeltaEvent, type="response.output_text.delta", item_id=item.id, output_index=oi,
                         content_index=0, delta=p, logprobs=[])
            yield ev(rt.ResponseTextDoneEvent, type="response.output_text.done", item_id=item.id, output_index=oi,
                     content_index=0, text=text, logprobs=[])
            yield ev(rt.ResponseContentPartDoneEvent, type="response.content_part.done", item_id=item.id, output_index=oi,
                     content_index=0, part=item.content[0])
        else:
            yield ev(rt.ResponseOutputItemAddedEvent, type="response.output_item.added", output_index=oi,
                     item=rt.ResponseFunctionToolCall(type="function_call", id=item.id, call_id=item.call_id, name=item.name,
                                                      arguments="", status="in_progress"))
            for p in _pieces(item.arguments, turn.delta_chars):
                yield ev(rt.ResponseFunctionCallArgumentsDeltaEvent, type="response.function_call_arguments.delta",
                         item_id=item.id, output_index=oi, delta=p)
            yield ev(rt.ResponseFunctionCallArgumentsDoneEvent, type="response.function_call_arguments.done",
                     item_id=item.id, output_index=oi, arguments=item.arguments)
        yield ev(rt.ResponseOutputItemDoneEvent, type="response.output_item.done", output_index=oi, item=item)
    if final.status == "incomplete":
        yield ev(rt.ResponseIncompleteEvent, type="response.incomplete", response=final)
    else:
        yield ev(rt.ResponseCompletedEvent, type="response.completed", response=final)


VALIDATE = {"anthropic": _validate_anthropic, "chat": _validate_chat, "responses": _validate_responses}
REPLY = {"anthropic": _anthropic_reply, "chat": _chat_reply, "responses": _responses_reply}


if __name__ == "__main__":
    turns = [Turn.model_validate(t) for t in json.loads(open(sys.argv[1]).read())] if len(sys.argv) > 1 else []
    with FakeLLMServer(turns) as srv:
        print(srv.port, flush=True)
        try:
            srv.thread.join()
        except KeyboardInterrupt:
            pass
