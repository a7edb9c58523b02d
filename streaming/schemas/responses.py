"""The Responses request: the body of `POST /api/responses/stream` and `/v1/responses`, validated and typed.

The accepted shape follows OpenAI's `POST /responses` (types and ranges as its API reference and the
openai SDK's `response_create_params` give them), narrowed to what this site relays: text and images
in, function tools and their calls and outputs (text, or text and image parts), an earlier
response's reasoning items sent back, text or structured output. Built-in tools (web
search, file search, code interpreter, …) cost money per call, so a tool type other than `function`
passes only when the site lists it in CHAT_RESPONSES_TOOL_TYPES. Every refusal names the path of the
offending field (`input[2].content[1].image_url`).

What the client sent, once validated, is what the upstream gets, key for key; the only changes are
the `max_output_tokens` clamp, `store` (forced to false unless CHAT_ALLOW_STORE: OpenAI stores every
response by default), the client's `user`/`safety_identifier` (dropped: the relay sends the server's
pseudonym instead) and nulls (left out).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..conf import app_settings
from ..errors import invalid_request, parameter_not_allowed, unsupported
from . import fields

ROLES = ("user", "assistant", "system", "developer")
# The content-part types each role may send; `input_file` and `input_audio` parts are refused as such.
PART_TYPES = {
    "user": ("input_text", "input_image"),
    "system": ("input_text",),
    "developer": ("input_text",),
    "assistant": ("output_text", "refusal"),
}
PART_FIELDS = {
    "input_text": {"type", "text"},
    "input_image": {"type", "image_url", "detail"},
    # As an earlier response's output messages carry them, so those can be sent back as input.
    "output_text": {"type", "text", "annotations", "logprobs"},
    "refusal": {"type", "refusal"},
}
UNSUPPORTED_PART_TYPES = ("input_file", "input_audio")
# The parts a function_call_output's `output` may be instead of a string (`input_file` refused as such).
OUTPUT_PART_TYPES = ("input_text", "input_image")
# The parts of a reasoning item's `summary` and `content` lists.
REASONING_PART_TYPES = {"summary": "summary_text", "content": "reasoning_text"}
IMAGE_DETAILS = ("auto", "low", "high", "original")
ITEM_STATUSES = ("in_progress", "completed", "incomplete")
MESSAGE_PHASES = ("commentary", "final_answer")
# The fields of each input item; `id` and `status` are what an earlier response's output items carry
# (a message's only as the SDK's message types have them: see `_message_id_and_status`).
ITEM_FIELDS = {
    "message": {"type", "role", "content", "id", "status", "phase"},
    "function_call": {"type", "call_id", "name", "arguments", "id", "status"},
    "function_call_output": {"type", "call_id", "output", "id", "status"},
    "reasoning": {"type", "id", "summary", "content", "encrypted_content", "status"},
}
ITEM_REQUIRED = {
    "message": {"role", "content"},
    "function_call": {"call_id", "name", "arguments"},
    "function_call_output": {"call_id", "output"},
    "reasoning": {"id", "summary"},
}
REASONING_SUMMARIES = ("auto", "concise", "detailed")
STREAM_OPTIONS = ("include_obfuscation",)
# The SDK's `ResponseIncludable` values (openai/types/responses/response_includable.py).
INCLUDABLES = (
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
)
TRUNCATIONS = ("auto", "disabled")
MAX_TOP_LOGPROBS = 20
# OpenAI refuses a longer `prompt_cache_key` ("string_above_max_length"; the SDK does not say so).
MAX_PROMPT_CACHE_KEY = 64
# OpenAI refuses a smaller `max_output_tokens` on the Responses API (not on chat completions).
MIN_OUTPUT_TOKENS = 16

STORE_FIELDS = ("store", "metadata", "previous_response_id")
FIELDS = (
    "input",
    "model",
    "instructions",
    "stream",
    "max_output_tokens",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "stream_options",
    "tools",
    "tool_choice",
    "text",
    "reasoning",
    "include",
    "truncation",
    "max_tool_calls",
    "top_logprobs",
    "prompt_cache_key",
    *fields.PSEUDONYM_FIELDS,
    *STORE_FIELDS,
)


@dataclass(frozen=True, kw_only=True)
class ResponsesRequest:
    input: str | list[dict[str, Any]]
    model: str
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    # Whether the client wants the answer streamed (the relay streams from the upstream either way).
    stream: bool = True
    # Every other parameter the client sent, validated, in the client's order (and `store`).
    parameters: dict[str, Any] = field(default_factory=dict)

    def upstream_params(self) -> dict[str, Any]:
        """The body for the upstream: model, input and every accepted parameter, as validated."""
        params: dict[str, Any] = {"model": self.model, "input": self.input}
        if self.instructions is not None:
            params["instructions"] = self.instructions
        if self.max_output_tokens is not None:
            params["max_output_tokens"] = self.max_output_tokens
        if self.temperature is not None:
            params["temperature"] = self.temperature
        params.update(self.parameters)
        return params

    @property
    def items(self) -> list[dict[str, Any]]:
        """The input as a list of items (a string input is one user message)."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        return self.input

    @property
    def input_chars(self) -> int:
        """Characters of text: instructions, message text, function-call arguments and outputs,
        reasoning summaries and text."""
        return len(self.instructions or "") + sum(len(text) for item in self.items for text in _item_texts(item))

    @property
    def encrypted_chars(self) -> int:
        """Characters of the reasoning items' `encrypted_content`.

        Opaque to the relay, so no estimate of the tokens it amounts to: the text estimate (four
        characters a token) does not apply to ciphertext, and the upstream reports the usage. But it
        is part of what the client asks the model to read back, sent as the client likes, so it
        counts toward CHAT_MAX_INPUT_CHARS with the text: the one bound a site already sets on how
        much input a request may carry, rather than a second, fixed cap a site could not tune.
        """
        return sum(len(item.get("encrypted_content") or "") for item in self.items if item.get("type") == "reasoning")

    @property
    def image_count(self) -> int:
        return sum(
            1
            for item in self.items
            for _ in fields.image_parts(item, image_type="input_image", parts_field=_parts_field)
        )

    @property
    def schema_bytes(self) -> int:
        """The JSON size of the tool and text-format schemas the model reads."""
        size = len(orjson.dumps(self.parameters["tools"])) if "tools" in self.parameters else 0
        text_format = (self.parameters.get("text") or {}).get("format") or {}
        if text_format.get("type") == "json_schema":
            size += len(orjson.dumps(text_format))
        return size

    def estimated_input_tokens(self) -> int:
        """Each item counts as a message, and so do the instructions."""
        return fields.estimated_input_tokens(
            chars=self.input_chars + self.schema_bytes,
            messages=len(self.items) + (self.instructions is not None),
            images=self.image_count,
        )

    def output_token_limit(self) -> int:
        """The most tokens the response may take (its clamped `max_output_tokens`)."""
        return self.max_output_tokens or app_settings.CHAT_MAX_TOKENS


