"""The official openai Python SDK against the site's /v1: SDK → daphne (child process) → fake upstream.

Each test gives the SDK (sync or async) the site's `/v1` as its base URL and a personal API key,
scripts the fake upstream's reply, and checks what a program using the SDK gets: text, objects,
exception classes, and the usage rows the request left, each naming the key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import openai
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from streaming.api_keys import create_api_key, revoke_api_key
from streaming.models import ApiKey, UsageLimit, UsageLog
from tests.fake_upstream import Reply, ScriptedToolCall
from tests.live_site import (
    MODEL,
    OTHER_MODEL,
    STREAM_URL,
    LiveSite,
    await_rows,
    readme_code_blocks,
    v1_url,
    wait_for_rows,
)

PIECES = ["Hel", "lo", " there", " — ünïcode ✓", "!"]
USAGE = (21, 9)
MESSAGES = [{"role": "user", "content": "Say hello."}]
WEATHER_CALL = ScriptedToolCall("call_w3ather0001", "get_weather", ('{"ci', 'ty": "Par', 'is"}'))
TIME_CALL = ScriptedToolCall("call_t1me000002", "get_local_time", ('{"city"', ': "Lyon"', "}"))


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str


class GetLocalTime(BaseModel):
    """The time in a city."""

    city: str


class Weather(BaseModel):
    city: str
    temperature_c: float
    sunny: bool


def sdk(site: LiveSite, key: str) -> OpenAI:
    """The SDK as a script sets it up, except that it never retries (a retry would hide a 429 or a 5xx)."""
    return OpenAI(base_url=v1_url(site), api_key=key, max_retries=0, timeout=10)


def async_sdk(site: LiveSite, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=v1_url(site), api_key=key, max_retries=0, timeout=10)


def key_of(full_key: str) -> ApiKey:
    return ApiKey.objects.get(prefix=full_key.split("_")[1])


def content_deltas(chunks) -> list[str]:
    return [choice.delta.content for chunk in chunks for choice in chunk.choices if choice.delta.content]


def read_content(stream, *, into: list[str]) -> None:
    """Append each content delta of a stream to `into` as it arrives (so what came before an error is kept)."""
    for chunk in stream:
        into += content_deltas([chunk])


def tool(model: type[BaseModel], name: str) -> openai.types.chat.ChatCompletionFunctionToolParam:
    return openai.pydantic_function_tool(model, name=name)


# --- Streaming -------------------------------------------------------------------------------


def test_a_streamed_answer_arrives_chunk_by_chunk_without_usage_unless_asked(live_site, fake_upstream, user, api_key):
    pace = 0.05
    fake_upstream.will_reply(Reply(pieces=PIECES, delay=pace, usage=USAGE))

    with sdk(live_site, api_key) as client:
        chunks, arrived = [], []
        for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            chunks.append(chunk)
            arrived += [time.monotonic()] if content_deltas([chunk]) else []

    assert content_deltas(chunks) == PIECES
    # Each piece as the upstream sent it (`pace` apart), not all together at the end.
    assert arrived[-1] - arrived[0] >= pace * (len(PIECES) - 1) / 2
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)
    assert {chunk.model for chunk in chunks} == {MODEL}
    # The relay asked the upstream for usage anyway: the row has the upstream's numbers.
    [row] = wait_for_rows(user)
    assert (row.status, row.api_key, row.prompt_tokens, row.completion_tokens) == ("completed", key_of(api_key), *USAGE)
    assert not row.tokens_estimated


def test_a_stream_that_asks_for_usage_ends_with_the_upstreams_usage_chunk(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=PIECES, usage=USAGE))

    with sdk(live_site, api_key) as client:
        stream = client.chat.completions.create(
            model=OTHER_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)

    *answer, last = chunks
    assert content_deltas(answer) == PIECES
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (*USAGE, sum(USAGE))
    assert fake_upstream.requests[-1].json()["model"] == OTHER_MODEL
    assert wait_for_rows(user)[0].api_key == key_of(api_key)


async def test_the_async_client_streams_the_answer_and_its_usage(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=PIECES, delay=0.02, usage=USAGE))

    async with async_sdk(live_site, api_key) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        pieces, usage = [], None
        async for chunk in stream:
            pieces += content_deltas([chunk])
            usage = chunk.usage or usage

    assert pieces == PIECES
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == USAGE
    [row] = await await_rows(user)
    assert row.status == "completed" and row.api_key.prefix == api_key.split("_")[1]


# --- One object ------------------------------------------------------------------------------


def test_without_stream_the_answer_is_one_chat_completion(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=PIECES, usage=USAGE))

    with sdk(live_site, api_key) as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion" and completion.model == MODEL
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "".join(PIECES)
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == USAGE
    assert completion.usage.total_tokens == sum(USAGE)
    [row] = wait_for_rows(user)
    assert (row.status, row.api_key, row.finish_reason) == ("completed", key_of(api_key), "stop")


async def test_the_async_client_gets_one_chat_completion(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=PIECES, usage=USAGE))

    async with async_sdk(live_site, api_key) as client:
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert completion.choices[0].message.content == "".join(PIECES)
    assert completion.usage is not None and completion.usage.completion_tokens == USAGE[1]


@pytest.mark.parametrize("whole", [False, True], ids=["streamed-in-pieces", "whole-in-one-delta"])
def test_tool_calls_come_back_reassembled_in_the_message(live_site, fake_upstream, user, api_key, whole):
    fake_upstream.will_reply(Reply(pieces=[], tool_calls=[WEATHER_CALL, TIME_CALL], whole_tool_calls=whole))

    with sdk(live_site, api_key) as client:
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather in Paris, time in Lyon?"}],
            tools=[tool(GetWeather, "get_weather"), tool(GetLocalTime, "get_local_time")],
        )

    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None  # a tool-call-only answer, as OpenAI sends it
    calls = [call.model_dump(exclude_none=True) for call in choice.message.tool_calls or []]
    assert calls == [WEATHER_CALL.as_message_tool_call(), TIME_CALL.as_message_tool_call()]
    [row] = wait_for_rows(user)
    assert (row.finish_reason, row.tool_calls, row.api_key) == ("tool_calls", 2, key_of(api_key))


def test_the_stream_helper_reassembles_streamed_tool_calls(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=[], tool_calls=[WEATHER_CALL, TIME_CALL], delay=0.01))

    with (
        sdk(live_site, api_key) as client,
        client.chat.completions.stream(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather in Paris, time in Lyon?"}],
            tools=[tool(GetWeather, "get_weather"), tool(GetLocalTime, "get_local_time")],
        ) as stream,
    ):
        done = [
            (event.name, event.parsed_arguments)
            for event in stream
            if event.type == "tool_calls.function.arguments.done"
        ]
        completion = stream.get_final_completion()

    assert done == [("get_weather", GetWeather(city="Paris")), ("get_local_time", GetLocalTime(city="Lyon"))]
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(call.id, call.function.name, call.function.arguments) for call in calls] == [
        (WEATHER_CALL.id, WEATHER_CALL.name, WEATHER_CALL.arguments),
        (TIME_CALL.id, TIME_CALL.name, TIME_CALL.arguments),
    ]
    assert calls[0].function.parsed_arguments == GetWeather(city="Paris")
    assert wait_for_rows(user)[0].api_key == key_of(api_key)


def test_parse_returns_the_answer_as_the_pydantic_model(live_site, fake_upstream, user, api_key):
    text = Weather(city="Paris", temperature_c=21.5, sunny=True).model_dump_json()
    fake_upstream.will_reply(Reply(pieces=[text[:10], text[10:25], text[25:]]))

    with sdk(live_site, api_key) as client:
        completion = client.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], response_format=Weather
        )

    assert completion.choices[0].message.parsed == Weather(city="Paris", temperature_c=21.5, sunny=True)
    sent = fake_upstream.requests[-1].json()["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Weather"


# --- Models and unknown paths ----------------------------------------------------------------


def test_models_lists_the_sites_models_and_retrieves_one(live_site, api_key):
    with sdk(live_site, api_key) as client:
        listed = client.models.list()
        retrieved = client.models.retrieve(OTHER_MODEL)
        with pytest.raises(openai.NotFoundError) as unknown:
            client.models.retrieve("gpt-no-such-model")

    assert [model.id for model in listed] == [MODEL, OTHER_MODEL]
    assert retrieved.id == OTHER_MODEL and retrieved.object == "model"
    assert unknown.value.code == "model_not_found"
    assert "gpt-no-such-model" in unknown.value.message


def test_an_unknown_v1_path_is_a_not_found_error(live_site, api_key):
    with sdk(live_site, api_key) as client, pytest.raises(openai.NotFoundError) as refused:
        client.get("/nope", cast_to=object)

    assert refused.value.status_code == 404
    assert refused.value.code == "not_found"


# --- Refusals --------------------------------------------------------------------------------


def test_a_bad_field_is_a_bad_request_error_naming_its_path(live_site, fake_upstream, user, api_key):
    image = {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.png"}}

    with sdk(live_site, api_key) as client:
        with pytest.raises(openai.BadRequestError) as bad_image:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [image]}])
        with pytest.raises(openai.BadRequestError) as bad_temperature:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5, stream=True)

    assert "messages[0].content[0].image_url.url" in bad_image.value.message
    assert bad_image.value.code == "invalid_image"
    assert "temperature" in bad_temperature.value.message
    assert bad_temperature.value.code == "invalid_temperature"
    assert fake_upstream.requests == []
    assert not UsageLog.objects.filter(user=user).exists()


@pytest.mark.parametrize(
    "key",
    ["sk-not-a-site-key", "chp_00000000_" + "A" * 43, "chp_deadbeef"],
    ids=["foreign", "unknown", "malformed"],
)
def test_a_wrong_key_is_an_authentication_error(live_site, fake_upstream, key):
    with sdk(live_site, key) as client, pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)

    assert refused.value.code == "invalid_api_key"
    assert key not in refused.value.message
    assert fake_upstream.requests == []


def test_a_revoked_key_stops_working_at_once(live_site, fake_upstream, user, api_key):
    with sdk(live_site, api_key) as client:
        assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
        assert [model.id for model in client.models.list()] == [MODEL, OTHER_MODEL]

        revoke_api_key(key_of(api_key))

        with pytest.raises(openai.AuthenticationError) as chat:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        with pytest.raises(openai.AuthenticationError) as models:
            client.models.list()

    assert chat.value.code == models.value.code == "api_key_revoked"
    assert len(fake_upstream.requests) == 1
    assert UsageLog.objects.filter(user=user).count() == 1


def test_an_expired_key_is_an_authentication_error(live_site, user):
    full_key = create_api_key(user=user, name="expired", expires_at=timezone.now() - timedelta(seconds=1))[1]

    with sdk(live_site, full_key) as client, pytest.raises(openai.AuthenticationError) as refused:
        client.models.list()

    assert refused.value.code == "api_key_expired"


def test_a_session_cookie_alone_gets_401_on_v1(site_client, fake_upstream):
    """`site_client` is a browser's session (`logged_in_client`): the page's API serves it, /v1 does not."""
    assert site_client.post(STREAM_URL, json={"messages": MESSAGES}).status_code == 200
    chat = site_client.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "stream": True})
    models = site_client.get("/v1/models")

    assert chat.status_code == models.status_code == 401
    assert chat.json()["error"]["code"] == models.json()["error"]["code"] == "missing_api_key"
    assert chat.json()["error"]["type"] == "authentication_error"
    assert len(fake_upstream.requests) == 1, "the /v1 request reached the upstream"


def test_a_per_user_rate_limit_is_a_rate_limit_error_with_retry_after(live_site, fake_upstream, user, api_key):
    # The site caches a user's limits for a minute from their first request: set them before it.
    UsageLimit.objects.create(user=user, requests_per_minute=1)

    with sdk(live_site, api_key) as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert refused.value.status_code == 429
    assert refused.value.code == "requests_per_minute"
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    assert len(fake_upstream.requests) == 1


def test_the_page_and_the_key_share_one_rate_window(live_site, site_client, fake_upstream, user, api_key):
    UsageLimit.objects.create(user=user, requests_per_minute=2)

    with sdk(live_site, api_key) as client:
        assert site_client.post(STREAM_URL, json={"messages": MESSAGES}).status_code == 200
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        page_refusal = site_client.post(STREAM_URL, json={"messages": MESSAGES})

    assert page_refusal.status_code == 429 and page_refusal.json()["error"]["code"] == "requests_per_minute"
    rows = wait_for_rows(user, 2)
    assert [row.api_key for row in rows] == [None, key_of(api_key)]


def test_the_page_and_the_key_share_one_token_budget(live_site, site_client, fake_upstream, user, api_key):
    UsageLimit.objects.create(user=user, daily_token_budget=100)
    fake_upstream.default_reply = Reply(usage=USAGE)

    with sdk(live_site, api_key) as client:
        # Each request's worst case (a 7-token prompt estimate + its max_tokens) fits the budget alone.
        assert site_client.post(STREAM_URL, json={"messages": MESSAGES, "max_tokens": 50}).status_code == 200
        wait_for_rows(user)
        with pytest.raises(openai.RateLimitError) as refused:  # but not beside the page's 30 tokens
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=80)

    assert refused.value.code == "daily_token_budget"
    assert int(refused.value.response.headers["retry-after"]) > 0


def test_the_page_and_the_key_share_one_set_of_stream_slots(live_site, site_client, fake_upstream, user, api_key):
    UsageLimit.objects.create(user=user, concurrent_streams=1)
    fake_upstream.will_reply(Reply(pieces=[f"word{i} " for i in range(50)], delay=0.1))

    with site_client.stream("POST", STREAM_URL, json={"messages": MESSAGES}) as page_stream:
        assert page_stream.status_code == 200
        lines = page_stream.iter_lines()  # kept: dropping the iterator would close the stream
        next(line for line in lines if '"content":"word' in line)
        with sdk(live_site, api_key) as client, pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)

    assert refused.value.code == "concurrent_streams"
    assert refused.value.response.headers["retry-after"] == "5"
    assert len(fake_upstream.requests) == 1


def test_a_request_with_the_key_shows_as_its_last_use(live_site, fake_upstream, user, api_key):
    assert key_of(api_key).last_used_at is None

    with sdk(live_site, api_key) as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    deadline = time.monotonic() + 5
    while key_of(api_key).last_used_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert key_of(api_key).last_used_at is not None


# --- Failures and disconnects ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(status=500), "upstream_status_500"),
        (Reply(pieces=["one", " two"], error_after=1), "upstream_stream_error"),
    ],
    ids=["refused", "failed-mid-answer"],
)
def test_an_upstream_failure_without_stream_is_an_internal_server_error(
    live_site, fake_upstream, user, api_key, reply, code
):
    fake_upstream.will_reply(reply)

    with sdk(live_site, api_key) as client, pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert failed.value.status_code == 502
    assert failed.value.code == code
    [row] = wait_for_rows(user)
    assert (row.status, row.api_key) == ("error", key_of(api_key))


def test_an_upstream_failure_mid_stream_raises_an_api_error(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=["one", " two", " three"], error_after=2, delay=0.02))
    received = []

    with sdk(live_site, api_key) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError) as failed:
            read_content(stream, into=received)

    assert not isinstance(failed.value, openai.APIStatusError), "the stream had begun: there is no status to give"
    assert "The model crashed mid-answer." in failed.value.message
    assert received == ["one", " two"]
    [row] = wait_for_rows(user)
    assert (row.status, row.api_key) == ("error", key_of(api_key))


async def test_the_async_client_raises_an_api_error_mid_stream(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=["one", " two", " three"], error_after=1))

    async with async_sdk(live_site, api_key) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="crashed mid-answer"):
            async for _chunk in stream:
                pass


async def test_the_async_client_raises_the_same_refusals(live_site, fake_upstream, user, api_key):
    async with async_sdk(live_site, api_key) as client, async_sdk(live_site, "chp_00000000_" + "A" * 43) as stranger:
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-no-such-model")
        with pytest.raises(openai.BadRequestError, match="top_p"):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, top_p=3)
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert [model.id async for model in client.models.list()] == [MODEL, OTHER_MODEL]


def test_closing_the_stream_mid_answer_closes_the_upstream_and_logs_cancelled(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=[f"word{i} " for i in range(100)], delay=0.1))

    with sdk(live_site, api_key) as client:
        with client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
            received = []
            for chunk in stream:
                received += content_deltas([chunk])
                if len(received) == 2:
                    break
        closed_at = time.monotonic()

        record = fake_upstream.wait_for_closed_stream()
        [row] = wait_for_rows(user)

    assert record.client_closed_at is not None
    assert record.client_closed_at - closed_at < 1.0
    assert record.events_sent < 20, "the upstream kept streaming after the client left"
    assert (row.status, row.api_key) == ("cancelled", key_of(api_key))
    assert row.tokens_estimated and row.completion_tokens >= 2


async def test_an_async_client_leaving_mid_answer_cancels_the_upstream(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=[f"word{i} " for i in range(100)], delay=0.1))

    async with async_sdk(live_site, api_key) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        async for chunk in stream:
            if content_deltas([chunk]):
                break
        await stream.close()
        closed_at = time.monotonic()

    record = await sync_to_async(fake_upstream.wait_for_closed_stream)()
    [row] = await await_rows(user)
    assert record.client_closed_at is not None and record.client_closed_at - closed_at < 1.0
    assert row.status == "cancelled" and row.api_key_id is not None


def test_a_raw_http_client_leaving_mid_answer_cancels_the_upstream(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=[f"word{i} " for i in range(100)], delay=0.1))
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    headers = {"Authorization": f"Bearer {api_key}"}

    with httpx.Client(base_url=live_site.url, timeout=10) as client:
        with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if '"content":"word' in line:
                    break
        closed_at = time.monotonic()

    record = fake_upstream.wait_for_closed_stream()
    [row] = wait_for_rows(user)
    assert record.client_closed_at is not None and record.client_closed_at - closed_at < 1.0
    assert (row.status, row.api_key) == ("cancelled", key_of(api_key))


# --- The key stays secret --------------------------------------------------------------------


def test_no_key_appears_in_the_sites_log(live_site, fake_upstream, user, api_key):
    revoked_key, revoked = create_api_key(user=user, name="to revoke")
    revoke_api_key(revoked_key)
    fake_upstream.will_reply(Reply(pieces=["one", " two"], error_after=1))

    with sdk(live_site, api_key) as client:
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=9)
        client.models.list()
    with sdk(live_site, revoked) as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    # The site logs a line per chat request that got past the key, naming the key by its id.
    key_id = f'"api_key_id":{key_of(api_key).pk}'
    deadline = time.monotonic() + 5
    while live_site.log().count(key_id) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    log = live_site.log()
    assert log.count(key_id) == 3
    for key in (api_key, revoked):
        secret = key.split("_", 2)[2]
        assert secret not in log, "an API key's secret appeared in the site's log"


# --- The README ------------------------------------------------------------------------------


def test_the_readmes_python_snippet_streams_an_answer_from_the_demo_model(demo_site, api_key):
    [snippet] = readme_code_blocks("## Use it from code", "python")
    env = {**os.environ, "OPENAI_BASE_URL": v1_url(demo_site), "OPENAI_API_KEY": api_key}

    result = subprocess.run(
        [sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 0, result.stderr
    assert "I am the chatproxy demo model" in result.stdout
    assert 'You wrote: "Say hello."' in result.stdout
