"""A small OpenAI-compatible HTTP server of our own that misbehaves on cue, for the openai backend's fault tests.

Each POST /v1/chat/completions takes the next scripted fault, if any, else answers with
`answer(messages)`. Faults: ("status", code, headers), ("garbage",), ("hang", seconds). Every request
(path, headers, body) is logged, so tests can check what was sent, e.g. that a key never leaks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FaultServer:
    def __init__(self, models: tuple[str, ...] = ("test-model",), answer: Callable[[list[dict]], str] | None = None):
        self.models = models
        self.model_info: dict[str, dict[str, Any]] = {}  # extra /v1/models fields per model (root, meta, ...)
        self.answer = answer or (lambda messages: "positive")
        self.faults: list[tuple] = []
        self.fail_forever: tuple | None = None
        self.requests: list[dict[str, Any]] = []
        self.record = True  # keep every request in `requests` (a benchmark sending 20,000 turns it off)
        self.tokenize = False  # serve vLLM's POST /tokenize
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def _next_fault(self) -> tuple | None:
        with self._lock:
            if self.faults:
                return self.faults.pop(0)
            return self.fail_forever

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def do_GET(self) -> None:
                if server.record:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": None})
                if self.path.endswith("/models"):
                    listed = [{"id": m, **server.model_info.get(m, {})} for m in server.models]
                    self._send(200, {"object": "list", "data": listed})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if server.record:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.path == "/tokenize" and server.tokenize:
                    words = sum(len(m["content"].split()) for m in body["messages"])
                    return self._send(200, {"count": words + 5, "max_model_len": 4096})
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": "not found"}})
                if body.get("model") not in server.models:
                    return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                fault = server._next_fault()
                if fault and fault[0] == "status":
                    return self._send(
                        fault[1], {"error": {"message": f"scripted {fault[1]}"}}, fault[2] if len(fault) > 2 else None
                    )
                if fault and fault[0] == "garbage":
                    return self._send(200, b"{not json")
                if fault and fault[0] == "hang":
                    time.sleep(fault[1])
                text = server.answer(body["messages"])
                prompt_tokens = sum(len(m["content"].split()) for m in body["messages"]) + 5
                self._send(
                    200,
                    {
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1},
                    },
                )

        return Handler
