"""What a client received on one stream, read after the run: chunks with times, and verification.

The same reader handles the relay's NDJSON and the upstream's own SSE (`data: {...}` events, with
`event: <type>` lines for the Responses API), for chat-completion chunks and Responses events alike,
so a direct run and a proxied run are checked by one piece of code against the same expectation.
A "content chunk" is a chat chunk with `delta.content`, or a `response.output_text.delta` event:
per-chunk figures are per content event in both APIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import orjson

from bench.answers import StreamSpec
from bench.http_client import Exchange

CHAT = "chat"
RESPONSES = "responses"
# The Responses events that end a response, each carrying it whole.
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


@dataclass
class Transcript:
    content_times: list[float] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    # Chat: every chunk's `id`. Responses: the response's `id` and every item id seen.
    completion_ids: set[str] = field(default_factory=set)
    finish_reasons: list[str] = field(default_factory=list)
    usage: dict | None = None
    done_marker: bool = False
    errors: list[str] = field(default_factory=list)
    malformed_lines: int = 0
    # Responses events (JSON objects with a `type`): how many, the last one's type, the response
    # object of the last final event, sequence numbers out of order, SSE `event:` names that are not
    # the data's `type`.
    response_events: int = 0
    last_event_type: str | None = None
    final_response: dict | None = None
    sequence_errors: int = 0
    event_name_mismatches: int = 0
    _event_name: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def first_content_at(self) -> float | None:
        return self.content_times[0] if self.content_times else None

    @property
    def largest_gap(self) -> float | None:
        """The longest wait between two content chunks (a stall, if the relay falls behind)."""
        times = self.content_times
        return max((later - earlier for earlier, later in pairwise(times)), default=None)


def read_transcript(exchange: Exchange) -> Transcript:
    transcript = Transcript()
    carry = b""
    for received_at, piece in exchange.pieces:
        lines = (carry + piece).split(b"\n")
        carry = lines.pop()
        for line in lines:
            _read_line(transcript, line.rstrip(b"\r"), received_at)
    if carry.strip():
        _read_line(transcript, carry, exchange.ended_at or 0.0)
    return transcript


def _read_line(transcript: Transcript, line: bytes, received_at: float) -> None:
    if not line or line.startswith(b":"):
        return  # keepalive (blank line / SSE comment) or an SSE event separator
    if line.startswith(b"event:"):
        transcript._event_name = line[6:].strip().decode("utf-8", "replace")
        return
    event_name, transcript._event_name = transcript._event_name, None
    if line.startswith(b"data:"):
        line = line[5:].lstrip(b" ")
        if line == b"[DONE]":
            transcript.done_marker = True
            return
    try:
        chunk = orjson.loads(line)
    except orjson.JSONDecodeError:
        transcript.malformed_lines += 1
        return
    if not isinstance(chunk, dict):
        transcript.malformed_lines += 1
        return
    if isinstance(chunk.get("type"), str):
        _read_response_event(transcript, chunk, event_name, received_at)
        return
    if event_name is not None:  # chat streams name no events (an `event: error` is an error)
        transcript.errors.append(f"event: {event_name}")
    if "error" in chunk:
        transcript.errors.append(orjson.dumps(chunk["error"]).decode())
        return
    if isinstance(chunk.get("id"), str):
        transcript.completion_ids.add(chunk["id"])
    if chunk.get("usage"):
        transcript.usage = chunk["usage"]
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            transcript.content_times.append(received_at)
            transcript.text_parts.append(content)
        if choice.get("finish_reason"):
            transcript.finish_reasons.append(choice["finish_reason"])


def _read_response_event(transcript: Transcript, event: dict[str, Any], name: str | None, received_at: float) -> None:
    kind = event["type"]
    if event.get("sequence_number") != transcript.response_events:
        transcript.sequence_errors += 1
    transcript.response_events += 1
    transcript.last_event_type = kind
    if name is not None and name != kind:
        transcript.event_name_mismatches += 1
    if kind == "error":
        transcript.errors.append(orjson.dumps(event).decode())
        return
    if isinstance(event.get("item_id"), str):
        transcript.completion_ids.add(event["item_id"])
    if kind == "response.output_text.delta":
        delta = event.get("delta")
        if isinstance(delta, str) and delta:
            transcript.content_times.append(received_at)
            transcript.text_parts.append(delta)
        return
    item = event.get("item")
    if isinstance(item, dict) and isinstance(item.get("id"), str):
        transcript.completion_ids.add(item["id"])
    response = event.get("response")
    if isinstance(response, dict):
        if isinstance(response.get("id"), str):
            transcript.completion_ids.add(response["id"])
        if kind in FINAL_EVENTS:
            transcript.final_response = response
            transcript.usage = response.get("usage")


def verification_problems(
    spec: StreamSpec, exchange: Exchange, transcript: Transcript, sse: bool, api: str = CHAT
) -> list[str]:
    """Everything wrong with one stream; empty when the text and its framing arrived intact.

    `api` is the API the stream must speak: "chat" (chat-completion chunks) or "responses"
    (Responses events). A stream the client aborted on purpose only has to be a correct beginning
    of the answer.
    """
    if exchange.error and exchange.aborted_at is None:
        return [exchange.error]
    if exchange.status != 200:
        return [f"HTTP {exchange.status}: {exchange.body[:300]!r}"]
    problems = []
    expected = spec.expected_text()
    if transcript.errors:
        problems.append(f"error in stream: {transcript.errors[0][:300]}")
    if transcript.malformed_lines:
        problems.append(f"{transcript.malformed_lines} line(s) that are not JSON objects")
    own_ids = {spec.response_id, spec.item_id} if api == RESPONSES else {spec.completion_id}
    stray_ids = transcript.completion_ids - own_ids
    if stray_ids:
        problems.append(f"chunks of another stream arrived here: {sorted(stray_ids)[:3]}")
    if api == RESPONSES:
        if transcript.sequence_errors:
            problems.append(f"{transcript.sequence_errors} event(s) whose sequence_number is not their position")
        if transcript.event_name_mismatches:
            problems.append(f"{transcript.event_name_mismatches} SSE event name(s) that are not the event's type")
    elif transcript.response_events:
        problems.append(f"{transcript.response_events} Responses event(s) in a chat completions stream")
    if exchange.aborted_at is not None:
        if not expected.startswith(transcript.text):
            problems.append("the text received before the abort is not a beginning of the answer")
        return problems
    if transcript.text != expected:
        problems.append(_text_difference(expected, transcript.text))
    if len(transcript.content_times) != spec.chunks:
        problems.append(f"{len(transcript.content_times)} content chunks, expected {spec.chunks} (dropped or merged)")
    if api == RESPONSES:
        problems += _response_end_problems(spec, transcript, sse)
        return problems
    if transcript.finish_reasons != ["stop"]:
        problems.append(f"finish_reason {transcript.finish_reasons}, expected ['stop']")
    if not transcript.usage or transcript.usage.get("completion_tokens") != spec.chunks:
        problems.append(f"usage chunk missing or wrong: {transcript.usage}")
    if sse and not transcript.done_marker:
        problems.append("no data: [DONE]")
    return problems


def _response_end_problems(spec: StreamSpec, transcript: Transcript, sse: bool) -> list[str]:
    """A Responses stream ends with `response.completed`, whose response has the usage and the text."""
    problems = []
    if transcript.last_event_type != "response.completed":
        problems.append(f"the last event is {transcript.last_event_type}, expected response.completed")
    response = transcript.final_response or {}
    usage = response.get("usage")
    if not isinstance(usage, dict) or usage.get("output_tokens") != spec.chunks:
        problems.append(f"usage missing or wrong in the final response: {usage}")
    if response and _output_text(response) != spec.expected_text():
        problems.append("the final response's output text is not the answer")
    if transcript.done_marker:
        problems.append("a data: [DONE] in a Responses stream")
    return problems


def _output_text(response: dict[str, Any]) -> str:
    return "".join(
        part.get("text", "")
        for item in response.get("output") or ()
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or ()
        if isinstance(part, dict) and part.get("type") == "output_text"
    )


def _text_difference(expected: str, received: str) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(expected, received, strict=False)) if a != b),
        min(len(expected), len(received)),
    )
    return (
        f"text differs at character {at} (expected {len(expected)} chars, got {len(received)}): "
        f"expected {expected[at : at + 40]!r}, got {received[at : at + 40]!r}"
    )
