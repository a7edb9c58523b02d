"""The built-in demo model: an OpenAI-compatible chat server on a loopback port.

It runs in its own thread and event loop and speaks real HTTP/1.1 and SSE, so with no API key
the relay still goes through the openai SDK over a socket, exactly as in production.

It answers deterministically (only ids and timestamps change), and speaks the request's features:
- with `tools` (and `tool_choice` not "none"), a user's last message gets a call to the tool
  `tool_choice` names, else to every declared tool the message names (parallel calls, in the order
  they are named), else to the first tool; its arguments are built from the tool's `parameters`
  schema (`schema_example`), streamed over several argument deltas, ending `finish_reason: "tool_calls"`;
- after `tool` messages, a text answer that quotes each tool's result;
- with `response_format` `json_object` or `json_schema`, the content is one JSON document;
- image parts are counted, and the answer says how many it received.

`/responses` gives the same answers as Responses events (`responses_as_chat` reads its body as the
chat request it amounts to): created, in progress, each output item with its deltas and done
events, then `response.completed` with usage (`response.incomplete` when `max_output_tokens` cuts it).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from dataclasses import dataclass, replace
from typing import Any

import orjson

from .conf import app_settings
from .loopback_server import LoopbackHTTPServer, ResponseWriter, UpstreamRequest
from .openai_shapes import ChunkFactory, ResponseEventFactory, chat_completion, error_body, tool_call
from .usage import TOKENS_PER_MESSAGE, estimate_tokens
from .wire import SSE_DONE, sse_event

_PIECES = re.compile(r"\s*\S+")
_JSON_PIECES = re.compile(r"\W*\w+|\W+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_EXCERPT_CHARS = 80
_RESULT_EXCERPT_CHARS = 200
# Beyond this depth of a schema, arrays get only their required items and optional values are null,
# so a recursive schema still ends; past `_MAX_SCHEMA_DEPTH` every value is null.
_SHALLOW_DEPTH = 4
_MAX_SCHEMA_DEPTH = 12
_FORMAT_EXAMPLES = {
    "date": "2026-01-01",
    "date-time": "2026-01-01T12:00:00Z",
    "time": "12:00:00",
    "email": "demo@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def split_into_tokens(text: str) -> list[str]:
    """Word-sized pieces, each with its leading space, as a tokenizer would stream them."""
    return _PIECES.findall(text)


def split_json_into_pieces(document: Any) -> list[str]:
    """A JSON document serialized, in word-sized pieces: `{"city`, `":"Paris`, `"}`."""
    return _JSON_PIECES.findall(orjson.dumps(document).decode())


def message_text(message: dict[str, Any]) -> str:
    """A message's words: its string content, or its text (and refusal) parts joined by spaces."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [part.get("text") or part.get("refusal") for part in content if isinstance(part, dict)]
    return " ".join(text for text in texts if isinstance(text, str))


def count_images(messages: list[dict[str, Any]]) -> int:
    """How many `image_url` parts the request's messages carry."""
    contents = [message.get("content") for message in messages]
    return sum(
        isinstance(part, dict) and part.get("type") == "image_url"
        for content in contents
        if isinstance(content, list)
        for part in content
    )


def _excerpt(text: str, limit: int) -> str:
    said = " ".join(text.split())
    return said if len(said) <= limit else said[: limit - 3] + "..."


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    return next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")


def demo_answer(messages: list[dict[str, Any]]) -> str:
    excerpt = _excerpt(_last_user_text(messages), _EXCERPT_CHARS)
    turns = sum(1 for m in messages if m.get("role") == "user")
    images = count_images(messages)
    seen = f"I received {images} image{'' if images == 1 else 's'}; I cannot see them, only count them. "
    return (
        f"Hello! I am the chatproxy demo model, answering because no OpenAI API key is configured. "
        f'You wrote: "{excerpt}" (message {turns} of this conversation). '
        f"{seen if images else ''}"
        "Each word of this reply travels from an OpenAI-compatible endpoint through the openai SDK "
        "and the Django relay to your browser, one chunk at a time, and the usage is logged. "
        "Set OPENAI_API_KEY, and OPENAI_BASE_URL for vLLM, Ollama or LM Studio, to talk to a real model."
    )


