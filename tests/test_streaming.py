"""The relay end to end: httpx → daphne (child process) → openai SDK → fake upstream over SSE."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from streaming.models import UsageLog
from tests.fake_upstream import Reply
from tests.live_site import (
    LIVE_CONCURRENT_STREAMS,
    LIVE_KEEPALIVE_SECONDS,
    MODEL,
    OTHER_MODEL,
    STREAM_URL,
    TEST_API_KEY,
    wait_for_rows,
)

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


def ndjson_lines(response) -> list[dict]:
    return [json.loads(line) for line in response.iter_lines() if line.strip()]


def content_of(chunks: list[dict]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in chunks if "choices" in chunk for choice in chunk["choices"]
    )


def wait_for_row(user, timeout: float = 5.0) -> UsageLog:
    return wait_for_rows(user, timeout=timeout)[-1]


def test_ndjson_stream_relays_every_chunk_unchanged(site_client, fake_upstream, user):
    reply = Reply(pieces=["Hel", "lo", " there", " — ünïcode ✓"], usage=(21, 9))
    fake_upstream.will_reply(reply)

    with site_client.stream("POST", STREAM_URL, json={"messages": MESSAGES}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        chunks = ndjson_lines(response)

    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content_of(chunks) == reply.text
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 30
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == MODEL for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1

    sent = fake_upstream.requests[-1].json()
    assert sent["messages"] == MESSAGES
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    row = wait_for_row(user)
    assert (row.status, row.model) == ("completed", MODEL)
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (21, 9, 30)
    assert not row.tokens_estimated
    assert row.upstream_request_id.startswith("req_")
    assert row.time_to_first_token_ms is not None and row.duration_ms >= row.time_to_first_token_ms


def test_sse_variant_uses_openai_framing_and_ends_with_done(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["a", "b", "c"]))

    with site_client.stream(
        "POST", STREAM_URL, json={"messages": MESSAGES}, headers={"Accept": "text/event-stream"}
    ) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        body = response.read().decode()

    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: {") for event in events[:-2])
    assert content_of(chunks) == "abc"
    assert chunks[-1]["usage"]["total_tokens"] == 18
    assert wait_for_row(user).status == "completed"


def test_request_fields_reach_the_upstream(site_client, fake_upstream):
    body = {"messages": MESSAGES, "model": OTHER_MODEL, "max_tokens": 50, "temperature": 0.2}
    with site_client.stream("POST", STREAM_URL, json=body) as response:
        chunks = ndjson_lines(response)
    sent = fake_upstream.requests[-1].json()
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == (OTHER_MODEL, 50, 0.2)
    assert chunks[0]["model"] == OTHER_MODEL


def test_first_chunk_reaches_the_client_while_the_upstream_is_still_sending(site_client, fake_upstream):
    fake_upstream.will_reply(Reply(pieces=[f"t{i} " for i in range(6)], delay=0.25))

    arrivals = []
    with site_client.stream("POST", STREAM_URL, json={"messages": MESSAGES}) as response:
        for line in response.iter_lines():
            if line.strip() and content_of([json.loads(line)]):
                arrivals.append(time.monotonic())
    record = fake_upstream.streams[-1]

    assert len(arrivals) == 6
    assert arrivals[0] < record.content_sent_at[-1] - 0.5, "the first token waited for the rest of the answer"
    # Each token is passed on as it comes, not gathered: it reaches the client before the next is sent.
    for received, next_sent in zip(arrivals, record.content_sent_at[1:], strict=False):
        assert received < next_sent


def test_headers_arrive_before_the_first_token(site_client, fake_upstream):
    fake_upstream.will_reply(Reply(pieces=["late"], first_delay=0, delay=1.0))
    started = time.monotonic()
    with site_client.stream("POST", STREAM_URL, json={"messages": MESSAGES}) as response:
        headers_at = time.monotonic()
        assert response.status_code == 200
        response.read()
    assert headers_at - started < 0.8


def test_mid_stream_upstream_error_ends_with_an_error_line(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["one", " two", " three"], error_after=2))

    with site_client.stream("POST", STREAM_URL, json={"messages": MESSAGES}) as response:
        assert response.status_code == 200
        chunks = ndjson_lines(response)

    assert content_of(chunks[:-1]) == "one two"
    error = chunks[-1]["error"]
    assert set(error) == {"message", "type", "code"}
    assert "crashed mid-answer" in error["message"] and error["type"] == "upstream_error"
    row = wait_for_row(user)
    assert row.status == "error" and "crashed mid-answer" in row.error_message
    assert row.tokens_estimated and row.completion_tokens == 2  # "one two": 7 characters


def test_mid_stream_error_in_sse_is_an_error_event_without_done(site_client, fake_upstream):
    fake_upstream.will_reply(Reply(pieces=["one", " two"], error_after=1))
    with site_client.stream(
        "POST", STREAM_URL, json={"messages": MESSAGES}, headers={"Accept": "text/event-stream"}
    ) as response:
        body = response.read().decode()
    events = [event for event in body.split("\n\n") if event]
    assert events[-1].startswith("event: error\ndata: ")
    assert json.loads(events[-1].split("data: ", 1)[1])["error"]["type"] == "upstream_error"
    assert "data: [DONE]" not in body


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(pieces=["a", "b", "c"], drop_after=2), "upstream_connection_lost"),
        (Reply(pieces=["a", "b", "c"], malformed_after=1), "upstream_malformed"),
        (Reply(pieces=["a", "b"], send_done=False, include_usage=False, drop_after=None, error_after=None), None),
    ],
    ids=["connection-dropped", "not-json", "no-done-but-finished"],
)
def test_broken_upstream_streams(site_client, fake_upstream, user, reply, code):
    fake_upstream.will_reply(reply)
    with site_client.stream("POST", STREAM_URL, json={"messages": MESSAGES}) as response:
        chunks = ndjson_lines(response)
    row = wait_for_row(user)
    if code is None:
        assert content_of(chunks) == "ab" and "error" not in chunks[-1]
        assert row.status == "completed" and row.tokens_estimated
    else:
        assert chunks[-1]["error"]["code"] == code
        assert row.status == "error"


def test_upstream_silence_mid_stream_times_out_with_an_error_line(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(hang=True))
    started = time.monotonic()
    with site_client.stream("POST", STREAM_URL, json={"messages": MESSAGES}) as response:
        chunks = ndjson_lines(response)
    assert chunks[-1]["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 5  # OPENAI_FIRST_TOKEN_TIMEOUT is 2 s on the live site
    assert wait_for_row(user).status == "error"
    assert fake_upstream.wait_for_closed_stream().client_closed_at is not None


def test_client_disconnect_closes_the_upstream_and_logs_cancelled(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=[f"word{i} " for i in range(100)], delay=0.1))

    with site_client.stream("POST", STREAM_URL, json={"messages": MESSAGES}) as response:
        received = []
        for line in response.iter_lines():
            if line.strip() and content_of([json.loads(line)]):
                received.append(line)
            if len(received) == 3:
                break
    aborted_at = time.monotonic()

    # The upstream's own thread notices the close; the row may be settled before it has.
    record = fake_upstream.wait_for_closed_stream()
    row = wait_for_row(user)
    assert row.status == "cancelled"
    assert record.client_closed_at is not None
    assert record.client_closed_at - aborted_at < 1.0
    assert record.events_sent < 20, "the upstream kept streaming after the client left"
    assert row.tokens_estimated and row.completion_tokens >= 3


def test_a_client_that_hangs_up_at_done_leaves_a_completed_row_and_frees_its_slot(site_client, fake_upstream, user):
    """The openai SDKs close the connection the moment they read `[DONE]`; Django then cancels the
    response task, perhaps while it is writing the usage row. Every such request must still be
    recorded, as completed, and give back its concurrency slot."""
    streams = LIVE_CONCURRENT_STREAMS * 3
    fake_upstream.will_reply(*[Reply(pieces=["Hi", "!"]) for _ in range(streams)])
    for _ in range(streams):
        with site_client.stream(
            "POST", STREAM_URL, json={"messages": MESSAGES}, headers={"Accept": "text/event-stream"}
        ) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    break
    assert [row.status for row in wait_for_rows(user, count=streams)] == ["completed"] * streams


def test_the_api_key_never_reaches_the_client(site_client, fake_upstream):
    page = site_client.get("/")
    with site_client.stream("POST", STREAM_URL, json={"messages": MESSAGES}) as response:
        body = response.read().decode()
    assert TEST_API_KEY not in page.text and TEST_API_KEY not in body
    assert fake_upstream.requests[-1].headers["authorization"] == f"Bearer {TEST_API_KEY}"


# --- Before the upstream answers -------------------------------------------------------------
# When the upstream has not sent its status line and headers within CHAT_KEEPALIVE_SECONDS (0.5 s
# on the live site), the site commits to the stream: a 200 and keepalives, then the upstream's
# answer, or its failure as the error line.

BODY = {"messages": MESSAGES}
SSE = {"Accept": "text/event-stream"}


def test_a_slow_upstream_gets_the_client_a_200_and_keepalives_at_once(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["Slow", " but", " here"], first_delay=1.6))
    started = time.monotonic()
    with site_client.stream("POST", STREAM_URL, json=BODY) as response:
        headers_at = time.monotonic()
        assert response.status_code == 200
        parts = response.iter_bytes()
        first = next(parts)
        first_at = time.monotonic()
        body = first + b"".join(parts)

    assert headers_at - started < LIVE_KEEPALIVE_SECONDS + 0.4, "the client waited for the upstream's headers"
    assert first.startswith(b"\n") and first_at - started < LIVE_KEEPALIVE_SECONDS + 0.4
    lines = body.decode().split("\n")
    chunks = [json.loads(line) for line in lines if line]
    before_answer = lines[: lines.index(next(line for line in lines if line))]
    assert len(before_answer) >= 2, "keepalives stopped before the upstream answered"  # 1.6 s at 0.5 s each
    assert content_of(chunks) == "Slow but here"
    assert chunks[-1]["usage"]["total_tokens"] == 18
    row = wait_for_row(user)
    assert row.status == "completed" and not row.tokens_estimated
    assert row.upstream_request_id.startswith("req_")


def test_a_slow_upstream_in_sse_gets_pings_then_the_answer(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["a", "b"], first_delay=1.2))
    with site_client.stream("POST", STREAM_URL, json=BODY, headers=SSE) as response:
        assert response.status_code == 200
        body = response.read().decode()
    assert body.startswith(": ping\n\n")
    assert body.endswith("data: [DONE]\n\n")
    assert wait_for_row(user).status == "completed"


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (
            Reply(status=429, error_message="Rate limit reached.", error_headers={"Retry-After": "7"}),
            "upstream_rate_limited",
        ),
        (Reply(status=500, error_message="The server had an error."), "upstream_status_500"),
        (Reply(status=503, error_message="The engine is overloaded."), "upstream_overloaded"),
    ],
    ids=["429", "500", "503"],
)
def test_an_upstream_refusal_after_the_commit_is_the_error_line(site_client, fake_upstream, user, reply, code):
    fake_upstream.will_reply(dataclasses.replace(reply, first_delay=1.0))
    with site_client.stream("POST", STREAM_URL, json=BODY) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())

    assert lines[0] == "", "no keepalive before the upstream's answer"
    error = json.loads(lines[-1])["error"]
    assert (error["code"], error["type"]) == (code, "upstream_error")
    assert error["message"] == f"Upstream: {reply.error_message}"
    assert all(line == "" for line in lines[:-1])  # keepalives only, then the error
    row = wait_for_row(user)
    assert row.status == "error" and row.error_message == error["message"]
    assert row.finish_reason == "" and row.completion_tokens == 0


def test_an_upstream_refusal_after_the_commit_is_an_error_event_in_sse(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(status=429, error_message="Rate limit reached.", first_delay=1.0))
    with site_client.stream("POST", STREAM_URL, json=BODY, headers=SSE) as response:
        body = response.read().decode()
    events = [event for event in body.split("\n\n") if event]
    assert events[0] == ": ping"
    assert events[-1].startswith("event: error\ndata: ")
    assert json.loads(events[-1].split("data: ", 1)[1])["error"]["code"] == "upstream_rate_limited"
    assert "[DONE]" not in body
    assert wait_for_row(user).status == "error"


def test_an_upstream_that_never_answers_times_out_as_the_error_line(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(first_delay=3.0))
    started = time.monotonic()
    with site_client.stream("POST", STREAM_URL, json=BODY) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    ended = time.monotonic()

    error = json.loads(lines[-1])["error"]
    assert error["code"] == "upstream_timeout"
    assert error["message"] == "The upstream model did not start answering in time."
    assert ended - started < 2.8  # OPENAI_FIRST_TOKEN_TIMEOUT is 2 s on the live site; the upstream takes 3
    assert wait_for_row(user).status == "error"
    record = fake_upstream.wait_for_closed_stream()
    assert record.client_closed_at is not None and record.events_sent <= 1


def test_a_client_leaving_before_the_upstream_answers_cancels_it(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["never", " read"] * 20, first_delay=1.5, delay=0.05))
    started = time.monotonic()
    with site_client.stream("POST", STREAM_URL, json=BODY) as response:
        assert response.status_code == 200
        assert next(response.iter_bytes()).startswith(b"\n")
    left_at = time.monotonic()
    assert left_at - started < 1.2

    row = wait_for_row(user)
    assert time.monotonic() - started < 1.5, "the usage row waited for the upstream to answer"
    assert row.status == "cancelled" and row.completion_tokens == 0 and row.finish_reason == ""
    record = fake_upstream.wait_for_closed_stream()
    assert record.client_closed_at is not None
    assert record.events_sent <= 1, "the upstream streamed to a request the site had closed"

    # The upstream connection slot and the stream's admission went back: the next request streams.
    fake_upstream.will_reply(Reply(pieces=["again"]))
    with site_client.stream("POST", STREAM_URL, json=BODY) as response:
        assert content_of([json.loads(line) for line in response.iter_lines() if line]) == "again"
