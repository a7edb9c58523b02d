"""A scriptable OpenAI-compatible upstream speaking real HTTP/1.1 and SSE on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from streaming.loopback_server import LoopbackHTTPServer, ResponseWriter, UpstreamRequest
from streaming.openai_shapes import ChunkFactory, ResponseEventFactory, error_body
from streaming.wire import SSE_DONE, sse_event

MID_STREAM_ERROR = sse_event(b'{"error": {"message": "The model crashed mid-answer.", "type": "server_error"}}')
MID_STREAM_ERROR_MESSAGE = "The model crashed mid-answer."
CHAT_CONTENT = b'"content":"'
RESPONSE_TEXT_DELTA = b'"type":"response.output_text.delta"'


# The parameters schema of the tests' city tools (get_weather, get_local_time): strict, one city.
CITY_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class ScriptedToolCall:
    """A tool call the fake upstream makes: its arguments streamed in these pieces."""

    id: str
    name: str
    argument_pieces: tuple[str, ...]

    @property
    def arguments(self) -> str:
        return "".join(self.argument_pieces)

    def as_message_tool_call(self) -> dict:
        """The call as a client reassembles it (`message.tool_calls[i]`)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Reply:
    """How the fake upstream answers one chat request."""

    pieces: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    delay: float = 0.0
    # Extra silence before the event with this index (0 is the first chunk, with the role).
    pause_before: dict[int, float] = field(default_factory=dict)
    first_delay: float = 0.0
    status: int = 200
    error_message: str = "Upstream says no."
    error_headers: dict[str, str] = field(default_factory=dict)
    include_usage: bool = True
    usage: tuple[int, int] = (11, 7)
    # After this many content chunks: send an `error` event, drop the connection, or send a non-JSON event.
    error_after: int | None = None
    drop_after: int | None = None
    malformed_after: int | None = None
    # Send the response headers, then nothing at all.
    hang: bool = False
    send_done: bool = True
    # Tool calls after the content pieces (by index, in order); the answer then finishes with "tool_calls".
    tool_calls: list[ScriptedToolCall] = field(default_factory=list)
    # Send each tool call whole in one delta (id, name and all its arguments), as some providers do.
    whole_tool_calls: bool = False
    # Responses API only: end with `response.failed` after this many text deltas, or with
    # `response.incomplete` for this reason instead of `response.completed`.
    fail_after: int | None = None
    incomplete_reason: str | None = None
    # Responses API only: token details in the final usage.
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class StreamRecord:
    """What happened to one streamed answer, as the upstream saw it."""

    request: UpstreamRequest
    started_at: float
    events_sent: int = 0
    finished_at: float | None = None
    client_closed_at: float | None = None
    content_sent_at: list[float] = field(default_factory=list)


class FakeUpstream(LoopbackHTTPServer):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.default_reply = Reply()
            self._replies: deque[Reply] = deque()
            self.requests: list[UpstreamRequest] = []
            self.streams: list[StreamRecord] = []

    def will_reply(self, *replies: Reply) -> None:
        """Queue replies for the next requests; after them the default reply is used."""
        with self._lock:
            self._replies.extend(replies)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._replies.popleft() if self._replies else self.default_reply

    def wait_for_stream(self, timeout: float = 5.0) -> StreamRecord:
        deadline = time.monotonic() + timeout
        while not self.streams and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.streams, "no stream reached the upstream"
        return self.streams[-1]

    def wait_for_closed_stream(self, timeout: float = 3.0) -> StreamRecord:
        """The last stream, once the site has closed its connection (or the timeout has passed)."""
        record = self.wait_for_stream(timeout=timeout)
        deadline = time.monotonic() + timeout
        while record.client_closed_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return record

    async def handle(self, request: UpstreamRequest, response: ResponseWriter) -> None:
        with self._lock:
            self.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            await response.json(401, error_body(f"Incorrect API key provided: {_masked(request)}.", "invalid_api_key"))
            return
        reply = self._next_reply()
        await asyncio.sleep(reply.first_delay)
        if reply.status != 200:
            refusal = error_body(reply.error_message, f"status_{reply.status}")
            await response.json(reply.status, refusal, reply.error_headers)
            return
        await self._stream(request, response, reply)

    async def _stream(self, request: UpstreamRequest, response: ResponseWriter, reply: Reply) -> None:
        body = request.json()
        record = StreamRecord(request=request, started_at=time.monotonic())
        with self._lock:
            self.streams.append(record)
        if request.path.endswith("/responses"):
            answer = ResponseEventFactory(body["model"], request=body)
            answer_id, events, content_marker = answer.id, response_events(reply, answer), RESPONSE_TEXT_DELTA
        else:
            chunks = ChunkFactory(body["model"])
            answer_id, events, content_marker = chunks.id, _events(reply, chunks, body), CHAT_CONTENT
        await response.start_stream({"x-request-id": f"req_{answer_id[-12:]}"})
        if reply.hang:
            await response.client_closed.wait()
            record.client_closed_at = response.client_closed_at
            return
        for index, event in enumerate(events):
            silence = (reply.delay if index else 0.0) + reply.pause_before.get(index, 0.0)
            if silence:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(response.client_closed.wait(), silence)
            if event is None:
                response.abort()
                break
            if not await response.send(event):
                break
            record.events_sent += 1
            if content_marker in event and b'"role"' not in event:
                record.content_sent_at.append(time.monotonic())
        else:
            await response.end_stream()
        record.finished_at = time.monotonic()
        record.client_closed_at = response.client_closed_at