def tool_results_answer(messages: list[dict[str, Any]]) -> str:
    """The answer to a conversation ending in tool messages: each tool's result, quoted."""
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.append(message)
    names = {
        call.get("id"): (call.get("function") or {}).get("name")
        for message in messages
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or []
        if isinstance(call, dict)
    }
    quoted = [
        f"The tool {names.get(result.get('tool_call_id')) or 'call'} returned: "
        f'"{_excerpt(message_text(result), _RESULT_EXCERPT_CHARS)}".'
        for result in reversed(results)
    ]
    return " ".join(quoted) + " That is what your tools found; the demo model passes it on verbatim."


@dataclass(frozen=True)
class StatedWords:
    """The words a value is taken from: `name: value` where the user stated one, else the whole text."""

    text: str

    def stated(self, name: str) -> str | None:
        """The value after `name:`, `name =` or `name is` (underscores may be spaces), if any."""
        spelled = _spelled(name)
        pattern = rf"(?<![\w-]){spelled}\s*(?::|=|\bis\b)\s*(\"[^\"]*\"|[^,;\n]+)"
        match = re.search(pattern, self.text, flags=re.IGNORECASE) if spelled else None
        if match is None:
            return None
        return match.group(1).strip().strip('"').rstrip(".!?").strip() or None

    def mention_at(self, word: str) -> int | None:
        """Where the text names `word` as a whole word (underscores may be spaces), if it does."""
        spelled = _spelled(word)
        match = re.search(rf"(?<![\w-]){spelled}(?![\w-])", self.text, re.IGNORECASE) if spelled else None
        return match.start() if match else None

    def mentions(self, word: str) -> bool:
        return self.mention_at(word) is not None

    def first_number(self) -> str | None:
        match = _NUMBER.search(self.text)
        return match.group() if match else None


def _spelled(name: str) -> str:
    """A regex for a name as a user may write it: `get_weather`, `get-weather` or `get weather`."""
    return r"[\s_-]+".join(re.escape(word) for word in re.split(r"[\s_-]+", name) if word)


def schema_example(schema: Any, words: StatedWords, *, name: str = "value") -> Any:
    """A value that satisfies a JSON schema, with strings and numbers taken from the user's words.

    Objects get their required properties (all of them when the schema lists none as required),
    local `$ref`s are followed, `anyOf`/`oneOf`/type lists take their first non-null choice, enums
    the choice the user names (else the first), arrays one item (or `minItems`).
    """
    return _example(schema, words, name, schema, 0)


