"""The relay on its own, without the view: the SDK against the fake upstream, chunks in, framed bytes out."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from streaming.chat_completions import CHAT_COMPLETIONS
from streaming.errors import ApiError
from streaming.limits import Admission
from streaming.models import UsageLog
from streaming.relay import RelayStream, open_relay
from streaming.schemas.chat_completions import ChatCompletionRequest
from streaming.wire import Framing, NDJSONFraming, SSEFraming
from tests.fake_upstream import Reply
from tests.live_site import MODEL

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = ChatCompletionRequest(
    messages=[{"role": "user", "content": "Tell me a story."}], model=MODEL, max_tokens=64, temperature=None
)


@pytest.fixture
async def alice(django_user_model):
    return await django_user_model.objects.acreate_user("alice-relay", password="unused-password")


async def open_chat_stream(user, framing: Framing) -> RelayStream:
    return await open_relay(api=CHAT_COMPLETIONS, request=CHAT, user=user, framing=framing, admission=Admission())


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
