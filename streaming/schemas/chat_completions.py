"""The chat-completions request: the body of `POST /api/chat/stream`, validated and typed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from ..conf import app_settings
from ..errors import input_too_long, invalid_request
from ..usage import TOKENS_PER_MESSAGE, estimate_tokens

ROLES = ("system", "user", "assistant")
FIELDS = ("messages", "model", "max_tokens", "temperature")


@dataclass(frozen=True)
class ChatCompletionRequest:
    messages: list[dict[str, str]]
    model: str
    max_tokens: int
    temperature: float | None

    def upstream_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model, "messages": self.messages, "max_tokens": self.max_tokens}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        return params

    @property
    def input_chars(self) -> int:
        return sum(len(message["content"]) for message in self.messages)

    def estimated_input_tokens(self) -> int:
        return estimate_tokens(self.input_chars) + TOKENS_PER_MESSAGE * len(self.messages)


def parse_chat_completion_request(body: bytes) -> ChatCompletionRequest:
    """Validate a request body; raise ApiError (400/413) naming the offending field."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid_request("The request body is not valid JSON (UTF-8).", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise invalid_request(
            f"Unknown field(s): {', '.join(unknown)}. Allowed fields: {', '.join(FIELDS)}.", code="unknown_field"
        )
    return ChatCompletionRequest(
        messages=_messages(data.get("messages")),
        model=_model(data.get("model")),
        max_tokens=_max_tokens(data.get("max_tokens")),
        temperature=_temperature(data.get("temperature")),
    )


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise invalid_request(
            "'messages' must be a non-empty list of {role, content} objects.", code="invalid_messages"
        )
    limit = app_settings.CHAT_MAX_MESSAGES
    if len(value) > limit:
        raise invalid_request(
            f"'messages' has {len(value)} entries; at most {limit} are allowed.", code="too_many_messages"
        )
    messages = []
    for index, message in enumerate(value):
        field = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid_request(f"'{field}' must be an object with 'role' and 'content'.", code="invalid_messages")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise invalid_request(f"'{field}' has unknown field(s): {', '.join(extra)}.", code="invalid_messages")
        role = message.get("role")
        if role not in ROLES:
            raise invalid_request(f"'{field}.role' must be one of: {', '.join(ROLES)}.", code="invalid_role")
        content = message.get("content")
        if not isinstance(content, str):
            raise invalid_request(f"'{field}.content' must be a string.", code="invalid_content")
        messages.append({"role": role, "content": content})
    total = sum(len(message["content"]) for message in messages)
    if total > app_settings.CHAT_MAX_INPUT_CHARS:
        raise input_too_long(field="messages", size=total, limit=app_settings.CHAT_MAX_INPUT_CHARS)
    return messages


def _model(value: object) -> str:
    if value is None:
        return app_settings.CHAT_DEFAULT_MODEL
    allowed = app_settings.CHAT_ALLOWED_MODELS
    if not isinstance(value, str) or value not in allowed:
        raise invalid_request(f"'model' must be one of: {', '.join(allowed)}.", code="model_not_allowed")
    return value


def _max_tokens(value: object) -> int:
    cap = app_settings.CHAT_MAX_TOKENS
    if value is None:
        return cap
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid_request("'max_tokens' must be a positive integer.", code="invalid_max_tokens")
    return min(value, cap)


def _temperature(value: object) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= 2
    ):
        raise invalid_request("'temperature' must be a number from 0 to 2.", code="invalid_temperature")
    return float(value)
