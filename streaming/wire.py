"""The wire formats: the upstream's SSE coming in, NDJSON or SSE going out to the client.

Chunks are relayed as the upstream's own bytes; only the framing around them changes.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

DONE = b"[DONE]"


def sse_event(data: bytes, event: str | None = None) -> bytes:
    """One server-sent event whose data is a single line, named `event` if given."""
    framed = b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\n" + framed if event else framed


SSE_DONE = sse_event(DONE)


class SSEEvent(NamedTuple):
    """One server-sent event (a tuple: one is made for every relayed chunk)."""

    data: bytes
    event: str | None = None


class SSEDecoder:
    """Incremental decoder of an SSE byte stream into complete events.

    Feed it whatever one network read delivered; it returns the events completed by those bytes
    and keeps the rest. Handles LF, CRLF and CR line ends, split anywhere, and multi-line data.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[SSEEvent]:
        buffer = self._buffer + data
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF: keep it for the next read.
            held = buffer.endswith(b"\r")
            buffer = buffer[:-1] if held else buffer
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer += b"\r"
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop()
        events = []
        for block in blocks:
            event = _parse_block(block)
            if event is not None:
                events.append(event)
        return events


def _parse_block(block: bytes) -> SSEEvent | None:
    if block.startswith(b"data: ") and b"\n" not in block:
        return SSEEvent(block[6:])
    data_lines: list[bytes] = []
    event = None
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data_lines.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    if not data_lines:
        return None
    return SSEEvent(b"\n".join(data_lines), event)


class NDJSONFraming:
    """One JSON object per line: what openai-node's `ChatCompletionStream.toReadableStream()` writes."""

    content_type = "application/x-ndjson; charset=utf-8"
    keepalive = b"\n"

    @staticmethod
    def chunk(data: bytes, event: str | None = None) -> bytes:
        """The event's data as one line. NDJSON names no events (Responses events carry theirs as `type`)."""
        return data + b"\n"

    @staticmethod
    def error(error: dict) -> bytes:
        return orjson.dumps(error) + b"\n"

    @staticmethod
    def end(terminator: bytes) -> bytes:
        """NDJSON has no end marker: the stream's last line carries the end of the answer."""
        return b""


class SSEFraming:
    """OpenAI's own server-sent events framing."""

    content_type = "text/event-stream; charset=utf-8"
    keepalive = b": ping\n\n"

    chunk = staticmethod(sse_event)

    @staticmethod
    def error(error: dict) -> bytes:
        return sse_event(orjson.dumps(error), "error")

    @staticmethod
    def end(terminator: bytes) -> bytes:
        """The upstream API's own SSE end marker (chat completions: `data: [DONE]`)."""
        return terminator


Framing = type[NDJSONFraming] | type[SSEFraming]


def framing_for(accept: str) -> Framing:
    return SSEFraming if "text/event-stream" in accept else NDJSONFraming
