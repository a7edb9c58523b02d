"""The JSON shapes of OpenAI's chat completions API, as its servers send them.

Everything that plays an OpenAI-compatible upstream builds its bodies here: the demo model, the
test suite's fake upstream and the benchmark's upstream process. No Django import, so the
benchmark's upstream (a separate, lean process) can use it too.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import orjson


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
        return self._chunk([], token_usage(prompt_tokens, completion_tokens))


def _choice(delta: dict, finish_reason: str | None = None) -> dict:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def token_usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The `usage` object of a completion or of a stream's final chunk."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    chunks: ChunkFactory, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict:
    """The non-streaming `chat.completion` object with the same id, time and model as `chunks`."""
    return {
        "id": chunks.id,
        "object": "chat.completion",
        "created": chunks.created,
        "model": chunks.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": token_usage(prompt_tokens, completion_tokens),
    }


def error_body(message: str, code: str, type: str = "invalid_request_error") -> dict:
    """An error response body as OpenAI's API returns it."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}