def parse_responses_request(body: fields.Body, *, stream_default: bool = True) -> ResponsesRequest:
    """Validate a request body; raise ApiError (400/413) naming the offending field.

    `stream_default` is what a body without `stream` means: the page's API streams, while OpenAI's
    (and so `/v1`) answers with one object.
    """
    data = fields.load_body(body)
    fields.check_known_fields(data, FIELDS)
    allow_store = app_settings.CHAT_ALLOW_STORE
    if not allow_store:
        for name in STORE_FIELDS:
            # `store: false` is what the relay sends anyway.
            if data.get(name) is not None and not (name == "store" and data[name] is False):
                raise parameter_not_allowed(field=name, setting="CHAT_ALLOW_STORE")
    fields.check_tools(data.get("tools"), _tool)  # first: tool_choice names its tools
    skip = ("input", "model", "instructions", "stream", "max_output_tokens", "temperature", *fields.PSEUDONYM_FIELDS)
    parameters = fields.validated_parameters(data, PARAMETERS, fields=FIELDS, skip=skip)
    if not allow_store:
        parameters["store"] = False
    fields.check_pseudonym_fields(data)
    token_cap = fields.max_tokens(data.get("max_output_tokens"), "max_output_tokens")
    if data.get("max_output_tokens") is not None and data["max_output_tokens"] < MIN_OUTPUT_TOKENS:
        raise invalid_request(
            f"'max_output_tokens' must be at least {MIN_OUTPUT_TOKENS}.", code="invalid_max_output_tokens"
        )
    stream = fields.wants_stream(data, default=stream_default)
    fields.optional_string(data.get("instructions"), "instructions")
    request = ResponsesRequest(
        stream=stream,
        input=_input(data.get("input"), answered_elsewhere=data.get("previous_response_id") is not None),
        model=fields.model(data.get("model")),
        instructions=data.get("instructions"),
        max_output_tokens=app_settings.CHAT_MAX_TOKENS if token_cap is None else token_cap,
        temperature=fields.number(data.get("temperature"), "temperature", low=0, high=2),
        parameters=parameters,
    )
    fields.check_bounds(
        request.items,
        field="input",
        image_type="input_image",
        chars=request.input_chars + request.encrypted_chars,
        parts_field=_parts_field,
    )
    return request