def _events(reply: Reply, chunks: ChunkFactory, body: dict) -> list[bytes | None]:
    """The SSE events of one reply; None stands for dropping the connection."""
    # As OpenAI does, an answer of tool calls alone starts with `content: null`.
    events: list[bytes | None] = [sse_event(chunks.role("" if reply.pieces or not reply.tool_calls else None))]
    for index, piece in enumerate(reply.pieces):
        if index == reply.error_after:
            return [*events, MID_STREAM_ERROR]
        if index == reply.drop_after:
            return [*events, None]
        if index == reply.malformed_after:
            return [*events, sse_event(b"this is not json")]
        events.append(sse_event(chunks.content(piece)))
    for index, call in enumerate(reply.tool_calls):
        if reply.whole_tool_calls:
            events.append(sse_event(chunks.whole_tool_call(index, call.id, call.name, call.arguments)))
            continue
        events.append(sse_event(chunks.tool_call_start(index, call.id, call.name)))
        events += [sse_event(chunks.tool_call_arguments(index, piece)) for piece in call.argument_pieces]
    events.append(sse_event(chunks.finish("tool_calls" if reply.tool_calls else "stop")))
    if reply.include_usage and (body.get("stream_options") or {}).get("include_usage"):
        events.append(sse_event(chunks.usage(*reply.usage)))
    if reply.send_done:
        events.append(SSE_DONE)
    return events


def response_events(reply: Reply, answer: ResponseEventFactory) -> list[bytes | None]:
    """The Responses events of one reply: a message of the pieces (if any), then the function calls;
    None stands for dropping the connection. Each event is sent on its own, as OpenAI sends them."""
    events: list[bytes | None] = [*_split_events(answer.created())]
    output_index = 0
    if reply.pieces or not reply.tool_calls:
        item_id = "msg_fake0"
        events += _split_events(answer.message_start(output_index, item_id))
        for index, piece in enumerate(reply.pieces):
            if index == reply.error_after:
                return [*events, answer.error(MID_STREAM_ERROR_MESSAGE, "server_error")]
            if index == reply.fail_after:
                return [*events, answer.failed(MID_STREAM_ERROR_MESSAGE)]
            if index == reply.drop_after:
                return [*events, None]
            if index == reply.malformed_after:
                return [*events, sse_event(b"this is not json", "response.output_text.delta")]
            events.append(answer.text_delta(output_index, item_id, piece))
        events += _split_events(answer.message_done(output_index, item_id, reply.text))
        output_index += 1
    for call in reply.tool_calls:
        item_id = f"fc_fake{output_index}"
        events.append(answer.function_call_start(output_index, item_id, call.id, call.name))
        pieces = (call.arguments,) if reply.whole_tool_calls else call.argument_pieces
        events += [answer.function_call_arguments(output_index, item_id, piece) for piece in pieces]
        events += _split_events(answer.function_call_done(output_index, item_id, call.id, call.name, call.arguments))
        output_index += 1
    if reply.incomplete_reason:
        events.append(answer.incomplete(reply.incomplete_reason, *reply.usage))
    else:
        events.append(
            answer.completed(*reply.usage, cached_tokens=reply.cached_tokens, reasoning_tokens=reply.reasoning_tokens)
        )
    return events


def _split_events(events: bytes) -> list[bytes | None]:
    return [event + b"\n\n" for event in events.split(b"\n\n") if event]


def _masked(request: UpstreamRequest) -> str:
    key = request.headers.get("authorization", "").removeprefix("Bearer ")
    return f"{key[:7]}****{key[-4:]}"
