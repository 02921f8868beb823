"""A scripted LLM server on 127.0.0.1 for offline tests of the real SDK clients.

It speaks Anthropic's `/v1/messages` and OpenAI's `/v1/chat/completions` (non-streaming) and
replays a script of turns, one per request, whichever endpoint asks. Every request is recorded
(path, headers, JSON body, arrival time) so a test can check what the client really sent.

A script item is a `Turn`: text and/or tool calls, optional usage, or an injected failure
(`status=429` / `status=500` with an error body, or `delay_s` to hang past the client timeout).
Run standalone for manual checks: `python tests/fake_llm_server.py script.json` (prints the port).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Union

from pydantic import BaseModel, Field


class Call(BaseModel):
    name: str
    arguments: Union[dict[str, Any], str] = Field(default_factory=dict)  # str = raw (maybe bad) JSON


class Turn(BaseModel):
    text: str = ""
    calls: list[Call] = Field(default_factory=list)
    input_tokens: int = 100
    output_tokens: int = 20
    status: int = 200  # != 200: answer with this HTTP error instead of a turn
    retry_after: Optional[str] = None  # Retry-After header sent with an error status
    delay_s: float = 0.0  # sleep before answering (a hung server when above the client timeout)


class Recorded(BaseModel):
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    t: float  # time.monotonic() at arrival


def call(name: str, **arguments: Any) -> Call:
    return Call(name=name, arguments=arguments)


class FakeLLMServer:
    """`with FakeLLMServer([Turn(...), ...]) as srv:` then point a client at `srv.anthropic_url`
    or `srv.openai_url`. When the script runs out the server answers 500 "script exhausted"."""

    def __init__(self, script: list[Turn]):
        self.script = list(script)
        self.requests: list[Recorded] = []
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

    def _next(self, rec: Recorded) -> Optional[Turn]:
        with self.lock:
            self.requests.append(rec)
            return self.script.pop(0) if self.script else None

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
                anthropic = self.path.rstrip("/").endswith("/messages")
                if not anthropic and not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                turn = server._next(rec)
                if turn is None:
                    return self._send(500, _error(anthropic, "api_error", "script exhausted"))
                if turn.delay_s and server.stop.wait(turn.delay_s):
                    return
                if turn.status != 200:
                    kind = "rate_limit_error" if turn.status == 429 else "api_error"
                    hdrs = {"retry-after": turn.retry_after} if turn.retry_after is not None else {}
                    return self._send(turn.status, _error(anthropic, kind, f"injected {turn.status}"), hdrs)
                n_req = len(server.requests)
                out = _anthropic_reply(turn, body, n_req) if anthropic else _openai_reply(turn, body, n_req)
                self._send(200, out)

            def _send(self, code: int, obj: dict, headers: Optional[dict] = None) -> None:
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

        return Handler


def _error(anthropic: bool, kind: str, message: str) -> dict:
    if anthropic:
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "code": None}}


def _raw_args(c: Call) -> str:
    return c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)


def _anthropic_reply(turn: Turn, body: dict, n: int) -> dict:
    content: list[dict] = []
    if turn.text:
        content.append({"type": "text", "text": turn.text})
    for i, c in enumerate(turn.calls):
        # The Messages API always returns an object; a raw string is wrapped so the test still
        # exercises "arguments the tool cannot accept".
        args = c.arguments if isinstance(c.arguments, dict) else {"_raw": c.arguments}
        content.append({"type": "tool_use", "id": f"toolu_{n}_{i}", "name": c.name, "input": args})
    return {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": body.get("model", "fake"),
            "content": content, "stop_reason": "tool_use" if turn.calls else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens}}


def _openai_reply(turn: Turn, body: dict, n: int) -> dict:
    msg: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if turn.calls:
        msg["tool_calls"] = [{"id": f"call_{n}_{i}", "type": "function",
                              "function": {"name": c.name, "arguments": _raw_args(c)}}
                             for i, c in enumerate(turn.calls)]
    return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if turn.calls else "stop"}],
            "usage": {"prompt_tokens": turn.input_tokens, "completion_tokens": turn.output_tokens,
                      "total_tokens": turn.input_tokens + turn.output_tokens}}


if __name__ == "__main__":
    turns = [Turn.model_validate(t) for t in json.loads(open(sys.argv[1]).read())] if len(sys.argv) > 1 else []
    with FakeLLMServer(turns) as srv:
        print(srv.port, flush=True)
        try:
            srv.thread.join()
        except KeyboardInterrupt:
            pass
