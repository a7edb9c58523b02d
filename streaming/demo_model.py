"""The built-in demo model: an OpenAI-compatible chat server on a loopback port.

It runs in its own thread and event loop and speaks real HTTP/1.1 and SSE, so with no API key
the relay still goes through the openai SDK over a socket, exactly as in production.
`LoopbackHTTPServer` is also the base of the test suite's fake upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.conf import settings

from .usage import TOKENS_PER_MESSAGE, estimate_tokens

MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass
class UpstreamRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class ResponseWriter:
    """Writes one HTTP/1.1 response; streams use chunked transfer encoding on a kept-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.keep_alive = True
        self.client_closed = asyncio.Event()
        self.client_closed_at: float | None = None
        self._watcher: asyncio.Task | None = None

    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = orjson.dumps(payload)
        head = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
        self._writer.write(_head(status, head) + body)
        await self._writer.drain()

    async def start_stream(self, headers: dict[str, str] | None = None) -> None:
        head = {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked", **(headers or {})}
        self._writer.write(_head(200, head))
        await self._writer.drain()
        self._watcher = asyncio.ensure_future(self._watch_for_close())

    async def send(self, data: bytes) -> bool:
        """Send part of the body; False once the client has gone away."""
        if self.client_closed.is_set():
            return False
        try:
            self._writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await self._writer.drain()
        except ConnectionError:
            self._mark_closed()
            return False
        return True

    async def end_stream(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if not self.client_closed.is_set():
            self._writer.write(b"0\r\n\r\n")
            try:
                await self._writer.drain()
            except ConnectionError:
                self.keep_alive = False

    def abort(self) -> None:
        """Drop the connection without finishing the response."""
        self.keep_alive = False
        self._writer.transport.abort()

    async def _watch_for_close(self) -> None:
        # The client sends nothing while a response streams, so EOF here means it hung up.
        try:
            await self._reader.read(1)
        except ConnectionError:
            pass
        self._mark_closed()

    def _mark_closed(self) -> None:
        if not self.client_closed.is_set():
            self.client_closed_at = time.monotonic()
            self.client_closed.set()
        self.keep_alive = False


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_request(reader: asyncio.StreamReader) -> UpstreamRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = min(int(headers.get("content-length", "0")), MAX_REQUEST_BYTES)
    body = await reader.readexactly(length) if length else b""
    return UpstreamRequest(method, path, headers, body)


class LoopbackHTTPServer:
    """A small HTTP/1.1 server on 127.0.0.1, in a daemon thread with its own event loop."""

    def __init__(self) -> None:
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LoopbackHTTPServer:
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self) -> None:
        self._loop = loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(self._serve_connection, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            # Dropping the connections lets their handlers end on their own: cancelling a handler
            # task makes asyncio log an error from inside its streams machinery.
            for writer in self._writers:
                writer.transport.abort()
            pending = asyncio.all_tasks(loop)
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=2))
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                response = ResponseWriter(reader, writer)
                await self.handle(request, response)
                if not response.keep_alive:
                    break
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def handle(self, request: UpstreamRequest, response: ResponseWriter) -> None:
        raise NotImplementedError


@dataclass
class ChunkFactory:
    """Builds chat-completion chunks the way OpenAI's API sends them."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{secrets.token_hex(12)}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": choices,
                "usage": usage,
            }
        )

    def role(self) -> bytes:
        return self._chunk([_choice({"role": "assistant", "content": ""})])

    def content(self, text: str) -> bytes:
        return self._chunk([_choice({"content": text})])

    def finish(self, reason: str = "stop") -> bytes:
        return self._chunk([_choice({}, reason)])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        total = prompt_tokens + completion_tokens
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}
        return self._chunk([], usage)


def _choice(delta: dict, finish_reason: str | None = None) -> dict:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
_PIECES = re.compile(r"\s*\S+")


def split_into_tokens(text: str) -> list[str]:
    """Word-sized pieces, each with its leading space, as a tokenizer would stream them."""
    return _PIECES.findall(text)


def demo_answer(messages: list[dict[str, Any]]) -> str:
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    said = " ".join(str(last).split())
    excerpt = said if len(said) <= 80 else said[:77] + "..."
    turns = sum(1 for m in messages if m.get("role") == "user")
    return (
        f"Hello! I am the chatproxy demo model, answering because no OpenAI API key is configured. "
        f'You wrote: "{excerpt}" (message {turns} of this conversation). '
        "Each word of this reply travels from an OpenAI-compatible endpoint through the openai SDK "
        "and the Django relay to your browser, one chunk at a time, and the usage is logged. "
        "Set OPENAI_API_KEY, and OPENAI_BASE_URL for vLLM, Ollama or LM Studio, to talk to a real model."
    )


class DemoModelServer(LoopbackHTTPServer):
    def __init__(self, token_delay: float) -> None:
        super().__init__()
        self.api_key = f"demo-{secrets.token_urlsafe(24)}"
        self.token_delay = token_delay

    async def handle(self, request: UpstreamRequest, response: ResponseWriter) -> None:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            await response.json(401, _error("Invalid API key for the demo model.", "invalid_api_key"))
        elif request.method == "POST" and request.path.endswith("/chat/completions"):
            await self._chat(request, response)
        else:
            await response.json(404, _error(f"No route {request.method} {request.path}.", "not_found"))

    async def _chat(self, request: UpstreamRequest, response: ResponseWriter) -> None:
        try:
            body = request.json()
            messages = body["messages"]
            model = body.get("model", settings.CHAT_DEMO_MODEL)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            await response.json(400, _error("Expected a JSON body with 'messages'.", "invalid_request"))
            return
        pieces = split_into_tokens(demo_answer(messages))
        max_tokens = body.get("max_tokens") or len(pieces)
        finish_reason = "length" if len(pieces) > max_tokens else "stop"
        pieces = pieces[:max_tokens]
        prompt_tokens = sum(estimate_tokens(len(str(m.get("content", "")))) + TOKENS_PER_MESSAGE for m in messages)
        chunks = ChunkFactory(model)
        if not body.get("stream"):
            text = "".join(pieces)
            await response.json(200, _completion(chunks, text, finish_reason, prompt_tokens, len(pieces)))
            return
        await response.start_stream()
        if not await response.send(sse(chunks.role())):
            return
        for piece in pieces:
            await asyncio.sleep(self.token_delay)
            if not await response.send(sse(chunks.content(piece))):
                return
        tail = sse(chunks.finish(finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            tail += sse(chunks.usage(prompt_tokens, len(pieces)))
        if await response.send(tail + SSE_DONE):
            await response.end_stream()


def _completion(chunks: ChunkFactory, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": chunks.id,
        "object": "chat.completion",
        "created": chunks.created,
        "model": chunks.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


_demo_server: DemoModelServer | None = None
_demo_server_lock = threading.Lock()


def ensure_demo_server() -> DemoModelServer:
    """Start the process's demo model server on first use."""
    global _demo_server
    with _demo_server_lock:
        if _demo_server is None:
            _demo_server = DemoModelServer(settings.CHAT_DEMO_TOKEN_DELAY).start()
        return _demo_server
