"""The JSON shapes of OpenAI's chat completions and Responses APIs, as its servers send them.

Everything that plays an OpenAI-compatible upstream builds its bodies here: the demo model, the
test suite's fake upstream and the benchmark's upstream process. No Django import, so the
benchmark's upstream (a separate, lean process) can use it too.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from .wire import sse_event


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


# --- The Responses API -------------------------------------------------------------------------

# What a response object echoes of the request that made it, with OpenAI's defaults.
RESPONSE_REQUEST_FIELDS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
}


@dataclass
class ResponseEventFactory:
    """Builds one response's stream of Responses events, numbered in order, as OpenAI's API sends them.

    Each method returns the SSE bytes of its events (`event: <type>` + `data: <json>`). Items are
    added by output index; the final lifecycle event carries every finished item in `output`.
    """

    model: str
    request: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: f"resp_{secrets.token_hex(24)}")
    created_at: int = field(default_factory=lambda: int(time.time()))
    sequence_number: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)

    def event(self, type: str, **fields: Any) -> bytes:
        payload = {"type": type, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return sse_event(orjson.dumps(payload), type)

    def response(self, status: str, **fields: Any) -> dict[str, Any]:
        """The response object in a lifecycle event."""
        echoed = {name: self.request.get(name, default) for name, default in RESPONSE_REQUEST_FIELDS.items()}
        if self.request.get("text") and "format" not in self.request["text"]:
            echoed["text"] = {**RESPONSE_REQUEST_FIELDS["text"], **self.request["text"]}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "model": self.model,
            "output": list(self.output) if status != "in_progress" else [],
            "truncation": "disabled",
            "usage": None,
            "user": None,
            **echoed,
            **fields,
        }

    def created(self) -> bytes:
        """`response.created` and `response.in_progress`: how every stream begins."""
        return self.event("response.created", response=self.response("in_progress")) + self.event(
            "response.in_progress", response=self.response("in_progress")
        )

    def message_start(self, output_index: int, item_id: str) -> bytes:
        item = {"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
        return self.event("response.output_item.added", output_index=output_index, item=item) + self.event(
            "response.content_part.added",
            item_id=item_id,
            output_index=output_index,
            content_index=0,
            part=output_text(""),
        )

    def text_delta(self, output_index: int, item_id: str, delta: str) -> bytes:
        return self.event(
            "response.output_text.delta",
            item_id=item_id,
            output_index=output_index,
            content_index=0,
            delta=delta,
            logprobs=[],
        )

    def message_done(self, output_index: int, item_id: str, text: str, *, status: str = "completed") -> bytes:
        """The message item's end; it joins `output`."""
        item = {"id": item_id, "type": "message", "status": status, "content": [output_text(text)], "role": "assistant"}
        self.output.append(item)
        return (
            self.event(
                "response.output_text.done",
                item_id=item_id,
                output_index=output_index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            + self.event(
                "response.content_part.done",
                item_id=item_id,
                output_index=output_index,
                content_index=0,
                part=output_text(text),
            )
            + self.event("response.output_item.done", output_index=output_index, item=item)
        )

    def function_call_start(self, output_index: int, item_id: str, call_id: str, name: str) -> bytes:
        item = function_call_item(item_id, call_id, name, "", status="in_progress")
        return self.event("response.output_item.added", output_index=output_index, item=item)

    def function_call_arguments(self, output_index: int, item_id: str, delta: str) -> bytes:
        return self.event(
            "response.function_call_arguments.delta", item_id=item_id, output_index=output_index, delta=delta
        )

    def function_call_done(
        self, output_index: int, item_id: str, call_id: str, name: str, arguments: str, *, status: str = "completed"
    ) -> bytes:
        """The function call item's end; it joins `output`."""
        item = function_call_item(item_id, call_id, name, arguments, status=status)
        self.output.append(item)
        return self.event(
            "response.function_call_arguments.done",
            item_id=item_id,
            output_index=output_index,
            name=name,
            arguments=arguments,
        ) + self.event("response.output_item.done", output_index=output_index, item=item)

    def completed(
        self, input_tokens: int, output_tokens: int, *, cached_tokens: int = 0, reasoning_tokens: int = 0
    ) -> bytes:
        usage = response_usage(
            input_tokens, output_tokens, cached_tokens=cached_tokens, reasoning_tokens=reasoning_tokens
        )
        return self.event("response.completed", response=self.response("completed", usage=usage))

    def incomplete(self, reason: str, input_tokens: int, output_tokens: int) -> bytes:
        """The end of an answer cut short (`max_output_tokens`, `content_filter`)."""
        return self.event(
            "response.incomplete",
            response=self.response(
                "incomplete",
                incomplete_details={"reason": reason},
                usage=response_usage(input_tokens, output_tokens),
            ),
        )

    def failed(self, message: str, code: str = "server_error") -> bytes:
        return self.event("response.failed", response=self.response("failed", error={"code": code, "message": message}))

    def error(self, message: str, code: str | None = None) -> bytes:
        """An `error` event: the stream's end without a final response."""
        return self.event("error", code=code, message=message, param=None)


def output_text(text: str) -> dict[str, Any]:
    """An `output_text` content part of a message item."""
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, *, status: str = "completed") -> dict:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def response_usage(input_tokens: int, output_tokens: int, *, cached_tokens: int = 0, reasoning_tokens: int = 0) -> dict:
    """The `usage` object of a finished response."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }
