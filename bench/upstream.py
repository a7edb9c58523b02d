"""The benchmark's fake OpenAI-compatible upstream: a lean asyncio HTTP/1.1 server in its own process.

It answers `POST /v1/chat/completions` (chat chunks) and `POST /v1/responses` (Responses events),
both on the same schedule. It must never be the bottleneck, so it skips everything a real server does per chunk: each
answer's SSE bytes (already framed for chunked transfer encoding) are rendered when the request
arrives, and a per-stream timer hands every chunk that is due to the socket in one write. Chunks
are due on an absolute schedule (chunk k at k × delay after the request), so a late timer catches
up instead of stretching the answer.

For the abort measurement it records, per stream, when it saw the client (the relay) close the
connection and, if asked, when it sent each content chunk; `GET /bench/streams` hands these
records out. Timestamps are `time.monotonic()`, which is the same clock in every process on Linux.

Run: `python -m bench.upstream --api-key KEY [--port 0]`; it prints `PORT <n>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import itertools
import math
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from bench.answers import MODEL, PROMPT_TOKENS, StreamSpec, answer_pieces, expected_text
from streaming.openai_shapes import ChunkFactory, ResponseEventFactory, error_body
from streaming.wire import SSE_DONE, sse_event

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024
ID_PLACEHOLDER = "\x01ID\x01"
PLACEHOLDER_BYTES = orjson.dumps(ID_PLACEHOLDER)[1:-1]  # as it appears inside a JSON string
CREATED = int(time.time())
# Chunks due within this many seconds are sent with the ones due now (fewer timer wake-ups).
SEND_AHEAD_SECONDS = 0.0005


@dataclass(frozen=True)
class FrameTemplate:
    """One chunked-encoding frame with a hole for the stream's id: `before + id + after` (chat: the
    completion id; Responses: the tag in the message item's id, which every text delta carries)."""

    before: bytes
    after: bytes

    def render(self, completion_id: bytes) -> bytes:
        return b"%x\r\n%b%b%b\r\n" % (
            len(self.before) + len(completion_id) + len(self.after),
            self.before,
            completion_id,
            self.after,
        )


def _split(framed: bytes) -> FrameTemplate:
    before, after = framed.split(PLACEHOLDER_BYTES, 1)
    if PLACEHOLDER_BYTES in after:  # several events in one frame: the id appears in each
        raise ValueError("one id per template")
    return FrameTemplate(before, after)


def _template(*events: bytes) -> FrameTemplate:
    return _split(b"".join(sse_event(event) for event in events))


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


@lru_cache(maxsize=32)
def answer_templates(chunks: int, model: str, include_usage: bool) -> tuple[list[FrameTemplate], bytes]:
    """The frames of an answer with `chunks` content chunks (role first), and its closing bytes."""
    answer = ChunkFactory(model, id=ID_PLACEHOLDER, created=CREATED)
    frames = [_template(answer.role())]
    frames += [_template(answer.content(piece)) for piece in answer_pieces(chunks)]
    tail = sse_event(answer.finish())
    if include_usage:
        tail += sse_event(answer.usage(PROMPT_TOKENS, chunks))
    return frames, tail + SSE_DONE


def render_answer(spec: StreamSpec, model: str, include_usage: bool) -> list[bytes]:
    """The answer's bytes, one item per scheduled send: role, each content chunk, then the end."""
    templates, tail = answer_templates(spec.chunks, model, include_usage)
    completion_id = spec.completion_id.encode()
    frames = [template.render(completion_id) for template in templates]
    tail = tail.replace(PLACEHOLDER_BYTES, completion_id)
    frames.append(_chunked(tail) + b"0\r\n\r\n")
    return frames


@lru_cache(maxsize=32)
def response_templates(chunks: int, model: str) -> tuple[bytes, list[FrameTemplate], bytes]:
    """A Responses answer with `chunks` text deltas, the stream's tag left as a placeholder: its
    opening events (`response.created`, `.in_progress`, the message item and its content part
    added), one frame per `response.output_text.delta`, and its closing events (the text, part and
    item done, `response.completed` with usage)."""
    events = ResponseEventFactory(model, id=f"resp_{ID_PLACEHOLDER}", created_at=CREATED)
    item_id = f"msg_{ID_PLACEHOLDER}"
    head = events.created() + events.message_start(0, item_id)
    deltas = [_split(events.text_delta(0, item_id, piece)) for piece in answer_pieces(chunks)]
    tail = events.message_done(0, item_id, expected_text(chunks)) + events.completed(PROMPT_TOKENS, chunks)
    return head, deltas, tail


def render_response(spec: StreamSpec, model: str) -> list[bytes]:
    """A Responses answer's bytes, scheduled like a chat answer's: the opening events, each text
    delta, then the closing events and the end of the body."""
    head, templates, tail = response_templates(spec.chunks, model)
    tag = spec.tag.encode()
    frames = [_chunked(head.replace(PLACEHOLDER_BYTES, tag))]
    frames += [template.render(tag) for template in templates]
    frames.append(_chunked(tail.replace(PLACEHOLDER_BYTES, tag)) + b"0\r\n\r\n")
    return frames


