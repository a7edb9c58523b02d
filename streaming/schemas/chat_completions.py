"""The chat-completions request: the body of `POST /api/chat/stream`, validated and typed.

The accepted shape follows OpenAI's `POST /chat/completions` (types and ranges as its API
reference and the openai SDK's `completion_create_params` give them), narrowed to what this site
relays: text, images and function tools in, text, refusals, logprobs and tool calls out. Every
refusal names the path of the offending field (`messages[2].content[1].image_url.url`).

What the client sent, once validated, is what the upstream gets, key for key; the only changes
are the `max_tokens`/`max_completion_tokens` clamp, the client's `user`/`safety_identifier`
(dropped: the relay sends the server's pseudonym instead) and nulls (left out).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..conf import app_settings
from ..errors import input_too_long, invalid_request, parameter_not_allowed, too_large, too_many, unsupported
from ..usage import TOKENS_PER_MESSAGE, estimate_tokens

ROLES = ("system", "developer", "user", "assistant", "tool")
# The fields each role's message may carry (`name` where OpenAI allows it: not on tool messages).
MESSAGE_FIELDS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "refusal", "tool_calls"},
    "tool": {"role", "content", "tool_call_id"},
}
# The content-part types each role may send; `input_audio` and `file` parts are refused as such.
PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}
UNSUPPORTED_PART_TYPES = ("input_audio", "file")
IMAGE_DETAILS = ("auto", "low", "high")
DATA_IMAGE_URL = re.compile(r"data:image/(?:png|jpeg|gif|webp);base64,")
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOOL_CHOICES = ("none", "auto", "required")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
VERBOSITIES = ("low", "medium", "high")
STREAM_OPTIONS = ("include_usage", "include_obfuscation")
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100
MAX_SEED = 2**63 - 1
# OpenAI's bounds on `metadata`: 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
# Tokens counted for each image when the upstream reports no usage: OpenAI's documented figure for
# a 512×512 image at detail auto/high on GPT-4o (85 base tokens + 170 for its one tile).
TOKENS_PER_IMAGE = 255

# The client's own end-user fields: accepted, never forwarded (the relay sends the server's pseudonym).
PSEUDONYM_FIELDS = ("user", "safety_identifier")
# Stored completions are the site owner's data-retention decision (CHAT_ALLOW_STORE).
STORE_FIELDS = ("store", "metadata")
FIELDS = (
    "messages",
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "verbosity",
    "parallel_tool_calls",
    "stream_options",
    "tools",
    "tool_choice",
    "response_format",
    *PSEUDONYM_FIELDS,
    *STORE_FIELDS,
)
# The relay's own: never passed through, even when a site lists it in CHAT_EXTRA_PARAMETERS (the
# relay always streams from the upstream; the client's `stream` says only how it wants the answer).
RELAY_FIELDS = ("stream",)


@dataclass(frozen=True, kw_only=True)
class ChatCompletionRequest:
    messages: list[dict[str, Any]]
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    # Whether the client wants the answer streamed (the relay streams from the upstream either way).
    stream: bool = True
    # Every other parameter the client sent, validated (and clamped), in the client's order.
    parameters: dict[str, Any] = field(default_factory=dict)

    def upstream_params(self) -> dict[str, Any]:
        """The body for the upstream: model, messages and every accepted parameter, as validated."""
        params: dict[str, Any] = {"model": self.model, "messages": self.messages}
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            params["temperature"] = self.temperature
        params.update(self.parameters)
        return params

    @property
    def include_usage(self) -> bool:
        """Whether the client gets the usage: always in a single answer; in a stream only if it asked
        (`stream_options.include_usage`). The relay always asks the upstream, to account for it."""
        return not self.stream or bool((self.parameters.get("stream_options") or {}).get("include_usage"))

    @property
    def input_chars(self) -> int:
        """Characters of text across all messages: content, text and refusal parts, tool-call arguments."""
        return sum(len(text) for message in self.messages for text in _message_texts(message))

    @property
    def image_count(self) -> int:
        return sum(1 for message in self.messages for _ in _image_parts(message))

    @property
    def schema_bytes(self) -> int:
        """The JSON size of the tool and response-format schemas the model reads."""
        size = len(orjson.dumps(self.parameters["tools"])) if "tools" in self.parameters else 0
        response_format = self.parameters.get("response_format") or {}
        if "json_schema" in response_format:
            size += len(orjson.dumps(response_format["json_schema"]))
        return size

    def estimated_input_tokens(self) -> int:
        """About four characters a token for all text and schemas, per-message overhead, and
        TOKENS_PER_IMAGE for each image; used only where the upstream reports no usage."""
        return (
            estimate_tokens(self.input_chars + self.schema_bytes)
            + TOKENS_PER_MESSAGE * len(self.messages)
            + TOKENS_PER_IMAGE * self.image_count
        )


def parse_chat_completion_request(body: bytes, *, stream_default: bool = True) -> ChatCompletionRequest:
    """Validate a request body; raise ApiError (400/413) naming the offending field.

    `stream_default` is what a body without `stream` means: the page's API streams, while OpenAI's
    (and so `/v1`) answers with one object.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid_request("The request body is not valid JSON (UTF-8).", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    extra_parameters = [name for name in app_settings.CHAT_EXTRA_PARAMETERS if name not in RELAY_FIELDS]
    unknown = sorted(name for name in data if name not in FIELDS and name not in extra_parameters)
    if unknown:
        allowed = ", ".join([*FIELDS, *extra_parameters])
        raise invalid_request(
            f"Unknown field(s): {', '.join(repr(name) for name in unknown)}. Allowed fields: {allowed}.",
            code="unknown_field",
        )
    if not app_settings.CHAT_ALLOW_STORE:
        for name in STORE_FIELDS:
            if data.get(name) is not None:
                raise parameter_not_allowed(field=name, setting="CHAT_ALLOW_STORE")
    _tools(data.get("tools"))  # first: tool_choice names its tools
    parameters: dict[str, Any] = {}
    for name, value in data.items():
        if value is None or name in ("messages", "model", "stream", "max_tokens", "temperature", *PSEUDONYM_FIELDS):
            continue
        if name in FIELDS:
            parameters[name] = PARAMETERS[name](value, data)
        else:
            parameters[name] = value
    for name in PSEUDONYM_FIELDS:
        _optional_string(data.get(name), name)
    max_tokens = _max_tokens(data.get("max_tokens"), "max_tokens")
    if max_tokens is None and "max_completion_tokens" not in parameters:
        max_tokens = app_settings.CHAT_MAX_TOKENS
    _optional_bool(data.get("stream"), "stream")
    stream = stream_default if data.get("stream") is None else bool(data["stream"])
    if not stream and "stream_options" in parameters:
        raise invalid_request("'stream_options' is allowed only when 'stream' is true.", code="invalid_stream_options")
    request = ChatCompletionRequest(
        stream=stream,
        messages=_messages(data.get("messages")),
        model=_model(data.get("model")),
        max_tokens=max_tokens,
        temperature=_number(data.get("temperature"), "temperature", low=0, high=2),
        parameters=parameters,
    )
    _check_bounds(request)
    return request


# --- Messages ----------------------------------------------------------------------------------


def _messages(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid_request(
            "'messages' must be a non-empty list of {role, content} objects.", code="invalid_messages"
        )
    limit = app_settings.CHAT_MAX_MESSAGES
    if len(value) > limit:
        raise too_many(field="messages", count=len(value), limit=limit, code="too_many_messages")
    # The tool calls the latest assistant message made, which the tool messages after it answer.
    open_calls: set[str] = set()
    for index, message in enumerate(value):
        path = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid_request(f"'{path}' must be an object with 'role' and 'content'.", code="invalid_messages")
        role = message.get("role")
        if role == "function":
            raise unsupported(
                field=f"{path}.role",
                what="messages with the legacy 'function' role",
                instead="send 'tool' messages answering an assistant message's 'tool_calls'",
                code="unsupported_role",
            )
        if role not in ROLES:
            raise invalid_request(f"'{path}.role' must be one of: {', '.join(ROLES)}.", code="invalid_role")
        extra = sorted(set(message) - MESSAGE_FIELDS[role])
        if extra:
            raise invalid_request(
                f"'{path}.{extra[0]}' is not a field of a {role} message; "
                f"it may have: {', '.join(sorted(MESSAGE_FIELDS[role]))}.",
                code="invalid_messages",
            )
        if "name" in message:
            _string(message["name"], f"{path}.name", code="invalid_name")
        if role == "assistant":
            calls = _tool_calls(message.get("tool_calls"), f"{path}.tool_calls")
            open_calls = {call["id"] for call in calls}
            _optional_string(message.get("refusal"), f"{path}.refusal", code="invalid_content")
            if message.get("content") is None and calls:
                continue
        elif role == "tool":
            if not open_calls:
                raise invalid_request(
                    f"'{path}.role' is 'tool', but no assistant message with 'tool_calls' precedes it.",
                    code="invalid_role",
                )
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in open_calls:
                raise invalid_request(
                    f"'{path}.tool_call_id' must be the id of one of the preceding assistant message's tool calls.",
                    code="invalid_tool_call_id",
                )
        _content(message.get("content"), f"{path}.content", role=role)
    return value


def _content(value: object, path: str, *, role: str) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise invalid_request(
            f"'{path}' must be a string or a non-empty list of content parts.", code="invalid_content"
        )
    allowed = PART_TYPES[role]
    for index, part in enumerate(value):
        part_path = f"{path}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in UNSUPPORTED_PART_TYPES:
            raise unsupported(
                field=f"{part_path}.type",
                what=f"'{kind}' content parts",
                instead="send text",
                code="unsupported_content",
            )
        if kind not in allowed or not isinstance(part, dict):
            raise invalid_request(
                f"'{part_path}' must be a content part with 'type' one of: {', '.join(allowed)} (in a {role} message).",
                code="invalid_content",
            )
        _exact_keys(part, {"type", kind}, part_path, code="invalid_content")
        if kind == "image_url":
            _image_url(part.get("image_url"), f"{part_path}.image_url")
        else:
            _string(part.get(kind), f"{part_path}.{kind}", code="invalid_content")


def _image_url(value: object, path: str) -> None:
    if not isinstance(value, dict):
        raise invalid_request(f"'{path}' must be an object with 'url' (and optionally 'detail').", code="invalid_image")
    _exact_keys(value, {"url", "detail"}, path, code="invalid_image", required={"url"})
    url = value.get("url")
    limit = app_settings.CHAT_MAX_IMAGE_URL_BYTES
    if isinstance(url, str) and len(url) > limit:
        raise too_large(field=f"{path}.url", size=len(url), limit=limit, code="image_too_large")
    if not isinstance(url, str) or not (_is_https_url(url) or _is_image_data_url(url)):
        raise invalid_request(
            f"'{path}.url' must be an https:// URL or a data:image/(png|jpeg|gif|webp);base64,… URL.",
            code="invalid_image",
        )
    if "detail" in value and value["detail"] not in IMAGE_DETAILS:
        raise invalid_request(f"'{path}.detail' must be one of: {', '.join(IMAGE_DETAILS)}.", code="invalid_image")


def _is_https_url(url: str) -> bool:
    if not url.startswith("https://") or any(char.isspace() for char in url):
        return False
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:
        return False


def _is_image_data_url(url: str) -> bool:
    prefix = DATA_IMAGE_URL.match(url)
    if prefix is None:
        return False
    try:
        base64.b64decode(url[prefix.end() :], validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _tool_calls(value: object, path: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise invalid_request(f"'{path}' must be a non-empty list of tool calls.", code="invalid_tool_calls")
    for index, call in enumerate(value):
        call_path = f"{path}[{index}]"
        if not isinstance(call, dict):
            raise invalid_request(
                f"'{call_path}' must be an object with 'id', 'type' and 'function'.", code="invalid_tool_calls"
            )
        _exact_keys(
            call, {"id", "type", "function"}, call_path, code="invalid_tool_calls", required={"id", "type", "function"}
        )
        _string(call["id"], f"{call_path}.id", code="invalid_tool_calls", non_empty=True)
        if call["type"] != "function":
            raise invalid_request(f"'{call_path}.type' must be 'function'.", code="invalid_tool_calls")
        function, function_path = call["function"], f"{call_path}.function"
        if not isinstance(function, dict):
            raise invalid_request(
                f"'{function_path}' must be an object with 'name' and 'arguments'.", code="invalid_tool_calls"
            )
        _exact_keys(
            function, {"name", "arguments"}, function_path, code="invalid_tool_calls", required={"name", "arguments"}
        )
        _string(function["name"], f"{function_path}.name", code="invalid_tool_calls", non_empty=True)
        _string(function["arguments"], f"{function_path}.arguments", code="invalid_tool_calls")
    return value


def _message_texts(message: dict[str, Any]) -> Iterator[str]:
    """Every piece of text a validated message carries."""
    content = message.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            text = part.get("text", part.get("refusal"))
            if isinstance(text, str):
                yield text
    if isinstance(message.get("refusal"), str):
        yield message["refusal"]
    for call in message.get("tool_calls") or ():
        yield call["function"]["arguments"]


def _image_parts(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, list):
        yield from (part for part in content if part.get("type") == "image_url")


# --- Tools and structured output ---------------------------------------------------------------


def _tools(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not value:
        raise invalid_request("'tools' must be a non-empty list of function tools.", code="invalid_tools")
    limit = app_settings.CHAT_MAX_TOOLS
    if len(value) > limit:
        raise too_many(field="tools", count=len(value), limit=limit, code="too_many_tools")
    for index, tool in enumerate(value):
        path = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise invalid_request(
                f'\'{path}\' must be {{"type": "function", "function": {{...}}}}: only function tools are supported.',
                code="invalid_tools",
            )
        _exact_keys(tool, {"type", "function"}, path, code="invalid_tools", required={"function"})
        _function(tool["function"], f"{path}.function", code="invalid_tools", schema_field="parameters")
    size = len(orjson.dumps(value))
    limit = app_settings.CHAT_MAX_TOOLS_BYTES
    if size > limit:
        raise too_large(field="tools", size=size, limit=limit, code="tools_too_large")


def _function(value: object, path: str, *, code: str, schema_field: str) -> None:
    """A function tool's definition, or a json_schema response format: name, description, schema, strict."""
    if not isinstance(value, dict):
        raise invalid_request(f"'{path}' must be an object with 'name'.", code=code)
    _exact_keys(value, {"name", "description", schema_field, "strict"}, path, code=code, required={"name"})
    name = value["name"]
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise invalid_request(
            f"'{path}.name' must be 1 to 64 letters, digits, underscores or dashes (^[A-Za-z0-9_-]{{1,64}}$).",
            code=code,
        )
    _optional_string(value.get("description"), f"{path}.description", code=code)
    if schema_field in value and not isinstance(value[schema_field], dict):
        raise invalid_request(f"'{path}.{schema_field}' must be a JSON Schema object.", code=code)
    _optional_bool(value.get("strict"), f"{path}.strict", code=code)


def _tool_choice(value: object, data: dict[str, Any]) -> object:
    if not data.get("tools"):
        raise invalid_request("'tool_choice' is only allowed when 'tools' are specified.", code="invalid_tool_choice")
    if value in TOOL_CHOICES:
        return value
    if not isinstance(value, dict) or value.get("type") != "function":
        raise invalid_request(
            "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\"}}.",
            code="invalid_tool_choice",
        )
    _exact_keys(value, {"type", "function"}, "tool_choice", code="invalid_tool_choice", required={"function"})
    function = value["function"]
    if not isinstance(function, dict):
        raise invalid_request("'tool_choice.function' must be an object with 'name'.", code="invalid_tool_choice")
    _exact_keys(function, {"name"}, "tool_choice.function", code="invalid_tool_choice", required={"name"})
    declared = [tool["function"]["name"] for tool in data["tools"]]
    if function["name"] not in declared:
        raise invalid_request(
            f"'tool_choice.function.name' must name a declared tool: {', '.join(declared)}.",
            code="invalid_tool_choice",
        )
    return value


def _parallel_tool_calls(value: object, data: dict[str, Any]) -> object:
    if not data.get("tools"):
        raise invalid_request(
            "'parallel_tool_calls' is only allowed when 'tools' are specified.", code="invalid_parallel_tool_calls"
        )
    return _optional_bool(value, "parallel_tool_calls")


def _response_format(value: object, data: dict[str, Any]) -> object:
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(value, dict) or kind not in ("text", "json_object", "json_schema"):
        raise invalid_request(
            '\'response_format\' must be {"type": "text"}, {"type": "json_object"} or '
            '{"type": "json_schema", "json_schema": {"name", "schema"}}.',
            code="invalid_response_format",
        )
    if kind != "json_schema":
        _exact_keys(value, {"type"}, "response_format", code="invalid_response_format")
        return value
    _exact_keys(
        value, {"type", "json_schema"}, "response_format", code="invalid_response_format", required={"json_schema"}
    )
    path = "response_format.json_schema"
    _function(value["json_schema"], path, code="invalid_response_format", schema_field="schema")
    if "schema" not in value["json_schema"]:
        raise invalid_request(f"'{path}.schema' is required: a JSON Schema object.", code="invalid_response_format")
    return value


# --- Sampling and the rest ---------------------------------------------------------------------


def _model(value: object) -> str:
    if value is None:
        return app_settings.CHAT_DEFAULT_MODEL
    allowed = app_settings.CHAT_ALLOWED_MODELS
    if not isinstance(value, str) or value not in allowed:
        raise invalid_request(f"'model' must be one of: {', '.join(allowed)}.", code="model_not_allowed")
    return value


def _max_tokens(value: object, name: str) -> int | None:
    """A positive integer, clamped to CHAT_MAX_TOKENS."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid_request(f"'{name}' must be a positive integer.", code=f"invalid_{name}")
    return min(value, app_settings.CHAT_MAX_TOKENS)


def _number(value: object, name: str, *, low: float, high: float) -> float | None:
    """A number in range, as the client wrote it (an integer stays one)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise invalid_request(f"'{name}' must be a number from {low:g} to {high:g}.", code=f"invalid_{name}")
    return value


def _integer(value: object, name: str, *, low: int, high: int, code: str | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid_request(f"'{name}' must be an integer from {low} to {high}.", code=code or f"invalid_{name}")
    return value


def _n(value: object, data: dict[str, Any]) -> int:
    return _integer(value, "n", low=1, high=app_settings.CHAT_MAX_CHOICES)


def _stop(value: object, data: dict[str, Any]) -> object:
    if isinstance(value, str):
        return value
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_STOP_SEQUENCES
        or not all(isinstance(sequence, str) for sequence in value)
    ):
        raise invalid_request(
            f"'stop' must be a string or a list of 1 to {MAX_STOP_SEQUENCES} strings.", code="invalid_stop"
        )
    return value


def _logit_bias(value: object, data: dict[str, Any]) -> object:
    if not isinstance(value, dict):
        raise invalid_request("'logit_bias' must be an object mapping token ids to biases.", code="invalid_logit_bias")
    for token, bias in value.items():
        if not token.isascii() or not token.isdigit():
            raise invalid_request(
                f"'logit_bias' keys must be token ids (digits); got '{token[:20]}'.", code="invalid_logit_bias"
            )
        _integer(bias, f"logit_bias.{token}", low=-MAX_LOGIT_BIAS, high=MAX_LOGIT_BIAS, code="invalid_logit_bias")
    return value


def _top_logprobs(value: object, data: dict[str, Any]) -> int:
    if data.get("logprobs") is not True:
        raise invalid_request("'top_logprobs' needs 'logprobs': true.", code="invalid_top_logprobs")
    return _integer(value, "top_logprobs", low=0, high=MAX_TOP_LOGPROBS)


def _stream_options(value: object, data: dict[str, Any]) -> object:
    if not isinstance(value, dict):
        raise invalid_request("'stream_options' must be an object.", code="invalid_stream_options")
    _exact_keys(value, set(STREAM_OPTIONS), "stream_options", code="invalid_stream_options")
    for name in STREAM_OPTIONS:
        _optional_bool(value.get(name), f"stream_options.{name}", code="invalid_stream_options")
    return value


def _metadata(value: object, data: dict[str, Any]) -> object:
    if not isinstance(value, dict) or len(value) > MAX_METADATA_PAIRS:
        raise invalid_request(
            f"'metadata' must be an object of at most {MAX_METADATA_PAIRS} string pairs.", code="invalid_metadata"
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY or not isinstance(item, str) or len(item) > MAX_METADATA_VALUE:
            raise invalid_request(
                f"'metadata.{key[:MAX_METADATA_KEY]}' must be a string of at most {MAX_METADATA_VALUE} characters, "
                f"under a key of at most {MAX_METADATA_KEY}.",
                code="invalid_metadata",
            )
    return value


def _choice_of(name: str, choices: tuple[str, ...]) -> Any:
    def validate(value: object, data: dict[str, Any]) -> object:
        if value not in choices:
            raise invalid_request(f"'{name}' must be one of: {', '.join(choices)}.", code=f"invalid_{name}")
        return value

    return validate


# Each parameter's validator: (value, the whole body) -> the value to send upstream.
PARAMETERS: dict[str, Any] = {
    "max_completion_tokens": lambda value, data: _max_tokens(value, "max_completion_tokens"),
    "top_p": lambda value, data: _number(value, "top_p", low=0, high=1),
    "n": _n,
    "stop": _stop,
    "seed": lambda value, data: _integer(value, "seed", low=-MAX_SEED - 1, high=MAX_SEED),
    "frequency_penalty": lambda value, data: _number(value, "frequency_penalty", low=-2, high=2),
    "presence_penalty": lambda value, data: _number(value, "presence_penalty", low=-2, high=2),
    "logit_bias": _logit_bias,
    "logprobs": lambda value, data: _optional_bool(value, "logprobs"),
    "top_logprobs": _top_logprobs,
    "reasoning_effort": _choice_of("reasoning_effort", REASONING_EFFORTS),
    "verbosity": _choice_of("verbosity", VERBOSITIES),
    "parallel_tool_calls": _parallel_tool_calls,
    "stream_options": _stream_options,
    "tools": lambda value, data: value,  # validated before the others, since tool_choice names its tools
    "tool_choice": _tool_choice,
    "response_format": _response_format,
    "store": lambda value, data: _optional_bool(value, "store"),
    "metadata": _metadata,
}


def _check_bounds(request: ChatCompletionRequest) -> None:
    """The request's totals: images, then characters of text."""
    limit = app_settings.CHAT_MAX_IMAGES
    count = 0
    for index, message in enumerate(request.messages):
        content = message.get("content")
        for part_index, part in enumerate(content if isinstance(content, list) else ()):
            if part.get("type") == "image_url":
                count += 1
                if count > limit:
                    raise too_many(
                        field=f"messages[{index}].content[{part_index}]",
                        count=count,
                        limit=limit,
                        code="too_many_images",
                        what="images in the request",
                    )
    chars = request.input_chars
    if chars > app_settings.CHAT_MAX_INPUT_CHARS:
        raise input_too_long(field="messages", size=chars, limit=app_settings.CHAT_MAX_INPUT_CHARS)


# --- Shapes ------------------------------------------------------------------------------------


def _string(value: object, path: str, *, code: str, non_empty: bool = False) -> None:
    if not isinstance(value, str) or (non_empty and not value):
        raise invalid_request(f"'{path}' must be a {'non-empty ' if non_empty else ''}string.", code=code)


def _optional_string(value: object, path: str, *, code: str | None = None) -> None:
    if value is not None:
        _string(value, path, code=code or f"invalid_{path}")


def _optional_bool(value: object, path: str, *, code: str | None = None) -> object:
    if value is not None and not isinstance(value, bool):
        raise invalid_request(f"'{path}' must be true or false.", code=code or f"invalid_{path}")
    return value


def _exact_keys(
    value: dict[str, Any], allowed: Collection[str], path: str, *, code: str, required: Collection[str] = ()
) -> None:
    extra = sorted(set(value) - set(allowed))
    if extra:
        raise invalid_request(
            f"'{path}.{extra[0]}' is an unknown field; '{path}' may have: {', '.join(sorted(allowed))}.", code=code
        )
    missing = sorted(set(required) - set(value))
    if missing:
        raise invalid_request(f"'{path}.{missing[0]}' is required.", code=code)
