"""What a Responses stream's events mean to the relay: the accounting `ResponsesApi.observe` does
on each event (read off the wire as the relay reads it), the usage row it adds up to, and the one
`response` object `assemble_response` makes of a stream for `stream: false`.

The events are real: `ResponseEventFactory` builds them as OpenAI's API sends them, and the relay's
own `SSEDecoder` splits them.
"""

from __future__ import annotations

import orjson
import pytest
from django.contrib.auth import get_user_model

from streaming.errors import ApiError
from streaming.models import UsageLog
from streaming.openai_shapes import ResponseEventFactory, function_call_item, output_text
from streaming.responses import RESPONSES, assemble_response
from streaming.usage import StreamAccount
from streaming.wire import SSEDecoder
from tests.live_site import MODEL, TEST_API_KEY

REQUEST = {"model": MODEL, "input": "Weather in Paris?", "store": False, "max_output_tokens": 256}


def new_account() -> StreamAccount:
    # An unsaved user: the accounting and the row it builds need only its pk.
    return StreamAccount(
        user=get_user_model()(pk=1, username="alice"),
        model=MODEL,
        estimated_input_tokens=12,
        endpoint=UsageLog.Endpoint.RESPONSES,
    )


def feed(account: StreamAccount, *sse: bytes, split: int = 7) -> list[dict]:
    """Relay these SSE bytes through `observe` as the relay does (in network-sized pieces, counting
    each event); the payloads observed, up to and including one that ends the stream with an error."""
    data = b"".join(sse)
    decoder = SSEDecoder()
    seen: list[dict] = []
    for start in range(0, len(data), split):
        for event in decoder.feed(data[start : start + split]):
            payload = orjson.loads(event.data)
            assert event.event == payload["type"], "OpenAI names each event by its type"
            seen.append(payload)
            error = RESPONSES.observe(event.event, payload, account)
            if error is not None:
                raise error
            account.events += 1
    return seen


def text_answer(answer: ResponseEventFactory, pieces: list[str]) -> list[bytes]:
    """A message item of these text pieces, from `response.created` to the message's `output_item.done`."""
    return [
        answer.created(),
        answer.message_start(0, "msg_0"),
        *(answer.text_delta(0, "msg_0", piece) for piece in pieces),
        answer.message_done(0, "msg_0", "".join(pieces)),
    ]


def test_a_text_and_function_call_answer_is_accounted_from_its_events():
    answer = ResponseEventFactory(MODEL, request=REQUEST)
    account = new_account()
    arguments = '{"city": "Paris"}'

    events = feed(
        account,
        *text_answer(answer, ["Let me ", "check."]),
        answer.function_call_start(1, "fc_1", "call_1", "get_weather"),
        answer.function_call_arguments(1, "fc_1", arguments[:9]),
        answer.function_call_arguments(1, "fc_1", arguments[9:]),
        answer.function_call_done(1, "fc_1", "call_1", "get_weather", arguments),
        answer.completed(40, 18, cached_tokens=32, reasoning_tokens=6),
    )
    account.end()
    row = account.as_usage_log()

    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert account.events == len(events) == 15
    assert (row.endpoint, row.status, row.finish_reason) == ("responses", "completed", "completed")
    assert row.upstream_response_id == answer.id
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (40, 18, 58)
    assert (row.cached_tokens, row.reasoning_tokens) == (32, 6)
    assert not row.tokens_estimated
    assert row.tool_calls == 1, "one function_call item, however many argument deltas"
    # The text deltas, the call's name and its argument deltas count as output; the `done` events'
    # whole texts do not count twice.
    assert account.output_chars == len("Let me check.") + len("get_weather") + len(arguments)
    assert account.first_output_at is not None and row.time_to_first_token_ms is not None


def test_a_stream_cut_short_has_no_finish_and_estimated_tokens():
    answer = ResponseEventFactory(MODEL, request=REQUEST)
    account = new_account()

    feed(account, answer.created(), answer.message_start(0, "msg_0"), answer.text_delta(0, "msg_0", "x" * 40))

    assert not account.finished, "the relay must end such a stream with its own error event"
    assert account.response_id == answer.id, "known from response.created already"
    row = account.as_usage_log()
    assert row.tokens_estimated
    assert (row.prompt_tokens, row.completion_tokens) == (12, 10)
    assert (row.cached_tokens, row.reasoning_tokens, row.finish_reason) == (None, None, "")