@dataclass
class StreamRecord:
    tag: str
    chunks: int
    started: float
    content_sent: int = 0
    finished: float | None = None
    client_closed: float | None = None
    sent_times: list[float] | None = None

    def as_dict(self) -> dict:
        return {
            "tag": self.tag,
            "chunks": self.chunks,
            "started": self.started,
            "content_sent": self.content_sent,
            "finished": self.finished,
            "client_closed": self.client_closed,
            "sent_times": self.sent_times,
        }


@dataclass
class Counters:
    requests: int = 0
    streams: int = 0
    content_chunks_sent: int = 0
    writes: int = 0
    connections: int = 0


@dataclass
class UpstreamState:
    api_key: str
    counters: Counters = field(default_factory=Counters)
    open_streams: dict[str, StreamRecord] = field(default_factory=dict)
    ended_streams: list[StreamRecord] = field(default_factory=list)

    def stream_ended(self, record: StreamRecord) -> None:
        self.open_streams.pop(record.tag, None)
        self.ended_streams.append(record)

    def take_records(self) -> dict:
        """Ended streams since the last call (then forgotten), and the tags of those still open."""
        ended, self.ended_streams = self.ended_streams, []
        return {
            "ended": [record.as_dict() for record in ended],
            "open": list(self.open_streams),
            "counters": self.counters.__dict__,
        }


class PacingScheduler:
    """Every stream's next send in one heap, served by a single loop timer.

    One timer for all streams, instead of one per stream and chunk, keeps the per-chunk cost at a
    heap operation and a socket write; each wake-up serves every stream that is due by then.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._heap: list[tuple[float, int, ScheduledAnswer]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._serving = False

    def now(self) -> float:
        return self._loop.time()

    def schedule(self, at: float, answer: ScheduledAnswer) -> None:
        heapq.heappush(self._heap, (at, next(self._order), answer))
        if not self._serving and at < self._timer_at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._serve)
        self._timer_at = at

    def _serve(self) -> None:
        self._timer, self._timer_at = None, math.inf
        heap = self._heap
        horizon = self._loop.time() + SEND_AHEAD_SECONDS
        self._serving = True
        try:
            while heap and heap[0][0] <= horizon:
                heapq.heappop(heap)[2].send_due(horizon)
        finally:
            self._serving = False
        if heap:
            self._arm(heap[0][0])


class ScheduledAnswer:
    """Sends one answer's frames on its schedule: chunk k is due k × delay after the request."""

    def __init__(
        self,
        connection: UpstreamConnection,
        scheduler: PacingScheduler,
        spec: StreamSpec,
        frames: list[bytes],
        record: StreamRecord,
    ) -> None:
        self._connection = connection
        self._scheduler = scheduler
        self._frames = frames
        self._record = record
        self._delay = spec.delay_ms / 1000
        self._last_content = len(frames) - 2  # frames: role, content 1..n, end
        self._next = 0
        self._started = scheduler.now()
        self._stopped = False

    def start(self, head: bytes) -> None:
        self.send_due(self._started + SEND_AHEAD_SECONDS, head)

    def _due_offset(self, index: int) -> float:
        # Role at 0, content chunk k at k × delay, the end right after the last content chunk.
        return min(index, self._last_content) * self._delay

    def send_due(self, horizon: float, head: bytes = b"") -> None:
        """Write every frame due by `horizon` (loop time) in one write, then book the next one."""
        if self._stopped:
            return
        frames = self._frames
        elapsed = horizon - self._started
        first = last = self._next
        while last < len(frames) and self._due_offset(last) <= elapsed:
            last += 1
        if last > first:
            self._connection.write(head + b"".join(frames[first:last]) if head or last - first > 1 else frames[first])
            content = min(last, self._last_content + 1) - max(first, 1)
            if content > 0:
                self._record.content_sent += content
                self._connection.state.counters.content_chunks_sent += content
                if self._record.sent_times is not None:
                    self._record.sent_times.extend([time.monotonic()] * content)
            self._next = last
        if last >= len(frames):
            self._stopped = True
            self._record.finished = time.monotonic()
            self._connection.answer_done(self)
        else:
            self._scheduler.schedule(self._started + self._due_offset(last), self)

    def client_closed(self, at: float) -> None:
        self._stopped = True  # its heap entry is skipped when it comes up
        if self._record.client_closed is None:
            self._record.client_closed = at

    @property
    def record(self) -> StreamRecord:
        return self._record


