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

    def role(self, content: str | None = "") -> bytes:
        """The first chunk: the role, with `content` "" (a text answer) or None (a tool-call answer)."""
        return self._chunk([_choice({"role": "assistant", "content": content})])

    def content(self, text: str) -> bytes:
        return self._chunk([_choice({"content": text})])

    def refusal(self, text: str) -> bytes:
        return self._chunk([_choice({"refusal": text})])

    def tool_call_start(self, index: int, call_id: str, name: str) -> bytes:
        """The first delta of a streamed tool call: its id, type and name, no arguments yet."""
        return self._tool_call_delta({"index": index, **tool_call(call_id, name, "")})

    def tool_call_arguments(self, index: int, fragment: str) -> bytes:
        """A further piece of a streamed tool call's arguments, by its index."""
        return self._tool_call_delta({"index": index, "function": {"arguments": fragment}})

    def whole_tool_call(self, index: int, call_id: str, name: str, arguments: str) -> bytes:
        """A whole tool call in one delta, as some providers send it."""
        return self._tool_call_delta({"index": index, **tool_call(call_id, name, arguments)})

    def _tool_call_delta(self, tool_call: dict) -> bytes:
        return self._chunk([_choice({"tool_calls": [tool_call]})])

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
    chunks: ChunkFactory,
    text: str | None,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    tool_calls: list[dict] | None = None,
) -> dict:
    """The non-streaming `chat.completion` object with the same id, time and model as `chunks`."""
    message: dict = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": chunks.id,
        "object": "chat.completion",
        "created": chunks.created,
        "model": chunks.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": token_usage(prompt_tokens, completion_tokens),
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict:
    """A whole function tool call, as a completed message carries it."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def error_body(message: str, code: str, type: str = "invalid_request_error") -> dict:
    """An error response body as OpenAI's API returns it."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}