def _example(schema: Any, words: StatedWords, name: str, root: Any, depth: int) -> Any:
    if depth > _MAX_SCHEMA_DEPTH:
        return None
    if not isinstance(schema, dict):
        schema = {}
    if isinstance(schema.get("$ref"), str):
        return _example(_resolve(schema["$ref"], root), words, name, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return _enum_choice(schema["enum"], words, name)
    for key in ("anyOf", "oneOf", "allOf"):
        choices = [choice for choice in schema.get(key) or [] if isinstance(choice, dict)]
        if choices:
            if depth >= _SHALLOW_DEPTH and any(choice.get("type") == "null" for choice in choices):
                return None
            chosen = next((choice for choice in choices if choice.get("type") != "null"), choices[0])
            return _example(chosen, words, name, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        required = schema.get("required")
        names = [key for key in properties if key in required] if isinstance(required, list) else list(properties)
        return {key: _example(properties[key], words, key, root, depth + 1) for key in names}
    if kind == "array":
        least = schema.get("minItems") if isinstance(schema.get("minItems"), int) else 0
        count = max(least, 1) if depth < _SHALLOW_DEPTH else least
        return [_example(schema.get("items"), words, name, root, depth + 1) for _ in range(min(count, 16))]
    if kind in ("integer", "number"):
        return _number(schema, words, name, integer=kind == "integer")
    if kind == "boolean":
        return _boolean(words, name)
    if kind == "null":
        return None
    return _string(schema, words, name)


def _resolve(reference: str, root: Any) -> Any:
    """A local `#/...` reference within the root schema; None where it leads nowhere."""
    if not reference.startswith("#"):
        return None
    node = root
    for step in reference[1:].split("/")[1:]:
        if not isinstance(node, dict):
            return None
        node = node.get(step.replace("~1", "/").replace("~0", "~"))
    return node


def _enum_choice(options: list[Any], words: StatedWords, name: str) -> Any:
    stated = (words.stated(name) or "").casefold()
    for option in options:
        if str(option).casefold() == stated:
            return option
    return next((option for option in options if words.mentions(str(option))), options[0])


def _number(schema: dict[str, Any], words: StatedWords, name: str, *, integer: bool) -> int | float:
    found = _NUMBER.search(words.stated(name) or "") or _NUMBER.search(words.first_number() or "")
    value: float = float(found.group()) if found else 1
    for bound, pick in (("minimum", max), ("maximum", min)):
        if isinstance(schema.get(bound), int | float):
            value = pick(value, schema[bound])
    return round(value) if integer or value == int(value) else value


def _boolean(words: StatedWords, name: str) -> bool:
    stated = (words.stated(name) or "").casefold()
    if stated in ("true", "yes", "on", "1"):
        return True
    if stated in ("false", "no", "off", "0"):
        return False
    return words.mentions(name)


def _string(schema: dict[str, Any], words: StatedWords, name: str) -> str:
    stated = words.stated(name)
    value = stated or _FORMAT_EXAMPLES.get(schema.get("format", "")) or _excerpt(words.text, _EXCERPT_CHARS)
    value = value or name
    if isinstance(schema.get("maxLength"), int):
        value = value[: schema["maxLength"]]
    if isinstance(schema.get("minLength"), int):
        value = value.ljust(schema["minLength"], ".")
    return value


@dataclass(frozen=True)
class DemoToolCall:
    call_id: str
    name: str
    argument_pieces: list[str]

    @property
    def arguments(self) -> str:
        return "".join(self.argument_pieces)


@dataclass(frozen=True)
class DemoReply:
    """What the demo model answers: content pieces, or tool calls with their argument pieces."""

    content_pieces: list[str]
    tool_calls: list[DemoToolCall]
    finish_reason: str

    @property
    def piece_count(self) -> int:
        return len(self.content_pieces) + sum(len(call.argument_pieces) for call in self.tool_calls)

    def cut_to(self, max_tokens: int) -> DemoReply:
        """The reply as a `max_tokens` limit leaves it: at most that many pieces, `finish_reason: "length"`."""
        if self.piece_count <= max_tokens:
            return self
        budget = max_tokens - len(self.content_pieces[:max_tokens])
        calls = []
        for call in self.tool_calls:
            if budget <= 0:
                break
            calls.append(replace(call, argument_pieces=call.argument_pieces[:budget]))
            budget -= len(calls[-1].argument_pieces)
        return DemoReply(self.content_pieces[:max_tokens], calls, "length")


def demo_reply(body: dict[str, Any]) -> DemoReply:
    """The demo model's whole answer to a chat-completions body (before any `max_tokens` cut)."""
    messages: list[dict[str, Any]] = body["messages"]
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        text = tool_results_answer(messages)
        words = StatedWords(" ".join(message_text(m) for m in messages if m.get("role") == "tool"))
    else:
        words = StatedWords(_last_user_text(messages))
        calls = _tool_calls(body, words) if last.get("role") == "user" else []
        if calls:
            return DemoReply([], calls, "tool_calls")
        text = demo_answer(messages)
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_object":
        return DemoReply(split_json_into_pieces({"answer": text}), [], "stop")
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return DemoReply(split_json_into_pieces(schema_example(schema, words)), [], "stop")
    return DemoReply(split_into_tokens(text), [], "stop")


def _tool_calls(body: dict[str, Any], words: StatedWords) -> list[DemoToolCall]:
    functions = [
        tool["function"]
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict)
    ]
    choice = body.get("tool_choice", "auto")
    if not functions or choice == "none":
        return []
    chosen_name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    chosen = [function for function in functions if function.get("name") == chosen_name][:1]
    if not chosen:
        mentioned = [(words.mention_at(str(function.get("name"))), order) for order, function in enumerate(functions)]
        chosen = [functions[order] for at, order in sorted(m for m in mentioned if m[0] is not None)]
    if body.get("parallel_tool_calls") is False:
        chosen = chosen[:1]
    return [
        DemoToolCall(
            f"call_{secrets.token_hex(12)}",
            str(function.get("name")),
            split_json_into_pieces(schema_example(function.get("parameters") or {}, words)),
        )
        for function in chosen or functions[:1]
    ]


def _message_chars(message: dict[str, Any]) -> int:
    calls: list[Any] = message.get("tool_calls") or []
    arguments = sum(len(str((call.get("function") or {}).get("arguments", ""))) for call in calls)
    return len(message_text(message)) + arguments


class DemoModelServer(LoopbackHTTPServer):
    """Answers chat completions with `demo_reply`, streamed piece by piece, to holders of its own key."""

    def __init__(self, token_delay: float) -> None:
        super().__init__()
        self.api_key = f"demo-{secrets.token_urlsafe(24)}"
        self.token_delay = token_delay

    async def handle(self, request: UpstreamRequest, response: ResponseWriter) -> None:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            await response.json(401, error_body("Invalid API key for the demo model.", "invalid_api_key"))
        elif request.method == "POST" and request.path.endswith("/chat/completions"):
            await self._chat(request, response)
        elif request.method == "POST" and request.path.endswith("/responses"):
            await self._responses(request, response)
        else:
            await response.json(404, error_body(f"No route {request.method} {request.path}.", "not_found"))

    async def _chat(self, request: UpstreamRequest, response: ResponseWriter) -> None:
        try:
            body = request.json()
            messages = body["messages"]
            model = body.get("model", app_settings.CHAT_DEMO_MODEL)
            reply = demo_reply(body)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError):
            await response.json(400, error_body("Expected a JSON body with 'messages'.", "invalid_request"))
            return
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(max_tokens, int):
            reply = reply.cut_to(max_tokens)
        prompt_tokens = sum(estimate_tokens(_message_chars(m)) + TOKENS_PER_MESSAGE for m in messages)
        chunks = ChunkFactory(model)
        if not body.get("stream"):
            completion = chat_completion(
                chunks,
                "".join(reply.content_pieces) if reply.content_pieces or not reply.tool_calls else None,
                reply.finish_reason,
                prompt_tokens,
                reply.piece_count,
                tool_calls=[tool_call(call.call_id, call.name, call.arguments) for call in reply.tool_calls],
            )
            await response.json(200, completion)
            return
        await response.start_stream()
        if not await self._stream(response, chunks, reply):
            return
        tail = sse_event(chunks.finish(reply.finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            tail += sse_event(chunks.usage(prompt_tokens, reply.piece_count))
        if await response.send(tail + SSE_DONE):
            await response.end_stream()

    async def _responses(self, request: UpstreamRequest, response: ResponseWriter) -> None:
        try:
            body = request.json()
            chat = responses_as_chat(body)
            reply = demo_reply(chat)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError):
            await response.json(400, error_body("Expected a JSON body with 'input'.", "invalid_request"))
            return
        if isinstance(body.get("max_output_tokens"), int):
            reply = reply.cut_to(body["max_output_tokens"])
        prompt_tokens = sum(estimate_tokens(_message_chars(m)) + TOKENS_PER_MESSAGE for m in chat["messages"])
        events = ResponseEventFactory(body.get("model", app_settings.CHAT_DEMO_MODEL), request=body)
        if not body.get("stream"):
            await response.json(200, demo_response(events, reply, prompt_tokens))
            return
        await response.start_stream()
        pieces = response_event_pieces(events, reply)
        for number, piece in enumerate(pieces):
            if number and number < len(pieces) - 1:
                await asyncio.sleep(self.token_delay)
            if not await response.send(piece):
                return
        if await response.send(_response_end(events, reply, prompt_tokens)):
            await response.end_stream()

    async def _stream(self, response: ResponseWriter, chunks: ChunkFactory, reply: DemoReply) -> bool:
        """Send the reply's deltas, paced; False once the client has gone away."""
        deltas = [chunks.role("" if reply.content_pieces or not reply.tool_calls else None)]
        deltas += [chunks.content(piece) for piece in reply.content_pieces]
        for index, call in enumerate(reply.tool_calls):
            deltas.append(chunks.tool_call_start(index, call.call_id, call.name))
            deltas += [chunks.tool_call_arguments(index, piece) for piece in call.argument_pieces]
        for number, delta in enumerate(deltas):
            if number:
                await asyncio.sleep(self.token_delay)
            if not await response.send(sse_event(delta)):
                return False
        return True


def responses_as_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses body as the chat-completions body it amounts to, for `demo_reply`.

    Instructions become a system message, input items messages (a function call an assistant
    message's tool call, its output a tool message), function tools and `tool_choice` the chat
    shapes, `text.format` the `response_format`.
    """
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    for item in [{"role": "user", "content": items}] if isinstance(items, str) else items:
        kind = item.get("type", "message")
        if kind == "function_call":
            call = tool_call(item["call_id"], item["name"], item["arguments"])
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _chat_content(item["output"])})
        elif kind == "message":
            messages.append({"role": item["role"], "content": _chat_content(item["content"])})
    chat: dict[str, Any] = {"messages": messages}
    tools = [tool for tool in body.get("tools") or [] if isinstance(tool, dict) and tool.get("type") == "function"]
    if tools:
        chat["tools"] = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in tools]
    choice = body.get("tool_choice")
    if choice is not None:
        chat["tool_choice"] = (
            {"type": "function", "function": {"name": choice.get("name")}} if isinstance(choice, dict) else choice
        )
    if body.get("parallel_tool_calls") is not None:
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    text_format = (body.get("text") or {}).get("format") or {}
    if text_format.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif text_format.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": text_format}
    return chat


def _chat_content(content: Any) -> Any:
    """A Responses message's content as chat content: text parts `text`, image parts `image_url`."""
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        kind = part.get("type")
        if kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": part.get("image_url")}})
        elif kind == "refusal":
            parts.append({"type": "refusal", "refusal": part.get("refusal")})
        else:
            parts.append({"type": "text", "text": part.get("text")})
    return parts


def response_event_pieces(events: ResponseEventFactory, reply: DemoReply) -> list[bytes]:
    """A reply's Responses events up to its end, grouped as the demo model paces them: the start,
    each delta (with the item events around it), the last item's done events."""
    pieces = [events.created()]
    text = "".join(reply.content_pieces)
    output_index = 0
    if reply.content_pieces or not reply.tool_calls:
        item_id = f"msg_{secrets.token_hex(24)}"
        start = events.message_start(output_index, item_id)
        deltas = [events.text_delta(output_index, item_id, piece) for piece in reply.content_pieces] or [b""]
        pieces += [start + deltas[0], *deltas[1:]]
        pieces[-1] += events.message_done(output_index, item_id, text, status=_item_status(reply))
        output_index += 1
    for call in reply.tool_calls:
        item_id = f"fc_{secrets.token_hex(24)}"
        start = events.function_call_start(output_index, item_id, call.call_id, call.name)
        deltas = [events.function_call_arguments(output_index, item_id, piece) for piece in call.argument_pieces]
        pieces += [start + (deltas[0] if deltas else b""), *deltas[1:]]
        pieces[-1] += events.function_call_done(
            output_index, item_id, call.call_id, call.name, call.arguments, status=_item_status(reply)
        )
        output_index += 1
    return pieces


def _item_status(reply: DemoReply) -> str:
    return "incomplete" if reply.finish_reason == "length" else "completed"


def _response_end(events: ResponseEventFactory, reply: DemoReply, prompt_tokens: int) -> bytes:
    if reply.finish_reason == "length":
        return events.incomplete("max_output_tokens", prompt_tokens, reply.piece_count)
    return events.completed(prompt_tokens, reply.piece_count)


def demo_response(events: ResponseEventFactory, reply: DemoReply, prompt_tokens: int) -> dict[str, Any]:
    """The non-streaming `response` object: the last event of the stream, whole."""
    response_event_pieces(events, reply)
    final = _response_end(events, reply, prompt_tokens)
    return orjson.loads(final.split(b"data: ", 1)[1])["response"]


_demo_server: DemoModelServer | None = None
_demo_server_lock = threading.Lock()


def ensure_demo_server() -> DemoModelServer:
    """Start the process's demo model server on first use."""
    global _demo_server
    with _demo_server_lock:
        if _demo_server is None:
            _demo_server = DemoModelServer(app_settings.CHAT_DEMO_TOKEN_DELAY).start()
        return _demo_server
