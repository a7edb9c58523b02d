"""Opening an upstream stream: the relay sends the SDK's first attempt itself, and the SDK keeps
its errors and retries (the fake upstream on a loopback socket sees every request)."""

from __future__ import annotations

import contextlib

import openai
import pytest

from streaming.chat_completions import CHAT_COMPLETIONS
from streaming.upstream import get_upstream
from tests.fake_upstream import Reply
from tests.live_site import MODEL

PARAMS = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
# Headers that may differ between two sends of one request: the attempt's number, and the
# connection's own (httpx2 says `Connection: keep-alive`, which HTTP/1.1 means without it).
PER_ATTEMPT_HEADERS = {"x-stainless-retry-count", "content-length", "host", "connection"}


async def read_stream() -> tuple[bytes, str]:
    async with contextlib.AsyncExitStack() as cleanup:
        body, request_id = await get_upstream().open_stream(CHAT_COMPLETIONS, PARAMS, cleanup)
        data = b""
        while chunk := await body.read():
            data += chunk
    return data, request_id


async def test_a_stream_is_one_request_with_the_sdks_headers(fake_upstream):
    data, request_id = await read_stream()
    assert b'"content":"Hello"' in data and data.endswith(b"data: [DONE]\n\n")
    assert request_id.startswith("req_")
    [request] = fake_upstream.requests
    assert request.path == "/v1/chat/completions"
    assert request.json() == {**PARAMS, "stream": True, "stream_options": {"include_usage": True}}
    headers = request.headers
    assert headers["authorization"] == f"Bearer {fake_upstream.api_key}"
    assert headers["user-agent"] == f"AsyncOpenAI/Python {openai.__version__}"
    assert (headers["x-stainless-retry-count"], headers["accept-encoding"]) == ("0", "identity")


async def test_a_retried_failure_is_the_sdks_retry_of_the_same_request(fake_upstream, settings):
    settings.OPENAI_MAX_RETRIES = 1
    fake_upstream.will_reply(Reply(status=500, error_message="try again", error_headers={"retry-after-ms": "10"}))
    data, _ = await read_stream()
    assert b'"content":"Hello"' in data
    first, retry = fake_upstream.requests
    assert (first.headers["x-stainless-retry-count"], retry.headers["x-stainless-retry-count"]) == ("0", "1")
    # The relay's own first attempt sent what the SDK sends: the same body, the same headers.
    assert first.json() == retry.json()
    assert {k: v for k, v in first.headers.items() if k not in PER_ATTEMPT_HEADERS} == {
        k: v for k, v in retry.headers.items() if k not in PER_ATTEMPT_HEADERS
    }


async def test_without_retries_a_refusal_reaches_the_upstream_once_and_is_the_sdks_error(fake_upstream):
    fake_upstream.will_reply(Reply(status=429, error_message="Slow down.", error_headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as raised:
        await read_stream()
    assert raised.value.status_code == 429 and "Slow down." in raised.value.message
    assert raised.value.response.headers["retry-after"] == "7"
    assert len(fake_upstream.requests) == 1


async def test_retries_are_spent_then_the_last_error_is_raised(fake_upstream, settings):
    settings.OPENAI_MAX_RETRIES = 2
    fake_upstream.will_reply(
        *[Reply(status=503, error_message=f"busy {n}", error_headers={"retry-after-ms": "10"}) for n in range(3)]
    )
    with pytest.raises(openai.InternalServerError) as raised:
        await read_stream()
    assert "busy 2" in raised.value.message
    assert [r.headers["x-stainless-retry-count"] for r in fake_upstream.requests] == ["0", "1", "2"]


async def test_an_unreachable_upstream_is_the_sdks_connection_error(settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
    with pytest.raises(openai.APIConnectionError):
        await read_stream()


async def test_a_proxy_from_the_environment_carries_the_request(fake_upstream, settings, monkeypatch):
    settings.OPENAI_BASE_URL = "http://upstream.example/v1"
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{fake_upstream.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    data, _ = await read_stream()
    assert b'"content":"Hello"' in data
    assert fake_upstream.requests[-1].path == "http://upstream.example/v1/chat/completions"