class UpstreamConnection(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests one at a time, kept alive."""

    def __init__(self, state: UpstreamState, scheduler: PacingScheduler) -> None:
        self.state = state
        self._scheduler = scheduler
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._answer: ScheduledAnswer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        self.state.counters.connections += 1

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._answer is None:
            self._handle_requests()

    def eof_received(self) -> bool:
        self._client_gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_gone()

    def _client_gone(self) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.client_closed(time.monotonic())
            self.state.stream_ended(answer.record)

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)
        self.state.counters.writes += 1

    def answer_done(self, answer: ScheduledAnswer) -> None:
        if self._answer is answer:
            self._answer = None
            self.state.stream_ended(answer.record)
            if self._buffer:
                self._handle_requests()

    def _handle_requests(self) -> None:
        while self._answer is None and self._transport is not None and not self._transport.is_closing():
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._transport.close()
                return
            request_line, *header_lines = bytes(self._buffer[:head_end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:
                self._transport.close()
                return
            if len(self._buffer) < head_end + 4 + length:
                return
            body = bytes(self._buffer[head_end + 4 : head_end + 4 + length])
            del self._buffer[: head_end + 4 + length]
            method, path, _ = request_line.split(" ", 2)
            self._handle(method, path, headers, body)

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.state.counters.requests += 1
        if path == "/bench/streams":
            self._json(200, self.state.take_records())
            gc.collect()  # between workloads: the collector is off while streams run (see serve)
        elif method == "POST" and path.endswith("/chat/completions"):
            if headers.get("authorization") != f"Bearer {self.state.api_key}":
                self._json(401, error_body("Incorrect API key provided.", "invalid_api_key"))
            else:
                self._chat(body)
        elif method == "POST" and path.endswith("/responses"):
            if headers.get("authorization") != f"Bearer {self.state.api_key}":
                self._json(401, error_body("Incorrect API key provided.", "invalid_api_key"))
            else:
                self._responses(body)
        else:
            self._json(404, error_body(f"No route {method} {path}.", "not_found"))

    def _chat(self, body: bytes) -> None:
        try:
            request = orjson.loads(body)
            prompt = request["messages"][-1]["content"]
            model = str(request.get("model") or MODEL)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            self._json(400, error_body("Expected a JSON body with 'messages'.", "invalid_request"))
            return
        spec = StreamSpec.from_prompt(prompt) or StreamSpec.new(chunks=20, delay_ms=0)
        if not request.get("stream"):
            self._json(400, error_body("This fake upstream only streams.", "invalid_request"))
            return
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        self._stream(spec, render_answer(spec, model, include_usage))

    def _responses(self, body: bytes) -> None:
        """`POST /v1/responses`: the same schedule, as Responses events; `input` carries the tag."""
        try:
            request = orjson.loads(body)
            prompt = _input_text(request["input"])
            model = str(request.get("model") or MODEL)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            self._json(400, error_body("Expected a JSON body with 'input'.", "invalid_request"))
            return
        spec = StreamSpec.from_prompt(prompt) or StreamSpec.new(chunks=20, delay_ms=0)
        if not request.get("stream"):
            self._json(400, error_body("This fake upstream only streams.", "invalid_request"))
            return
        self._stream(spec, render_response(spec, model))

    def _stream(self, spec: StreamSpec, frames: list[bytes]) -> None:
        """Send `frames` (opening, one per content chunk, end) on the spec's schedule."""
        record = StreamRecord(
            spec.tag,
            spec.chunks,
            time.monotonic(),
            sent_times=[] if spec.trace else None,
        )
        self.state.counters.streams += 1
        self.state.open_streams[spec.tag] = record
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
            b"Cache-Control: no-cache\r\nx-request-id: req_" + spec.tag.encode() + b"\r\n\r\n"
        )
        self._answer = ScheduledAnswer(self, self._scheduler, spec, frames, record)
        self._answer.start(head)

    def _json(self, status: int, payload: object) -> None:
        body = orjson.dumps(payload)
        reason = {
            200: "OK",
            400: "Bad Request",
            401: "Unauthorized",
            404: "Not Found",
        }.get(status, "Error")
        self.write(
            b"HTTP/1.1 %d %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (status, reason.encode(), len(body), body)
        )


def _input_text(value: Any) -> str:
    """The prompt of a Responses `input`: the string itself, or the last item's (last) text."""
    if isinstance(value, str):
        return value
    content = value[-1]["content"]
    return content if isinstance(content, str) else str(content[-1]["text"])


def raise_file_limit() -> None:
    """Thousands of open sockets need more descriptors than a default soft limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (bench/requirements.txt), else the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def serve(api_key: str, port: int) -> None:
    # A full collection with thousands of streams open pauses every one of them; collect only
    # between workloads, when the harness asks for the stream records.
    gc.disable()
    state = UpstreamState(api_key)
    scheduler = PacingScheduler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamConnection(state, scheduler), "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop_name = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    print(f"PORT {server.sockets[0].getsockname()[1]} {loop_name}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_file_limit()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(args.api_key, args.port))


if __name__ == "__main__":
    sys.exit(main())
