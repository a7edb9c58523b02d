"""Field validators both request schemas share: chat completions and the Responses API.

The two OpenAI APIs spell many fields alike (model, token caps, function definitions, metadata,
images, stream options) and the relay bounds both the same way. One copy of each check keeps the
two schemas refusing the same input with the same message, code and path.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..conf import app_settings
from ..errors import input_too_long, invalid_request, too_large, too_many, unsupported
from ..usage import TOKENS_PER_MESSAGE, estimate_tokens

# A parameter's validator: (value, the whole body) -> the value to send upstream.
Validator = Callable[[Any, dict[str, Any]], object]

DATA_IMAGE_URL = re.compile(r"data:image/(?:png|jpeg|gif|webp);base64,")
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOOL_CHOICES = ("none", "auto", "required")
FORMAT_TYPES = ("text", "json_object", "json_schema")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
VERBOSITIES = ("low", "medium", "high")
# OpenAI's bounds on `metadata`: 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
# Tokens counted for each image when the upstream reports no usage: OpenAI's documented figure for
# a 512×512 image at detail auto/high on GPT-4o (85 base tokens + 170 for its one tile).
TOKENS_PER_IMAGE = 255

# The client's own end-user fields: accepted, never forwarded (the relay sends the server's pseudonym).
PSEUDONYM_FIELDS = ("user", "safety_identifier")
# The relay's own: never passed through, even when a site lists it in CHAT_EXTRA_PARAMETERS (the
# relay always streams from the upstream; the client's `stream` says only how it wants the answer).
RELAY_FIELDS = ("stream",)


# --- The body ----------------------------------------------------------------------------------


# A request body as it arrived, or already loaded (a saved conversation's history put in).
Body = bytes | dict[str, Any]


def load_body(body: Body) -> dict[str, Any]:
    if isinstance(body, dict):
        return body
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid_request("The request body is not valid JSON (UTF-8).", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    return data


def check_known_fields(data: dict[str, Any], fields: Sequence[str]) -> None:
    """Refuse a field the schema does not know, unless the site lets it through (CHAT_EXTRA_PARAMETERS)."""
    extra_parameters = [name for name in app_settings.CHAT_EXTRA_PARAMETERS if name not in RELAY_FIELDS]
    unknown = sorted(name for name in data if name not in fields and name not in extra_parameters)
    if unknown:
        allowed = ", ".join([*fields, *extra_parameters])
        raise invalid_request(
            f"Unknown field(s): {', '.join(repr(name) for name in unknown)}. Allowed fields: {allowed}.",
            code="unknown_field",
        )


def validated_parameters(
    data: dict[str, Any], validators: Mapping[str, Validator], *, fields: Collection[str], skip: Collection[str]
) -> dict[str, Any]:
    """Every non-null parameter in the client's order: known ones validated, the site's extras as sent."""
    parameters: dict[str, Any] = {}
    for name, value in data.items():
        if value is None or name in skip:
            continue
        parameters[name] = validators[name](value, data) if name in fields else value
    return parameters


def check_pseudonym_fields(data: dict[str, Any]) -> None:
    for name in PSEUDONYM_FIELDS:
        optional_string(data.get(name), name)


def wants_stream(data: dict[str, Any], *, default: bool) -> bool:
    """Whether the client wants the answer streamed; `stream_options` only goes with a stream."""
    optional_bool(data.get("stream"), "stream")
    stream = default if data.get("stream") is None else bool(data["stream"])
    if not stream and data.get("stream_options") is not None:
        raise invalid_request("'stream_options' is allowed only when 'stream' is true.", code="invalid_stream_options")
    return stream


def check_at_most(items: list[Any], limit: int, *, field: str, code: str) -> None:
    if len(items) > limit:
        raise too_many(field=field, count=len(items), limit=limit, code=code)


# Which field of an item holds its content parts (a Responses function_call_output has them in `output`).
PartsField = Callable[[dict[str, Any]], str]


def content_field(item: dict[str, Any]) -> str:
    return "content"


def check_bounds(
    items: Iterable[dict[str, Any]],
    *,
    field: str,
    image_type: str,
    chars: int,
    parts_field: PartsField = content_field,
) -> None:
    """The request's totals: images (parts of `image_type` in each item's parts), then characters."""
    limit = app_settings.CHAT_MAX_IMAGES
    count = 0
    for index, item in enumerate(items):
        name = parts_field(item)
        content = item.get(name)
        for part_index, part in enumerate(content if isinstance(content, list) else ()):
            if part.get("type") == image_type:
                count += 1
                if count > limit:
                    raise too_many(
                        field=f"{field}[{index}].{name}[{part_index}]",
                        count=count,
                        limit=limit,
                        code="too_many_images",
                        what="images in the request",
                    )
    if chars > app_settings.CHAT_MAX_INPUT_CHARS:
        raise input_too_long(field=field, size=chars, limit=app_settings.CHAT_MAX_INPUT_CHARS)


def estimated_input_tokens(*, chars: int, messages: int, images: int) -> int:
    """About four characters a token, per-message overhead, and TOKENS_PER_IMAGE for each image;
    used only where the upstream reports no usage."""
    return estimate_tokens(chars) + TOKENS_PER_MESSAGE * messages + TOKENS_PER_IMAGE * images


# --- Content -----------------------------------------------------------------------------------


def content_parts(value: object, path: str) -> list[Any]:
    """A message's content as parts: none for a string, else it must be a non-empty list."""
    if isinstance(value, str):
        return []
    if not isinstance(value, list) or not value:
        raise invalid_request(
            f"'{path}' must be a string or a non-empty list of content parts.", code="invalid_content"
        )
    return value


