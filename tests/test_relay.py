"""The relay on its own, without the view: the SDK against the fake upstream, chunks in, framed bytes out."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import orjson
import pytest
from asgiref.sync import sync_to_async

from streaming import relay
from streaming.chat_completions import CHAT_COMPLETIONS
from streaming.errors import ApiError
from streaming.fronts import Caller
from streaming.limits import Admission
from streaming.models import UsageLog
from streaming.openai_shapes import ChunkFactory
from streaming.relay import RelayStream, open_relay
from streaming.schemas.chat_completions import ChatCompletionRequest
from streaming.usage import StreamAccount, estimate_tokens, open_usage_row
from streaming.wire import Framing, NDJSONFraming, SSEFraming
from tests.fake_upstream import Reply, ScriptedToolCall
from tests.live_site import MODEL

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = ChatCompletionRequest(
    messages=[{"role": "user", "content": "Tell me a story."}], model=MODEL, max_tokens=64, temperature=None
)


@pytest.fixture
async def alice(django_user_model):
    return await django_user_model.objects.acreate_user("alice-relay", password="unused-password")


async def open_chat_stream(user, framing: Framing) -> RelayStream:
    return await open_relay(
        api=CHAT_COMPLETIONS, request=CHAT, caller=Caller(user=user), framing=framing, admission=Admission()
    )


async def collect(stream) -> bytes:
    return b"".join([part async for part in stream])


async def test_relays_upstream_chunks_byte_for_byte_as_ndjson(alice, fake_upstream):
    fake_upstream.will_reply(Reply(pieces=["Once", " upon", " a time"], usage=(5, 3)))
    stream = await open_chat_stream(alice, NDJSONFraming)
    body = await collect(stream)

    lines = body.split(b"\n")
    assert lines[-1] == b""
    chunks = [json.loads(line) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Once upon a time"
    # The bytes are the upstream's own: same key order, no re-serialisation.
    assert lines[1].startswith(b'{"id":"chatcmpl-') and b'"delta":{"content":"Once"}' in lines[1]
    row = await UsageLog.objects.aget(user=alice)
    assert (row.status, row.prompt_tokens, row.completion_tokens, row.total_tokens) == ("completed", 5, 3, 8)
    assert (row.finish_reason, row.tool_calls) == ("stop", 0)


async def test_sse_framing_ends_with_done(alice, fake_upstream):
    stream = await open_chat_stream(alice, SSEFraming)
    body = await collect(stream)
    assert body.startswith(b"data: {") and body.endswith(b"data: [DONE]\n\n")


async def test_usage_is_estimated_when_the_upstream_reports_none(alice, fake_upstream):
    fake_upstream.will_reply(Reply(pieces=["abcd" * 10], include_usage=False))
    await collect(await open_chat_stream(alice, NDJSONFraming))
    row = await UsageLog.objects.aget(user=alice)
    assert row.status == "completed" and row.tokens_estimated
    assert row.completion_tokens == 10  # 40 characters
    assert row.prompt_tokens > 0 and row.total_tokens == row.prompt_tokens + row.completion_tokens


async def test_failure_before_streaming_raises_and_logs_an_error_row(alice, fake_upstream):
    fake_upstream.will_reply(Reply(status=500, error_message="kaput"))
    with pytest.raises(ApiError) as raised:
        await open_chat_stream(alice, NDJSONFraming)
    assert raised.value.status == 502 and "kaput" in raised.value.message
    row = await UsageLog.objects.aget(user=alice)
    assert row.status == "error" and "kaput" in row.error_message


async def test_cancelling_the_consumer_closes_the_upstream_and_logs_cancelled(alice, fake_upstream):
    fake_upstream.will_reply(Reply(pieces=["tick "] * 200, delay=0.05))
    stream = await open_chat_stream(alice, NDJSONFraming)
    received = []

    async def consume():
        async for part in stream:
            received.append(part)

    task = asyncio.create_task(consume())
    deadline = time.monotonic() + 5
    while sum(part.count(b'"content":"tick') for part in received) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    record = fake_upstream.streams[-1]
    for _ in range(100):
        if record.client_closed_at is not None:
            break
        await asyncio.sleep(0.01)
    assert record.client_closed_at is not None and record.client_closed_at - cancelled_at < 0.5
    row = await UsageLog.objects.aget(user=alice)
    assert row.status == "cancelled" and row.tokens_estimated and row.completion_tokens >= 3


WEATHER = ScriptedToolCall(id="call_weather_1", name="get_weather", argument_pieces=('{"city":', ' "Paris', '"}'))
TIME = ScriptedToolCall(id="call_time_2", name="get_time", argument_pieces=('{"zone":', ' "CET"}'))


def tool_call_deltas(chunks: list[dict]) -> list[dict]:
    return [call for chunk in chunks for choice in chunk["choices"] for call in choice["delta"].get("tool_calls", [])]


@pytest.mark.parametrize("whole", [False, True], ids=["streamed-calls", "whole-calls"])
async def test_tool_calls_pass_through_and_are_counted_with_their_finish_reason(alice, fake_upstream, caplog, whole):
    fake_upstream.will_reply(Reply(pieces=[], tool_calls=[WEATHER, TIME], whole_tool_calls=whole, usage=(30, 12)))
    with caplog.at_level(logging.INFO, logger="streaming.requests"):
        body = await collect(await open_chat_stream(alice, NDJSONFraming))

    chunks = [json.loads(line) for line in body.splitlines() if line]
    deltas = tool_call_deltas(chunks)
    assert [delta["index"] for delta in deltas] == ([0, 1] if whole else [0, 0, 0, 0, 1, 1, 1])
    assert [delta["id"] for delta in deltas if "id" in delta] == ["call_weather_1", "call_time_2"]
    arguments = {0: "", 1: ""}
    for delta in deltas:
        arguments[delta["index"]] += delta["function"].get("arguments", "")
    assert arguments == {0: WEATHER.arguments, 1: TIME.arguments}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"

    row = await UsageLog.objects.aget(user=alice)
    assert (row.status, row.finish_reason, row.tool_calls) == ("completed", "tool_calls", 2)
    assert (row.completion_tokens, row.tokens_estimated) == (12, False)
    line = json.loads(next(r.getMessage() for r in caplog.records if r.name == "streaming.requests"))
    assert (line["finish_reason"], line["tool_calls"]) == ("tool_calls", 2)


async def test_an_estimate_counts_tool_call_names_and_arguments(alice, fake_upstream):
    fake_upstream.will_reply(Reply(pieces=["Let me check."], tool_calls=[WEATHER], include_usage=False))
    await collect(await open_chat_stream(alice, NDJSONFraming))
    row = await UsageLog.objects.aget(user=alice)
    generated = len("Let me check.") + len(WEATHER.name) + len(WEATHER.arguments)
    assert row.tokens_estimated and row.completion_tokens == estimate_tokens(generated)
    assert (row.finish_reason, row.tool_calls) == ("tool_calls", 1)


async def test_an_estimate_counts_refusals_and_reasoning(alice):
    chunks = ChunkFactory(MODEL)
    account = StreamAccount(user=alice, model=MODEL, estimated_input_tokens=3)
    reasoning = chunks.content("").replace(b'"content":""', b'"reasoning_content":"Thinking it over."')
    for chunk in (
        chunks.role(),
        reasoning,
        chunks.refusal("I can't help"),
        chunks.refusal(" with that."),
        chunks.finish(),
    ):
        assert CHAT_COMPLETIONS.observe(None, orjson.loads(chunk), account) is None
    row = account.as_usage_log()
    assert row.tokens_estimated and row.completion_tokens == estimate_tokens(
        len("Thinking it over.I can't help with that.")
    )
    assert (row.finish_reason, row.tool_calls) == ("stop", 0)


async def test_a_slow_upstream_is_relayed_behind_keepalives(alice, fake_upstream, settings):
    settings.CHAT_KEEPALIVE_SECONDS = 0.2
    fake_upstream.will_reply(Reply(pieces=["late", " answer"], first_delay=0.7))
    started = time.monotonic()
    stream = await open_chat_stream(alice, NDJSONFraming)
    assert time.monotonic() - started < 0.5, "open_relay waited for the upstream past the keepalive interval"
    parts = [part async for part in stream]
    assert parts[0] == b"\n"
    chunks = [json.loads(line) for line in b"".join(parts).splitlines() if line]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "late answer"
    row = await UsageLog.objects.aget(user=alice)
    assert row.status == "completed" and row.upstream_request_id.startswith("req_")


async def test_without_keepalives_a_slow_upstream_still_gets_its_http_error(alice, fake_upstream, settings):
    settings.CHAT_KEEPALIVE_SECONDS = 0
    settings.OPENAI_FIRST_TOKEN_TIMEOUT = 0.5
    fake_upstream.will_reply(Reply(first_delay=1.0))
    with pytest.raises(ApiError) as raised:
        await open_chat_stream(alice, NDJSONFraming)
    assert (raised.value.status, raised.value.code) == (504, "upstream_timeout")
    row = await UsageLog.objects.aget(user=alice)
    assert row.status == "error"


async def test_a_busy_stream_refreshes_its_row_as_it_streams(alice, fake_upstream, monkeypatch):
    """The row's sign of life (for the sweep of dead processes) comes due while chunks keep arriving."""
    monkeypatch.setattr(relay, "SLOT_REFRESH_SECONDS", 0.3)
    admission = Admission()
    row = await sync_to_async(open_usage_row)(
        user=alice, api_key=None, endpoint=UsageLog.Endpoint.CHAT_COMPLETIONS, model=MODEL, input_tokens=5,
        admission=admission,
    )  # fmt: skip
    fake_upstream.will_reply(Reply(pieces=["tick "] * 30, delay=0.05))
    stream = await open_relay(
        api=CHAT_COMPLETIONS, request=CHAT, caller=Caller(user=alice), framing=NDJSONFraming, admission=admission,
        row=row,
    )  # fmt: skip
    ticks, midway = 0, None
    async for part in stream:
        ticks += part.count(b'"content":"tick')
        if midway is None and ticks >= 20:  # about a second in, a chunk every 50 ms all along
            midway = await UsageLog.objects.aget(pk=row.pk)
    assert midway is not None and midway.status == "in_progress"
    assert midway.last_seen_at > row.last_seen_at
    assert midway.completion_tokens >= estimate_tokens(len("tick ") * 10)
    assert (await UsageLog.objects.aget(pk=row.pk)).status == "completed"