def test_usage_without_token_details_records_none_for_them():
    answer = ResponseEventFactory(MODEL, request=REQUEST)
    account = new_account()
    completed = answer.response("completed", usage={"input_tokens": 5, "output_tokens": 3, "total_tokens": 8})

    feed(account, *text_answer(answer, ["Hi"]), answer.event("response.completed", response=completed))

    row = account.as_usage_log()
    assert (row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == (5, 3, False)
    assert (row.cached_tokens, row.reasoning_tokens) == (None, None)


def test_an_incomplete_response_finishes_with_its_reason_and_counts_as_completed():
    answer = ResponseEventFactory(MODEL, request=REQUEST)
    account = new_account()

    feed(account, *text_answer(answer, ["Once upon"]), answer.incomplete("max_output_tokens", 9, 256))
    account.end()

    row = account.as_usage_log()
    assert (row.status, row.finish_reason) == ("completed", "max_output_tokens")
    assert (row.prompt_tokens, row.completion_tokens) == (9, 256)


def test_a_failed_response_is_relayed_and_its_redacted_message_recorded():
    answer = ResponseEventFactory(MODEL, request=REQUEST)
    account = new_account()
    message = f"Incorrect API key provided: sk-abc***wxyz (configured {TEST_API_KEY})."

    events = feed(account, *text_answer(answer, ["Hel"]), answer.failed(message))
    account.end()

    assert events[-1]["type"] == "response.failed", "observe lets it through: the client gets it as it came"
    row = account.as_usage_log()
    assert (row.status, row.finish_reason) == ("error", "failed")
    assert row.error_message == "Incorrect API key provided: sk-[redacted] (configured [redacted])."
    assert row.upstream_response_id == answer.id


def test_an_error_event_ends_the_stream_with_the_relays_own_error_event():
    answer = ResponseEventFactory(MODEL, request=REQUEST)
    account = new_account()

    with pytest.raises(ApiError) as failed:
        feed(
            account,
            answer.created(),
            answer.message_start(0, "msg_0"),
            answer.text_delta(0, "msg_0", "Hel"),
            answer.error(f"Overloaded, key {TEST_API_KEY}", "server_error"),
            answer.text_delta(0, "msg_0", "never observed"),
        )

    error = failed.value
    assert error.code == "upstream_stream_error"
    assert TEST_API_KEY not in error.message and "Overloaded" in error.message
    assert account.events == 5, "the events relayed before the error"
    event = RESPONSES.error_event(error, account)
    assert event == {
        "type": "error",
        "code": "upstream_stream_error",
        "message": error.message,
        "param": None,
        "sequence_number": 5,  # the number of the upstream's error event it stands for
    }


def test_the_final_event_is_the_assembled_response():
    answer = ResponseEventFactory(MODEL, request=REQUEST)
    events = feed(
        new_account(),
        *text_answer(answer, ["Sunny", " in Paris."]),
        answer.function_call_start(1, "fc_1", "call_1", "get_weather"),
        answer.function_call_done(1, "fc_1", "call_1", "get_weather", "{}"),
        answer.completed(20, 5),
    )

    response = assemble_response(events)

    assert response == events[-1]["response"]
    assert (response["id"], response["object"], response["status"]) == (answer.id, "response", "completed")
    message, call = response["output"]
    assert message["content"] == [output_text("Sunny in Paris.")]
    assert call == function_call_item("fc_1", "call_1", "get_weather", "{}")
    assert response["usage"]["total_tokens"] == 25


def test_an_empty_final_output_is_filled_from_the_finished_items_in_output_order():
    answer = ResponseEventFactory(MODEL, request=REQUEST)
    first, second = function_call_item("fc_0", "call_0", "a", "{}"), function_call_item("fc_1", "call_1", "b", "{}")
    events = [
        {"type": "response.output_item.done", "output_index": 1, "item": second, "sequence_number": 3},
        {"type": "response.output_item.done", "output_index": 0, "item": first, "sequence_number": 4},
        orjson.loads(answer.incomplete("max_output_tokens", 3, 16).split(b"data: ")[1]),
    ]
    events[-1]["response"]["output"] = []

    response = assemble_response(events)

    assert response["output"] == [first, second]
    assert (response["status"], response["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})


def test_a_stream_without_a_final_event_or_with_a_failed_one_assembles_to_an_error():
    answer = ResponseEventFactory(MODEL, request=REQUEST)
    cut_short = feed(new_account(), *text_answer(answer, ["Hi"]))
    failed = [*cut_short, *feed(new_account(), answer.failed(f"Model crashed ({TEST_API_KEY})."))]

    with pytest.raises(ApiError) as incomplete:
        assemble_response(cut_short)
    with pytest.raises(ApiError) as failure:
        assemble_response(failed)

    assert (incomplete.value.status, incomplete.value.code) == (502, "upstream_incomplete")
    assert (failure.value.status, failure.value.code) == (502, "upstream_stream_error")
    assert "Model crashed" in failure.value.message and TEST_API_KEY not in failure.value.message
