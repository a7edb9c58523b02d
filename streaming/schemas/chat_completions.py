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

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..conf import app_settings
from ..errors import invalid_request, parameter_not_allowed, unsupported
from . import fields

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
STREAM_OPTIONS = ("include_usage", "include_obfuscation")
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100
MAX_SEED = 2**63 - 1

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
    *fields.PSEUDONYM_FIELDS,
    *STORE_FIELDS,
)


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
        return sum(len(text) for message in self.messages for text in message_texts(message))

    @property
    def image_count(self) -> int:
        return sum(1 for message in self.messages for _ in fields.image_parts(message, image_type="image_url"))

    @property
    def schema_bytes(self) -> int:
        """The JSON size of the tool and response-format schemas the model reads."""
        size = len(orjson.dumps(self.parameters["tools"])) if "tools" in self.parameters else 0
        response_format = self.parameters.get("response_format") or {}
        if "json_schema" in response_format:
            size += len(orjson.dumps(response_format["json_schema"]))
        return size

    def estimated_input_tokens(self) -> int:
        return fields.estimated_input_tokens(
            chars=self.input_chars + self.schema_bytes, messages=len(self.messages), images=self.image_count
        )

    def output_token_limit(self) -> int:
        """The most tokens the answer may take: its cap (the clamped `max_tokens` or
        `max_completion_tokens`) for each of its `n` choices."""
        cap = self.max_tokens if self.max_tokens is not None else self.parameters.get("max_completion_tokens")
        return (cap or app_settings.CHAT_MAX_TOKENS) * self.parameters.get("n", 1)


def parse_chat_completion_request(body: fields.Body, *, stream_default: bool = True) -> ChatCompletionRequest:
    """Validate a request body; raise ApiError (400/413) naming the offending field.

    `stream_default` is what a body without `stream` means: the page's API streams, while OpenAI's
    (and so `/v1`) answers with one object.
    """
    data = fields.load_body(body)
    fields.check_known_fields(data, FIELDS)
    if not app_settings.CHAT_ALLOW_STORE:
        for name in STORE_FIELDS:
            if data.get(name) is not None:
                raise parameter_not_allowed(field=name, setting="CHAT_ALLOW_STORE")
    fields.check_tools(data.get("tools"), _tool)  # first: tool_choice names its tools
    skip = ("messages", "model", "stream", "max_tokens", "temperature", *fields.PSEUDONYM_FIELDS)
    parameters = fields.validated_parameters(data, PARAMETERS, fields=FIELDS, skip=skip)
    fields.check_pseudonym_fields(data)
    token_cap = fields.max_tokens(data.get("max_tokens"), "max_tokens")
    if token_cap is None and "max_completion_tokens" not in parameters:
        token_cap = app_settings.CHAT_MAX_TOKENS
    request = ChatCompletionRequest(
        stream=fields.wants_stream(data, default=stream_default),
        messages=_messages(data.get("messages")),
        model=fields.model(data.get("model")),
        max_tokens=token_cap,
        temperature=fields.number(data.get("temperature"), "temperature", low=0, high=2),
        parameters=parameters,
    )
    fields.check_bounds(request.messages, field="messages", image_type="image_url", chars=request.input_chars)
    return request


# --- Messages ----------------------------------------------------------------------------------