def content_part_type(
    part: object,
    path: str,
    *,
    role: str,
    allowed: Sequence[str],
    unsupported_types: Collection[str],
    within: str | None = None,
) -> str:
    """The part's type, one its role may send; the types the relay does not carry are refused as such.

    `within` says where the part is, for the message (by default: in a `role` message)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in unsupported_types:
        raise unsupported(
            field=f"{path}.type",
            what=f"'{kind}' content parts",
            instead="send text",
            code="unsupported_content",
        )
    if kind not in allowed or not isinstance(part, dict):
        raise invalid_request(
            f"'{path}' must be a content part with 'type' one of: {', '.join(allowed)} "
            f"({within or f'in a {role} message'}).",
            code="invalid_content",
        )
    return part["type"]


def image_parts(
    item: dict[str, Any], *, image_type: str, parts_field: PartsField = content_field
) -> Iterator[dict[str, Any]]:
    content = item.get(parts_field(item))
    if isinstance(content, list):
        yield from (part for part in content if part.get("type") == image_type)


def check_image_url(url: object, path: str) -> None:
    limit = app_settings.CHAT_MAX_IMAGE_URL_BYTES
    if isinstance(url, str) and len(url) > limit:
        raise too_large(field=path, size=len(url), limit=limit, code="image_too_large")
    if not isinstance(url, str) or not (is_https_url(url) or is_image_data_url(url)):
        raise invalid_request(
            f"'{path}' must be an https:// URL or a data:image/(png|jpeg|gif|webp);base64,… URL.",
            code="invalid_image",
        )


def is_https_url(url: str) -> bool:
    if not url.startswith("https://") or any(char.isspace() for char in url):
        return False
    try:
        return bool(urlsplit(url).hostname)
    except ValueError:
        return False


def is_image_data_url(url: str) -> bool:
    prefix = DATA_IMAGE_URL.match(url)
    if prefix is None:
        return False
    try:
        base64.b64decode(url[prefix.end() :], validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


# --- Tools -------------------------------------------------------------------------------------


def check_tools(value: object, check_tool: Callable[[Any, str], None]) -> None:
    """`tools`, if sent: a non-empty list within CHAT_MAX_TOOLS and CHAT_MAX_TOOLS_BYTES, each tool
    checked by the schema's own `check_tool(tool, path)`."""
    if value is None:
        return
    if not isinstance(value, list) or not value:
        raise invalid_request("'tools' must be a non-empty list of function tools.", code="invalid_tools")
    check_at_most(value, app_settings.CHAT_MAX_TOOLS, field="tools", code="too_many_tools")
    for index, tool in enumerate(value):
        check_tool(tool, f"tools[{index}]")
    check_tools_size(value)


def check_tools_size(tools: list[Any]) -> None:
    size = len(orjson.dumps(tools))
    limit = app_settings.CHAT_MAX_TOOLS_BYTES
    if size > limit:
        raise too_large(field="tools", size=size, limit=limit, code="tools_too_large")


