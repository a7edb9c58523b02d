"""What a client received on one stream, read after the run: chunks with times, and verification.

The same reader handles the relay's NDJSON and the upstream's own SSE (`data: {...}` events), so
a direct run and a proxied run are checked by one piece of code against the same expectation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import orjson

from bench.answers import StreamSpec
from bench.http_client import Exchange


@dataclass
class Transcript:
    content_times: list[float] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    completion_ids: set[str] = field(default_factory=set)
    finish_reasons: list[str] = field(default_factory=list)
    usage: dict | None = None
    done_marker: bool = False
    errors: list[str] = field(default_factory=list)
    malformed_lines: int = 0

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
        transcript.errors.append(line.decode("utf-8", "replace"))
        return
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


def verification_problems(spec: StreamSpec, exchange: Exchange, transcript: Transcript, sse: bool) -> list[str]:
    """Everything wrong with one stream; empty when the text and its framing arrived intact.

    A stream the client aborted on purpose only has to be a correct beginning of the answer.
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
    stray_ids = transcript.completion_ids - {spec.completion_id}
    if stray_ids:
        problems.append(f"chunks of another stream arrived here: {sorted(stray_ids)[:3]}")
    if exchange.aborted_at is not None:
        if not expected.startswith(transcript.text):
            problems.append("the text received before the abort is not a beginning of the answer")
        return problems
    if transcript.text != expected:
        problems.append(_text_difference(expected, transcript.text))
    if len(transcript.content_times) != spec.chunks:
        problems.append(f"{len(transcript.content_times)} content chunks, expected {spec.chunks} (dropped or merged)")
    if transcript.finish_reasons != ["stop"]:
        problems.append(f"finish_reason {transcript.finish_reasons}, expected ['stop']")
    if not transcript.usage or transcript.usage.get("completion_tokens") != spec.chunks:
        problems.append(f"usage chunk missing or wrong: {transcript.usage}")
    if sse and not transcript.done_marker:
        problems.append("no data: [DONE]")
    return problems


def _text_difference(expected: str, received: str) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(expected, received, strict=False)) if a != b),
        min(len(expected), len(received)),
    )
    return (
        f"text differs at character {at} (expected {len(expected)} chars, got {len(received)}): "
        f"expected {expected[at : at + 40]!r}, got {received[at : at + 40]!r}"
    )
