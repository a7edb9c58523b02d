import orjson
import pytest

from streaming.wire import SSE_DONE, NDJSONFraming, SSEDecoder, SSEEvent, SSEFraming, framing_for

CHUNK = b'{"id":"c1","choices":[{"index":0,"delta":{"content":"hi"}}]}'


def feed_all(decoder: SSEDecoder, parts: list[bytes]) -> list[SSEEvent]:
    return [event for part in parts for event in decoder.feed(part)]


def test_events_split_anywhere_are_reassembled():
    stream = b"data: " + CHUNK + b"\n\ndata: [DONE]\n\n"
    for size in (1, 2, 3, 7, 64):
        parts = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert feed_all(SSEDecoder(), parts) == [SSEEvent(CHUNK), SSEEvent(b"[DONE]")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_is_understood(newline):
    # A lone CR at the end of a read may be half a CRLF, so it only counts once the next byte is in.
    stream = b"data: " + CHUNK + newline + newline + b"data: [DONE]" + newline + newline + b":"
    for split in range(len(stream)):
        assert feed_all(SSEDecoder(), [stream[:split], stream[split:]]) == [SSEEvent(CHUNK), SSEEvent(b"[DONE]")]


def test_comments_event_names_and_multiline_data():
    stream = b': keepalive\n\nevent: error\ndata: {"a":\ndata: 1}\n\ndata:{}\n\n'
    assert feed_all(SSEDecoder(), [stream]) == [SSEEvent(b'{"a":\n1}', "error"), SSEEvent(b"{}")]


def test_an_unfinished_event_waits_for_its_end():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: " + CHUNK + b"\n") == []
    assert decoder.feed(b"\n") == [SSEEvent(CHUNK)]


def test_ndjson_relays_the_chunk_bytes_as_one_line():
    assert NDJSONFraming.chunk(CHUNK) == CHUNK + b"\n"
    assert NDJSONFraming.chunk(CHUNK, "response.created") == CHUNK + b"\n"
    line = NDJSONFraming.error({"error": {"message": "boom", "type": "upstream_error", "code": None}})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == {"error": {"message": "boom", "type": "upstream_error", "code": None}}
    assert NDJSONFraming.end(SSE_DONE) == b""


def test_sse_uses_openai_framing_and_an_error_event():
    assert SSEFraming.chunk(CHUNK) == b"data: " + CHUNK + b"\n\n"
    assert SSEFraming.chunk(CHUNK, "response.created") == b"event: response.created\ndata: " + CHUNK + b"\n\n"
    assert SSEFraming.end(SSE_DONE) == b"data: [DONE]\n\n"
    error = SSEFraming.error({"error": {"message": "boom"}})
    assert feed_all(SSEDecoder(), [error]) == [SSEEvent(b'{"error":{"message":"boom"}}', "error")]


def test_accept_header_selects_the_framing():
    assert framing_for("text/event-stream") is SSEFraming
    assert framing_for("application/x-ndjson") is NDJSONFraming
    assert framing_for("") is NDJSONFraming
