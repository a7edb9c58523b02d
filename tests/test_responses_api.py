"""The official openai Python SDK against the site's `/v1/responses`, with a personal API key:
SDK → daphne (child process) → fake upstream speaking Responses events.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import orjson
import pytest
from django.conf import settings as django_settings
from openai import OpenAI
from openai.types.responses import Response

from streaming.models import ApiKey, UsageLimit, UsageLog
from streaming.openai_shapes import ResponseEventFactory
from streaming.upstream import upstream_user_id
from streaming.wire import SSEDecoder
from tests.fake_upstream import CITY_PARAMETERS, MID_STREAM_ERROR_MESSAGE, Reply, ScriptedToolCall, response_events
from tests.live_site import MODEL, LiveSite, v1_url, wait_for_rows

PIECES = ["Hel", "lo", " there", " — ünïcode ✓", "!"]
USAGE = (21, 9)
PAGE_URL = "/api/responses/stream"
# The events of a one-message answer of PIECES, in the order OpenAI sends them.
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * len(PIECES),
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
WEATHER_CALL = ScriptedToolCall("call_w3ather0001", "get_weather", ('{"ci', 'ty": "Par', 'is"}'))
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": CITY_PARAMETERS,
    "strict": True,
}


def sdk(site: LiveSite, key: str) -> OpenAI:
    return OpenAI(base_url=v1_url(site), api_key=key, max_retries=0, timeout=10)


def key_of(full_key: str) -> ApiKey:
    return ApiKey.objects.get(prefix=full_key.split("_")[1])


def upstream_bytes(reply: Reply, body: dict, relayed_response: dict) -> list[bytes]:
    """The SSE events the fake upstream sent for `reply`, rebuilt with the id and time the client saw."""
    factory = ResponseEventFactory(
        body["model"], request=body, id=relayed_response["id"], created_at=relayed_response["created_at"]
    )
    return [event for event in response_events(reply, factory) if event is not None]


def test_a_streamed_response_reaches_the_sdk_and_leaves_a_responses_row(live_site, fake_upstream, user, api_key):
    fake_upstream.default_reply = Reply(pieces=PIECES, usage=USAGE, cached_tokens=5, reasoning_tokens=2)
    with sdk(live_site, api_key).responses.stream(model=MODEL, input="Say hello.") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == PIECES
    assert final.output_text == "".join(PIECES)
    assert (final.usage.input_tokens, final.usage.output_tokens) == USAGE
    [row] = wait_for_rows(user)
    assert row.endpoint == UsageLog.Endpoint.RESPONSES
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("completed", *USAGE)
    assert (row.cached_tokens, row.reasoning_tokens) == (5, 2)
    assert row.upstream_response_id == final.id
    assert row.finish_reason == "completed"


def test_create_with_stream_yields_every_event_in_order_and_leaves_a_row(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=PIECES, usage=USAGE, delay=0.01))

    with sdk(live_site, api_key) as client:
        events = list(client.responses.create(model=MODEL, input="Say hello.", stream=True, user="alice@example.com"))

    assert [event.type for event in events] == TEXT_EVENTS
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(set(numbers)), "sequence numbers strictly increasing"
    lifecycle = [event.response for event in events if hasattr(event, "response")]
    assert len(lifecycle) == 3 and len({response.id for response in lifecycle}) == 1
    completed = events[-1].response
    assert completed.status == "completed" and completed.output_text == "".join(PIECES)
    sent = fake_upstream.requests[-1].json()
    assert (sent["stream"], sent["store"], sent["input"]) == (True, False, "Say hello.")
    assert sent["safety_identifier"] == upstream_user_id(user) and "user" not in sent  # the pseudonym, not the client's
    [row] = wait_for_rows(user)
    assert (row.endpoint, row.status, row.api_key) == ("responses", "completed", key_of(api_key))
    assert (row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == (*USAGE, False)
    assert row.upstream_response_id == completed.id
    assert row.time_to_first_token_ms is not None


def test_without_stream_the_answer_is_one_response_though_the_upstream_streamed(
    live_site, fake_upstream, user, api_key
):
    fake_upstream.will_reply(Reply(pieces=PIECES, usage=USAGE))

    with sdk(live_site, api_key) as client:
        response = client.responses.create(model=MODEL, input="Say hello.", instructions="Be brief.")

    assert isinstance(response, Response)
    assert (response.object, response.status, response.model) == ("response", "completed", MODEL)
    assert response.output_text == "".join(PIECES)
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == USAGE
    assert response.usage.total_tokens == sum(USAGE)
    sent = fake_upstream.requests[-1].json()
    assert sent["stream"] is True, "the relay always streams from the upstream"
    assert sent["instructions"] == "Be brief."
    [row] = wait_for_rows(user)
    assert (row.status, row.upstream_response_id, row.finish_reason) == ("completed", response.id, "completed")


def test_a_tool_call_loop_sends_the_call_and_its_output_back_verbatim(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(
        Reply(pieces=[], tool_calls=[WEATHER_CALL], usage=(30, 12)), Reply(pieces=["Sunny,", " 21 °C."])
    )
    question = {"role": "user", "content": "Weather in Paris?"}

    with sdk(live_site, api_key) as client:
        first = client.responses.create(
            model=MODEL,
            input=[question],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "name": "get_weather"},
        )
        [call] = first.output
        assert call.type == "function_call"
        assert (call.call_id, call.name, json.loads(call.arguments)) == (
            WEATHER_CALL.id,
            "get_weather",
            {"city": "Paris"},
        )
        loop = [
            question,
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 21}'},
        ]
        second = client.responses.create(model=MODEL, input=loop, tools=[WEATHER_TOOL])

    assert second.output_text == "Sunny, 21 °C."
    first_sent, second_sent = (request.json() for request in fake_upstream.requests)
    assert first_sent["tools"] == [WEATHER_TOOL]
    assert first_sent["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert second_sent["input"] == loop
    first_row, second_row = wait_for_rows(user, 2)
    assert (first_row.tool_calls, first_row.finish_reason, first_row.prompt_tokens) == (1, "completed", 30)
    assert (second_row.tool_calls, second_row.finish_reason) == (0, "completed")


def test_an_answer_cut_at_max_output_tokens_is_incomplete(live_site, fake_upstream, user, api_key):
    cut = Reply(pieces=["Once upon", " a time"], incomplete_reason="max_output_tokens")
    fake_upstream.will_reply(cut, cut)

    with sdk(live_site, api_key) as client:
        response = client.responses.create(model=MODEL, input="A long story.", max_output_tokens=10**6)
        events = list(client.responses.create(model=MODEL, input="A long story.", stream=True))

    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert response.output_text == "Once upon a time"
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "incomplete"
    # The live site reads CHAT_MAX_TOKENS from the same environment as this process.
    assert fake_upstream.requests[0].json()["max_output_tokens"] == django_settings.CHAT_MAX_TOKENS
    rows = wait_for_rows(user, 2)
    assert [(row.status, row.finish_reason) for row in rows] == [("completed", "max_output_tokens")] * 2


def test_bad_requests_and_missing_keys_are_refused_before_the_upstream(live_site, fake_upstream, user, api_key):
    image = {"type": "input_image", "image_url": "ftp://example.com/cat.png"}

    with sdk(live_site, api_key) as client:
        with pytest.raises(openai.BadRequestError) as bad_image:
            client.responses.create(model=MODEL, input=[{"role": "user", "content": [image]}], stream=True)
        with pytest.raises(openai.BadRequestError) as built_in_tool:
            client.responses.create(model=MODEL, input="Search.", tools=[{"type": "web_search"}])
        with pytest.raises(openai.BadRequestError) as stored:
            client.responses.create(model=MODEL, input="Hi", store=True)
        with pytest.raises(openai.AuthenticationError) as no_key:
            client.responses.create(model=MODEL, input="Hi", extra_headers={"Authorization": openai.omit})
    with sdk(live_site, "chp_00000000_" + "A" * 43) as stranger, pytest.raises(openai.AuthenticationError) as unknown:
        stranger.responses.create(model=MODEL, input="Hi", stream=True)

    assert bad_image.value.code == "invalid_image"
    assert "input[0].content[0].image_url" in bad_image.value.message
    assert built_in_tool.value.code == "parameter_not_allowed"
    assert "tools[0].type" in built_in_tool.value.message
    assert "CHAT_RESPONSES_TOOL_TYPES" in built_in_tool.value.message
    assert stored.value.code == "parameter_not_allowed" and "CHAT_ALLOW_STORE" in stored.value.message
    assert (no_key.value.code, unknown.value.code) == ("missing_api_key", "invalid_api_key")
    assert fake_upstream.requests == []
    assert not UsageLog.objects.filter(user=user).exists()


@pytest.mark.parametrize(
    ("reply", "code", "message"),
    [
        (Reply(pieces=["one", " two", " three"], error_after=2), "upstream_stream_error", MID_STREAM_ERROR_MESSAGE),
        (Reply(pieces=["one", " two", " three"], drop_after=2, delay=0.02), "upstream_connection_lost", "lost"),
        (Reply(pieces=["one", " two", " three"], pause_before={6: 3.0}), "upstream_timeout", "stopped sending"),
    ],
    ids=["error-event", "dropped", "idle-timeout"],
)
def test_a_failure_mid_stream_ends_it_with_one_error_event(
    live_site, fake_upstream, user, api_key, reply, code, message
):
    fake_upstream.will_reply(reply)

    with sdk(live_site, api_key) as client, client.responses.stream(model=MODEL, input="Count.") as stream:
        events = list(stream)
        with pytest.raises(RuntimeError, match="response.completed"):
            stream.get_final_response()

    *before, error = events
    assert [event.delta for event in before if event.type == "response.output_text.delta"] == ["one", " two"]
    assert error.type == "error"
    assert (error.code, error.param) == (code, None)
    assert message in error.message
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(set(numbers)), "the relay's error event is numbered after the events before it"
    [row] = wait_for_rows(user)
    assert (row.endpoint, row.status) == ("responses", "error")
    assert message in row.error_message


def test_an_upstream_that_never_answers_gets_a_stream_of_one_error_event(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(hang=True))

    with sdk(live_site, api_key) as client:
        events = list(client.responses.create(model=MODEL, input="Hi", stream=True))

    # The relay committed to a 200 at the first keepalive (0.5 s), so the timeout is an event.
    [error] = events
    assert (error.type, error.code, error.sequence_number) == ("error", "upstream_timeout", 0)
    assert "did not start answering" in error.message
    assert fake_upstream.wait_for_closed_stream().client_closed_at is not None
    [row] = wait_for_rows(user)
    assert (row.status, row.tokens_estimated, row.upstream_response_id) == ("error", True, "")


def test_a_failed_response_is_relayed_as_is_and_recorded_as_an_error(live_site, fake_upstream, user, api_key):
    failing = Reply(pieces=["one", " two"], fail_after=1)
    fake_upstream.will_reply(failing, failing)

    with sdk(live_site, api_key) as client:
        events = list(client.responses.create(model=MODEL, input="Count.", stream=True))
        with pytest.raises(openai.InternalServerError) as failed:
            client.responses.create(model=MODEL, input="Count.")

    last = events[-1]
    assert last.type == "response.failed", "the stream ends with the upstream's own event, no error after it"
    assert last.response.status == "failed" and last.response.error.message == MID_STREAM_ERROR_MESSAGE
    assert (failed.value.status_code, failed.value.code) == (502, "upstream_stream_error")
    assert MID_STREAM_ERROR_MESSAGE in failed.value.message
    rows = wait_for_rows(user, 2)
    assert [(row.status, row.finish_reason) for row in rows] == [("error", "failed")] * 2
    assert rows[0].error_message == MID_STREAM_ERROR_MESSAGE
    assert rows[0].upstream_response_id == last.response.id


def test_closing_the_stream_mid_answer_closes_the_upstream_and_logs_cancelled(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=[f"word{i} " for i in range(50)], delay=0.05))

    with sdk(live_site, api_key) as client:
        with client.responses.create(model=MODEL, input="Talk.", stream=True) as stream:
            deltas = []
            for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
                if len(deltas) == 3:
                    break
        closed_at = time.monotonic()

    record = fake_upstream.wait_for_closed_stream()
    [row] = wait_for_rows(user)
    assert record.client_closed_at is not None
    assert record.client_closed_at - closed_at < 1.0
    assert len(record.content_sent_at) < 20, "the upstream kept streaming after the client left"
    assert (row.status, row.endpoint, row.api_key) == ("cancelled", "responses", key_of(api_key))
    assert row.tokens_estimated and row.completion_tokens >= 3
    assert row.upstream_response_id.startswith("resp_")


def test_the_page_endpoint_relays_the_upstreams_events_as_ndjson_or_sse(site_client, fake_upstream, user):
    reply = Reply(pieces=PIECES, usage=USAGE)
    fake_upstream.will_reply(reply, reply)

    ndjson = site_client.post(PAGE_URL, json={"input": "Say hello."})
    ndjson_sent = fake_upstream.requests[-1].json()
    sse = site_client.post(PAGE_URL, json={"input": "Say hello."}, headers={"Accept": "text/event-stream"})
    sse_sent = fake_upstream.requests[-1].json()

    assert ndjson.status_code == 200 and ndjson.headers["content-type"].startswith("application/x-ndjson")
    lines = [line for line in ndjson.content.split(b"\n") if line]
    events = [orjson.loads(line) for line in lines]
    assert [event["type"] for event in events] == TEXT_EVENTS
    # Each line is the upstream event's own JSON, byte for byte.
    upstream = [
        event.data for event in SSEDecoder().feed(b"".join(upstream_bytes(reply, ndjson_sent, events[0]["response"])))
    ]
    assert lines == upstream
    assert sse.status_code == 200 and sse.headers["content-type"].startswith("text/event-stream")
    relayed = list(SSEDecoder().feed(sse.content))
    first = orjson.loads(relayed[0].data)["response"]
    assert sse.content.replace(b": ping\n\n", b"") == b"".join(upstream_bytes(reply, sse_sent, first))
    assert [event.event for event in relayed] == TEXT_EVENTS
    rows = wait_for_rows(user, 2)
    assert [(row.endpoint, row.status, row.api_key) for row in rows] == [("responses", "completed", None)] * 2


def test_the_page_endpoint_refuses_a_non_stream_a_stranger_and_a_missing_csrf_token(
    live_site, site_client, fake_upstream, user
):
    not_streamed = site_client.post(PAGE_URL, json={"input": "Hi", "stream": False})
    no_csrf = site_client.post(PAGE_URL, json={"input": "Hi"}, headers={"X-CSRFToken": ""})
    with httpx.Client(base_url=live_site.url, timeout=10) as stranger:
        no_session = stranger.post(PAGE_URL, json={"input": "Hi"})

    assert (not_streamed.status_code, not_streamed.json()["error"]["code"]) == (400, "stream_required")
    assert "/v1/responses" in not_streamed.json()["error"]["message"]
    assert (no_csrf.status_code, no_csrf.json()["error"]["code"]) == (403, "csrf_failed")
    assert (no_session.status_code, no_session.json()["error"]["code"]) == (401, "not_authenticated")
    assert fake_upstream.requests == []


def test_the_per_user_rate_limit_applies_to_responses(live_site, fake_upstream, user, api_key):
    # The site caches a user's limits for a minute from their first request: set them before it.
    UsageLimit.objects.create(user=user, requests_per_minute=1)

    with sdk(live_site, api_key) as client:
        client.responses.create(model=MODEL, input="Hi")
        with pytest.raises(openai.RateLimitError) as refused:
            client.responses.create(model=MODEL, input="Hi", stream=True)

    assert (refused.value.status_code, refused.value.code) == (429, "requests_per_minute")
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    assert len(fake_upstream.requests) == 1