# --- Input -------------------------------------------------------------------------------------


def _input(value: object, *, answered_elsewhere: bool) -> str | list[dict[str, Any]]:
    """A string, or a list of messages, function calls and their outputs, and reasoning items.

    A function call's output must answer a call earlier in the input, unless the input continues a
    stored response (`previous_response_id`), whose calls the relay cannot see.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise invalid_request("'input' must be a string or a non-empty list of input items.", code="invalid_input")
    fields.check_at_most(value, app_settings.CHAT_MAX_MESSAGES, field="input", code="too_many_input_items")
    calls: set[str] = set()
    for index, item in enumerate(value):
        path = f"input[{index}]"
        if not isinstance(item, dict):
            raise invalid_request(f"'{path}' must be an input item object.", code="invalid_input")
        kind = item.get("type", "message")
        if not isinstance(kind, str) or kind not in ITEM_FIELDS:
            raise invalid_request(f"'{path}.type' must be one of: {', '.join(ITEM_FIELDS)}.", code="invalid_input")
        fields.exact_keys(item, ITEM_FIELDS[kind], path, code="invalid_input", required=ITEM_REQUIRED[kind])
        fields.optional_string(item.get("id"), f"{path}.id", code="invalid_input")
        if item.get("status") is not None and item["status"] not in ITEM_STATUSES:
            raise invalid_request(f"'{path}.status' must be one of: {', '.join(ITEM_STATUSES)}.", code="invalid_input")
        if kind == "message":
            _message(item, path)
            continue
        if kind == "reasoning":
            _reasoning_item(item, path)
            continue
        call_id = item["call_id"]
        fields.string(call_id, f"{path}.call_id", code="invalid_input", non_empty=True)
        if kind == "function_call":
            fields.string(item["name"], f"{path}.name", code="invalid_input", non_empty=True)
            fields.string(item["arguments"], f"{path}.arguments", code="invalid_input")
            calls.add(call_id)
            continue
        if not answered_elsewhere and call_id not in calls:
            raise invalid_request(
                f"'{path}.call_id' must be the call_id of a function_call item earlier in 'input'.",
                code="invalid_call_id",
            )
        _function_call_output(item["output"], f"{path}.output")
    return value


def _message(item: dict[str, Any], path: str) -> None:
    role = item["role"]
    if role not in ROLES:
        raise invalid_request(f"'{path}.role' must be one of: {', '.join(ROLES)}.", code="invalid_role")
    if item.get("phase") is not None and (role != "assistant" or item["phase"] not in MESSAGE_PHASES):
        raise invalid_request(
            f"'{path}.phase' is for assistant messages: one of {', '.join(MESSAGE_PHASES)}.", code="invalid_input"
        )
    content_path = f"{path}.content"
    for index, part in enumerate(fields.content_parts(item["content"], content_path)):
        part_path = f"{content_path}[{index}]"
        kind = fields.content_part_type(
            part, part_path, role=role, allowed=PART_TYPES[role], unsupported_types=UNSUPPORTED_PART_TYPES
        )
        _part(part, kind, part_path)
    _message_id_and_status(item, path, role)


def _message_id_and_status(item: dict[str, Any], path: str, role: str) -> None:
    """`id` and `status` as the SDK's three message types have them, and only so.

    `EasyInputMessageParam` (any role) has neither; `ResponseInputItemParam.Message` (user, system,
    developer) may have `status`, with content as a list of parts, never `id`;
    `ResponseOutputMessageParam` (assistant: an earlier response's output message, sent back) has
    both, with `type` and content as a list of parts.
    """
    # No message type has a null `id`; a null `status` is taken as none, as on the other items.
    has_id, has_status = "id" in item, item.get("status") is not None
    listed = isinstance(item["content"], list)
    if role != "assistant":
        if has_id:
            raise invalid_request(
                f"'{path}.id' is for assistant messages (an earlier response's output), not {role} ones.",
                code="invalid_input",
            )
        if has_status and not listed:
            raise invalid_request(
                f"'{path}.status' goes only with 'content' as a list of content parts.", code="invalid_input"
            )
        return
    if not (has_id or has_status):
        return
    output_message = "an assistant message with 'id' or 'status' (an earlier response's output message)"
    for name, present in (("id", has_id), ("status", has_status)):
        if not present:
            raise invalid_request(f"'{path}.{name}' is required in {output_message}.", code="invalid_input")
    fields.string(item["id"], f"{path}.id", code="invalid_input")
    if item.get("type") != "message":
        raise invalid_request(f"'{path}.type' must be 'message' in {output_message}.", code="invalid_input")
    if not listed:
        raise invalid_request(
            f"'{path}.content' must be a list of output_text and refusal parts in {output_message}.",
            code="invalid_content",
        )


def _part(part: dict[str, Any], kind: str, path: str) -> None:
    """A content part of a type its place allows: text, refusal or an image."""
    if kind == "input_image":
        _input_image(part, path)
        return
    text_field = "refusal" if kind == "refusal" else "text"
    fields.exact_keys(part, PART_FIELDS[kind], path, code="invalid_content", required={text_field})
    fields.string(part[text_field], f"{path}.{text_field}", code="invalid_content")
    for name in ("annotations", "logprobs"):
        if part.get(name) is not None and not isinstance(part[name], list):
            raise invalid_request(f"'{path}.{name}' must be a list.", code="invalid_content")


def _function_call_output(output: object, path: str) -> None:
    """A string, or a non-empty list of input_text and input_image parts (as in a user message)."""
    if isinstance(output, str):
        return
    if not isinstance(output, list) or not output:
        raise invalid_request(
            f"'{path}' must be a string or a non-empty list of input_text and input_image parts.",
            code="invalid_input",
        )
    for index, part in enumerate(output):
        part_path = f"{path}[{index}]"
        kind = fields.content_part_type(
            part,
            part_path,
            role="function_call_output",
            allowed=OUTPUT_PART_TYPES,
            unsupported_types=("input_file",),
            within="in a function_call_output",
        )
        _part(part, kind, part_path)


def _reasoning_item(item: dict[str, Any], path: str) -> None:
    """An earlier response's reasoning item, sent back (as a tool loop does with `input += output`).

    Its `content` and `status` may be null, as the SDK's `ResponseReasoningItem` (the output item the
    client sends back) has them; `summary` may be empty (no summary was asked for).
    """
    fields.string(item["id"], f"{path}.id", code="invalid_input", non_empty=True)
    for name, part_type in REASONING_PART_TYPES.items():
        parts = item.get(name)
        if parts is None and name == "content":
            continue
        if not isinstance(parts, list):
            raise invalid_request(f"'{path}.{name}' must be a list of {part_type} parts.", code="invalid_input")
        for index, part in enumerate(parts):
            part_path = f"{path}.{name}[{index}]"
            if not isinstance(part, dict) or part.get("type") != part_type:
                raise invalid_request(
                    f'\'{part_path}\' must be {{"type": "{part_type}", "text": ...}}.', code="invalid_content"
                )
            fields.exact_keys(part, {"type", "text"}, part_path, code="invalid_content", required={"text"})
            fields.string(part["text"], f"{part_path}.text", code="invalid_content")
    fields.optional_string(item.get("encrypted_content"), f"{path}.encrypted_content", code="invalid_input")


def _input_image(part: dict[str, Any], path: str) -> None:
    if "file_id" in part:
        raise unsupported(
            field=f"{path}.file_id", what="images by file id", instead="send 'image_url'", code="unsupported_content"
        )
    fields.exact_keys(part, PART_FIELDS["input_image"], path, code="invalid_image", required={"image_url"})
    fields.check_image_url(part["image_url"], f"{path}.image_url")
    if part.get("detail") is not None and part["detail"] not in IMAGE_DETAILS:
        raise invalid_request(f"'{path}.detail' must be one of: {', '.join(IMAGE_DETAILS)}.", code="invalid_image")


def _parts_field(item: dict[str, Any]) -> str:
    """Which field of a validated item holds its content parts (and so its images)."""
    return "output" if item.get("type") == "function_call_output" else "content"


def _item_texts(item: dict[str, Any]) -> Iterator[str]:
    """Every piece of text a validated input item carries (not a reasoning item's encrypted_content)."""
    kind = item.get("type", "message")
    if kind == "function_call":
        yield item["arguments"]
        return
    if kind == "reasoning":
        for name in REASONING_PART_TYPES:
            yield from (part["text"] for part in item.get(name) or ())
        return
    parts = item[_parts_field(item)]
    if isinstance(parts, str):
        yield parts
        return
    for part in parts:
        text = part.get("text", part.get("refusal"))
        if isinstance(text, str):
            yield text


# --- Tools and structured output ---------------------------------------------------------------


def _tool(tool: object, path: str) -> None:
    """A function tool, or a built-in one the site allows (CHAT_RESPONSES_TOOL_TYPES) as sent."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if not isinstance(kind, str) or not isinstance(tool, dict):
        raise invalid_request(
            f'\'{path}\' must be {{"type": "function", "name": ..., "parameters": {{...}}}}.', code="invalid_tools"
        )
    if kind != "function":
        if kind not in app_settings.CHAT_RESPONSES_TOOL_TYPES:
            raise parameter_not_allowed(field=f"{path}.type", setting="CHAT_RESPONSES_TOOL_TYPES")
        return
    fields.exact_keys(tool, {"type", "name", "description", "parameters", "strict"}, path, code="invalid_tools")
    # The SDK sends `parameters` and `strict` as null when unset.
    definition = {key: item for key, item in tool.items() if key != "type" and item is not None}
    fields.function_definition(definition, path, code="invalid_tools", schema_field="parameters")


def _tool_choice(value: object, data: dict[str, Any]) -> object:
    choice = fields.function_tool_choice(value, data, shape='{"type": "function", "name"}')
    if choice is None:
        return value
    fields.exact_keys(choice, {"type", "name"}, "tool_choice", code="invalid_tool_choice", required={"name"})
    declared = [tool["name"] for tool in data["tools"] if tool["type"] == "function"]
    fields.check_declared_tool(choice["name"], declared, "tool_choice.name", what="function tool")
    return value


def _text(value: object, data: dict[str, Any]) -> object:
    if not isinstance(value, dict):
        raise invalid_request("'text' must be an object with 'format' and/or 'verbosity'.", code="invalid_text")
    fields.exact_keys(value, {"format", "verbosity"}, "text", code="invalid_text")
    if value.get("verbosity") is not None and value["verbosity"] not in fields.VERBOSITIES:
        raise invalid_request(f"'text.verbosity' must be one of: {', '.join(fields.VERBOSITIES)}.", code="invalid_text")
    if value.get("format") is None:
        return value
    shape = '{"type": "json_schema", "name", "schema"}'
    text_format = fields.json_schema_format(
        value["format"], "text.format", json_schema_shape=shape, code="invalid_text"
    )
    if text_format is None:
        return value
    fields.exact_keys(
        text_format,
        {"type", "name", "schema", "description", "strict"},
        "text.format",
        code="invalid_text",
        required={"name", "schema"},
    )
    definition = {key: item for key, item in text_format.items() if key != "type" and item is not None}
    fields.function_definition(definition, "text.format", code="invalid_text", schema_field="schema")
    if not isinstance(text_format["schema"], dict):
        raise invalid_request("'text.format.schema' must be a JSON Schema object.", code="invalid_text")
    return value


def _reasoning(value: object, data: dict[str, Any]) -> object:
    if not isinstance(value, dict):
        raise invalid_request("'reasoning' must be an object with 'effort' and/or 'summary'.", code="invalid_reasoning")
    fields.exact_keys(value, {"effort", "summary"}, "reasoning", code="invalid_reasoning")
    for name, choices in (("effort", fields.REASONING_EFFORTS), ("summary", REASONING_SUMMARIES)):
        if value.get(name) is not None and value[name] not in choices:
            raise invalid_request(f"'reasoning.{name}' must be one of: {', '.join(choices)}.", code="invalid_reasoning")
    return value


def _include(value: object, data: dict[str, Any]) -> object:
    """Output data to include; `reasoning.encrypted_content` is what lets a client send reasoning
    items back while the response is not stored."""
    if not isinstance(value, list):
        raise invalid_request(f"'include' must be a list of: {', '.join(INCLUDABLES)}.", code="invalid_include")
    for index, name in enumerate(value):
        if not isinstance(name, str) or name not in INCLUDABLES:
            raise invalid_request(
                f"'include[{index}]' must be one of: {', '.join(INCLUDABLES)}.", code="invalid_include"
            )
    return value


def _truncation(value: object, data: dict[str, Any]) -> object:
    if value not in TRUNCATIONS:
        raise invalid_request(f"'truncation' must be one of: {', '.join(TRUNCATIONS)}.", code="invalid_truncation")
    return value


def _max_tool_calls(value: object, data: dict[str, Any]) -> object:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid_request("'max_tool_calls' must be a positive integer.", code="invalid_max_tool_calls")
    return value


def _prompt_cache_key(value: object, data: dict[str, Any]) -> object:
    if not isinstance(value, str) or len(value) > MAX_PROMPT_CACHE_KEY:
        raise invalid_request(
            f"'prompt_cache_key' must be a string of at most {MAX_PROMPT_CACHE_KEY} characters.",
            code="invalid_prompt_cache_key",
        )
    return value


def _previous_response_id(value: object, data: dict[str, Any]) -> object:
    fields.string(value, "previous_response_id", code="invalid_previous_response_id", non_empty=True)
    return value


PARAMETERS: dict[str, fields.Validator] = {
    "top_p": lambda value, data: fields.number(value, "top_p", low=0, high=1),
    "parallel_tool_calls": fields.parallel_tool_calls,
    "stream_options": lambda value, data: fields.stream_options(value, options=STREAM_OPTIONS),
    "tools": lambda value, data: value,  # validated before the others, since tool_choice names its tools
    "tool_choice": _tool_choice,
    "text": _text,
    "reasoning": _reasoning,
    "include": _include,
    "truncation": _truncation,
    "max_tool_calls": _max_tool_calls,
    "top_logprobs": lambda value, data: fields.integer(value, "top_logprobs", low=0, high=MAX_TOP_LOGPROBS),
    "prompt_cache_key": _prompt_cache_key,
    "store": lambda value, data: fields.optional_bool(value, "store"),
    "metadata": fields.metadata,
    "previous_response_id": _previous_response_id,
}