def function_definition(value: object, path: str, *, code: str, schema_field: str) -> None:
    """A function tool's definition, or a json_schema format: name, description, schema, strict."""
    if not isinstance(value, dict):
        raise invalid_request(f"'{path}' must be an object with 'name'.", code=code)
    exact_keys(value, {"name", "description", schema_field, "strict"}, path, code=code, required={"name"})
    name = value["name"]
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise invalid_request(
            f"'{path}.name' must be 1 to 64 letters, digits, underscores or dashes (^[A-Za-z0-9_-]{{1,64}}$).",
            code=code,
        )
    optional_string(value.get("description"), f"{path}.description", code=code)
    if schema_field in value and not isinstance(value[schema_field], dict):
        raise invalid_request(f"'{path}.{schema_field}' must be a JSON Schema object.", code=code)
    optional_bool(value.get("strict"), f"{path}.strict", code=code)


def require_tools(name: str, data: dict[str, Any]) -> None:
    """`name` (tool_choice, parallel_tool_calls) means something only with `tools`."""
    if not data.get("tools"):
        raise invalid_request(f"'{name}' is only allowed when 'tools' are specified.", code=f"invalid_{name}")


def function_tool_choice(value: object, data: dict[str, Any], *, shape: str) -> dict[str, Any] | None:
    """A `tool_choice` naming a function (`shape` says how), or None for one of TOOL_CHOICES."""
    require_tools("tool_choice", data)
    if value in TOOL_CHOICES:
        return None
    if not isinstance(value, dict) or value.get("type") != "function":
        raise invalid_request(
            f"'tool_choice' must be 'none', 'auto', 'required' or {shape}.", code="invalid_tool_choice"
        )
    return value


def check_declared_tool(name: object, declared: Sequence[str], path: str, *, what: str) -> None:
    if name not in declared:
        raise invalid_request(
            f"'{path}' must name a declared {what}: {', '.join(declared)}.", code="invalid_tool_choice"
        )


def json_schema_format(value: object, path: str, *, json_schema_shape: str, code: str) -> dict[str, Any] | None:
    """A structured-output format if it is a json_schema one, else None (`text` and `json_object`
    take no other field)."""
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(value, dict) or kind not in FORMAT_TYPES:
        raise invalid_request(
            f'\'{path}\' must be {{"type": "text"}}, {{"type": "json_object"}} or {json_schema_shape}.', code=code
        )
    if kind != "json_schema":
        exact_keys(value, {"type"}, path, code=code)
        return None
    return value


def parallel_tool_calls(value: object, data: dict[str, Any]) -> object:
    require_tools("parallel_tool_calls", data)
    return optional_bool(value, "parallel_tool_calls")


# --- Parameters --------------------------------------------------------------------------------


def model(value: object) -> str:
    if value is None:
        return app_settings.CHAT_DEFAULT_MODEL
    allowed = app_settings.CHAT_ALLOWED_MODELS
    if not isinstance(value, str) or value not in allowed:
        raise invalid_request(f"'model' must be one of: {', '.join(allowed)}.", code="model_not_allowed")
    return value


def max_tokens(value: object, name: str) -> int | None:
    """A positive integer, clamped to CHAT_MAX_TOKENS."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid_request(f"'{name}' must be a positive integer.", code=f"invalid_{name}")
    return min(value, app_settings.CHAT_MAX_TOKENS)


def number(value: object, name: str, *, low: float, high: float) -> float | None:
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


def integer(value: object, name: str, *, low: int, high: int, code: str | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid_request(f"'{name}' must be an integer from {low} to {high}.", code=code or f"invalid_{name}")
    return value


def stream_options(value: object, *, options: Sequence[str]) -> object:
    if not isinstance(value, dict):
        raise invalid_request("'stream_options' must be an object.", code="invalid_stream_options")
    exact_keys(value, set(options), "stream_options", code="invalid_stream_options")
    for name in options:
        optional_bool(value.get(name), f"stream_options.{name}", code="invalid_stream_options")
    return value


def metadata(value: object, data: dict[str, Any]) -> object:
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


# --- Shapes ------------------------------------------------------------------------------------


def string(value: object, path: str, *, code: str, non_empty: bool = False) -> None:
    if not isinstance(value, str) or (non_empty and not value):
        raise invalid_request(f"'{path}' must be a {'non-empty ' if non_empty else ''}string.", code=code)


def optional_string(value: object, path: str, *, code: str | None = None) -> None:
    if value is not None:
        string(value, path, code=code or f"invalid_{path}")


def optional_bool(value: object, path: str, *, code: str | None = None) -> object:
    if value is not None and not isinstance(value, bool):
        raise invalid_request(f"'{path}' must be true or false.", code=code or f"invalid_{path}")
    return value


def exact_keys(
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