def _messages(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid_request(
            "'messages' must be a non-empty list of {role, content} objects.", code="invalid_messages"
        )
    fields.check_at_most(value, app_settings.CHAT_MAX_MESSAGES, field="messages", code="too_many_messages")
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
            fields.string(message["name"], f"{path}.name", code="invalid_name")
        if role == "assistant":
            calls = _tool_calls(message.get("tool_calls"), f"{path}.tool_calls")
            open_calls = {call["id"] for call in calls}
            fields.optional_string(message.get("refusal"), f"{path}.refusal", code="invalid_content")
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
    for index, part in enumerate(fields.content_parts(value, path)):
        part_path = f"{path}[{index}]"
        kind = fields.content_part_type(
            part, part_path, role=role, allowed=PART_TYPES[role], unsupported_types=UNSUPPORTED_PART_TYPES
        )
        fields.exact_keys(part, {"type", kind}, part_path, code="invalid_content")
        if kind == "image_url":
            _image_url(part.get("image_url"), f"{part_path}.image_url")
        else:
            fields.string(part.get(kind), f"{part_path}.{kind}", code="invalid_content")


def _image_url(value: object, path: str) -> None:
    if not isinstance(value, dict):
        raise invalid_request(f"'{path}' must be an object with 'url' (and optionally 'detail').", code="invalid_image")
    fields.exact_keys(value, {"url", "detail"}, path, code="invalid_image", required={"url"})
    fields.check_image_url(value.get("url"), f"{path}.url")
    if "detail" in value and value["detail"] not in IMAGE_DETAILS:
        raise invalid_request(f"'{path}.detail' must be one of: {', '.join(IMAGE_DETAILS)}.", code="invalid_image")


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
        fields.exact_keys(
            call, {"id", "type", "function"}, call_path, code="invalid_tool_calls", required={"id", "type", "function"}
        )
        fields.string(call["id"], f"{call_path}.id", code="invalid_tool_calls", non_empty=True)
        if call["type"] != "function":
            raise invalid_request(f"'{call_path}.type' must be 'function'.", code="invalid_tool_calls")
        function, function_path = call["function"], f"{call_path}.function"
        if not isinstance(function, dict):
            raise invalid_request(
                f"'{function_path}' must be an object with 'name' and 'arguments'.", code="invalid_tool_calls"
            )
        fields.exact_keys(
            function, {"name", "arguments"}, function_path, code="invalid_tool_calls", required={"name", "arguments"}
        )
        fields.string(function["name"], f"{function_path}.name", code="invalid_tool_calls", non_empty=True)
        fields.string(function["arguments"], f"{function_path}.arguments", code="invalid_tool_calls")
    return value


def message_texts(message: dict[str, Any]) -> Iterator[str]:
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


# --- Tools and structured output ---------------------------------------------------------------


def _tool(tool: object, path: str) -> None:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise invalid_request(
            f'\'{path}\' must be {{"type": "function", "function": {{...}}}}: only function tools are supported.',
            code="invalid_tools",
        )
    fields.exact_keys(tool, {"type", "function"}, path, code="invalid_tools", required={"function"})
    fields.function_definition(tool["function"], f"{path}.function", code="invalid_tools", schema_field="parameters")


def _tool_choice(value: object, data: dict[str, Any]) -> object:
    choice = fields.function_tool_choice(value, data, shape='{"type": "function", "function": {"name"}}')
    if choice is None:
        return value
    fields.exact_keys(choice, {"type", "function"}, "tool_choice", code="invalid_tool_choice", required={"function"})
    function = choice["function"]
    if not isinstance(function, dict):
        raise invalid_request("'tool_choice.function' must be an object with 'name'.", code="invalid_tool_choice")
    fields.exact_keys(function, {"name"}, "tool_choice.function", code="invalid_tool_choice", required={"name"})
    declared = [tool["function"]["name"] for tool in data["tools"]]
    fields.check_declared_tool(function["name"], declared, "tool_choice.function.name", what="tool")
    return value


def _response_format(value: object, data: dict[str, Any]) -> object:
    shape = '{"type": "json_schema", "json_schema": {"name", "schema"}}'
    response_format = fields.json_schema_format(
        value, "response_format", json_schema_shape=shape, code="invalid_response_format"
    )
    if response_format is None:
        return value
    fields.exact_keys(
        response_format,
        {"type", "json_schema"},
        "response_format",
        code="invalid_response_format",
        required={"json_schema"},
    )
    path = "response_format.json_schema"
    json_schema = response_format["json_schema"]
    fields.function_definition(json_schema, path, code="invalid_response_format", schema_field="schema")
    if "schema" not in json_schema:
        raise invalid_request(f"'{path}.schema' is required: a JSON Schema object.", code="invalid_response_format")
    return value


# --- Sampling and the rest ---------------------------------------------------------------------


def _n(value: object, data: dict[str, Any]) -> int:
    return fields.integer(value, "n", low=1, high=app_settings.CHAT_MAX_CHOICES)


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
        fields.integer(bias, f"logit_bias.{token}", low=-MAX_LOGIT_BIAS, high=MAX_LOGIT_BIAS, code="invalid_logit_bias")
    return value


def _top_logprobs(value: object, data: dict[str, Any]) -> int:
    if data.get("logprobs") is not True:
        raise invalid_request("'top_logprobs' needs 'logprobs': true.", code="invalid_top_logprobs")
    return fields.integer(value, "top_logprobs", low=0, high=MAX_TOP_LOGPROBS)


def _choice_of(name: str, choices: tuple[str, ...]) -> Any:
    def validate(value: object, data: dict[str, Any]) -> object:
        if value not in choices:
            raise invalid_request(f"'{name}' must be one of: {', '.join(choices)}.", code=f"invalid_{name}")
        return value

    return validate


PARAMETERS: dict[str, fields.Validator] = {
    "max_completion_tokens": lambda value, data: fields.max_tokens(value, "max_completion_tokens"),
    "top_p": lambda value, data: fields.number(value, "top_p", low=0, high=1),
    "n": _n,
    "stop": _stop,
    "seed": lambda value, data: fields.integer(value, "seed", low=-MAX_SEED - 1, high=MAX_SEED),
    "frequency_penalty": lambda value, data: fields.number(value, "frequency_penalty", low=-2, high=2),
    "presence_penalty": lambda value, data: fields.number(value, "presence_penalty", low=-2, high=2),
    "logit_bias": _logit_bias,
    "logprobs": lambda value, data: fields.optional_bool(value, "logprobs"),
    "top_logprobs": _top_logprobs,
    "reasoning_effort": _choice_of("reasoning_effort", fields.REASONING_EFFORTS),
    "verbosity": _choice_of("verbosity", fields.VERBOSITIES),
    "parallel_tool_calls": fields.parallel_tool_calls,
    "stream_options": lambda value, data: fields.stream_options(value, options=STREAM_OPTIONS),
    "tools": lambda value, data: value,  # validated before the others, since tool_choice names its tools
    "tool_choice": _tool_choice,
    "response_format": _response_format,
    "store": lambda value, data: fields.optional_bool(value, "store"),
    "metadata": fields.metadata,
}
