"""The built-in demo model: an OpenAI-compatible chat server on a loopback port.

It runs in its own thread and event loop and speaks real HTTP/1.1 and SSE, so with no API key
the relay still goes through the openai SDK over a socket, exactly as in production.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from typing import Any

import orjson

from .conf import app_settings
from .loopback_server import LoopbackHTTPServer, ResponseWriter, UpstreamRequest
from .openai_shapes import ChunkFactory, chat_completion, error_body
from .usage import TOKENS_PER_MESSAGE, estimate_tokens
from .wire import SSE_DONE, sse_event

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
    """Answers chat completions with `demo_answer`, streamed word by word, to holders of its own key."""

    def __init__(self, token_delay: float) -> None:
        super().__init__()
        self.api_key = f"demo-{secrets.token_urlsafe(24)}"
        self.token_delay = token_delay

    async def handle(self, request: UpstreamRequest, response: ResponseWriter) -> None:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            await response.json(401, error_body("Invalid API key for the demo model.", "invalid_api_key"))
        elif request.method == "POST" and request.path.endswith("/chat/completions"):
            await self._chat(request, response)
        else:
            await response.json(404, error_body(f"No route {request.method} {request.path}.", "not_found"))

    async def _chat(self, request: UpstreamRequest, response: ResponseWriter) -> None:
        try:
            body = request.json()
            messages = body["messages"]
            model = body.get("model", app_settings.CHAT_DEMO_MODEL)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            await response.json(400, error_body("Expected a JSON body with 'messages'.", "invalid_request"))
            return
        pieces = split_into_tokens(demo_answer(messages))
        max_tokens = body.get("max_tokens") or len(pieces)
        finish_reason = "length" if len(pieces) > max_tokens else "stop"
        pieces = pieces[:max_tokens]
        prompt_tokens = sum(estimate_tokens(len(str(m.get("content", "")))) + TOKENS_PER_MESSAGE for m in messages)
        chunks = ChunkFactory(model)
        if not body.get("stream"):
            text = "".join(pieces)
            await response.json(200, chat_completion(chunks, text, finish_reason, prompt_tokens, len(pieces)))
            return
        await response.start_stream()
        if not await response.send(sse_event(chunks.role())):
            return
        for piece in pieces:
            await asyncio.sleep(self.token_delay)
            if not await response.send(sse_event(chunks.content(piece))):
                return
        tail = sse_event(chunks.finish(finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            tail += sse_event(chunks.usage(prompt_tokens, len(pieces)))
        if await response.send(tail + SSE_DONE):
            await response.end_stream()


_demo_server: DemoModelServer | None = None
_demo_server_lock = threading.Lock()


def ensure_demo_server() -> DemoModelServer:
    """Start the process's demo model server on first use."""
    global _demo_server
    with _demo_server_lock:
        if _demo_server is None:
            _demo_server = DemoModelServer(app_settings.CHAT_DEMO_TOKEN_DELAY).start()
        return _demo_server
