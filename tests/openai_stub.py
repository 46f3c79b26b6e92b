"""A tiny OpenAI-compatible chat-completions server (stdlib) for tests: replies come from a function."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    def __init__(self, reply, status: int = 200):
        self.reply = reply  # (messages, body) -> str, or a dict: the reply's message (content, tool_calls)
        self.status = status
        self.requests: list[tuple[dict, dict]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((dict(self.headers), body))
                if stub.status != 200:
                    self.send_response(stub.status)
                    self.end_headers()
                    return
                reply = stub.reply(body["messages"], body)
                message = {"role": "assistant", **(reply if isinstance(reply, dict) else {"content": reply})}
                words = len(str(message.get("content") or "").split())
                data = json.dumps({"choices": [{"message": message}], "usage": {"completion_tokens": words}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
