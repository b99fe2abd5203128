"""A tiny real HTTP server answering with a scripted status, headers and body.

For the few responses the gateway does not produce (an HTTP-date Retry-After, a malformed 200,
a real Ollama's identity); it listens on a real socket like any LLM would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.services.llm_gateway.server import serving


@dataclass
class Script:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


@contextmanager
def scripted_server(script: Script) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            script.requests.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
            body = script.body if isinstance(script.body, bytes) else json.dumps(script.body).encode()
            self.send_response(script.status)
            for name, value in {"Content-Type": "application/json", **script.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815 (http.server's naming)

        def log_message(self, format: str, *args: object) -> None:
            return None

    with serving(Handler) as url:
        yield url
