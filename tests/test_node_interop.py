"""The official openai npm client reads the site's streams: Node → daphne (child process) → fake upstream.

Each test scripts the fake upstream's reply, then runs the test of the same name in
tests/node_interop/interop.test.mjs, which logs in over HTTP as a browser does and reads the
answer with the SDK's own readers (`ChatCompletionStream.fromReadableStream` for NDJSON,
`Stream.fromSSEResponse` for SSE; `ResponseStream.fromReadableStream` for `/api/responses/stream`).
One Node test per run keeps the order of upstream requests obvious. The npm package comes from
`npm ci` in tests/node_interop (done by .ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from streaming.models import UsageLog
from tests.fake_upstream import CITY_PARAMETERS, MID_STREAM_ERROR_MESSAGE, Reply, ScriptedToolCall
from tests.live_site import BASE_DIR, MODEL, PASSWORD, skip_or_fail, wait_for_rows

NODE_DIR = BASE_DIR / "tests" / "node_interop"
PIECES = ["Hel", "lo", " there", " — ünïcode ✓", "!"]
PACE = 0.1  # seconds between the upstream's chunks
USAGE = (21, 9)


def run_node_test(name: str, site, expected: dict, *, extra_env: dict[str, str] | None = None) -> str:
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not installed")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        skip_or_fail("the openai npm package is not installed: run `npm ci` in tests/node_interop")
    env = {
        **os.environ,
        "CHATPROXY_URL": site.url,
        "CHATPROXY_USERNAME": "alice",
        "CHATPROXY_PASSWORD": PASSWORD,
        "CHATPROXY_EXPECTED": json.dumps(expected),
        **(extra_env or {}),
    }
    command = [
        node,
        "--test",
        "--test-concurrency=1",
        "--test-reporter=tap",
        f"--test-name-pattern=^{re.escape(name)}$",
        "interop.test.mjs",
    ]
    try:
        result = subprocess.run(command, cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"the Node test did not finish in 60 s:\n{timeout.stdout}\n{timeout.stderr}")
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"the Node test failed:\n{output}"
    assert "# pass 1" in output and "# fail 0" in output, f"no Node test named {name!r} ran:\n{output}"
    return output


@pytest.mark.parametrize(
    "name",
    [
        "ndjson: ChatCompletionStream.fromReadableStream reads the answer as it streams",
        "sse: Stream.fromSSEResponse reads the answer as it streams",
    ],
)
def test_the_sdk_reads_the_answer_its_usage_and_each_delta_as_it_arrives(live_site, fake_upstream, user, name):
    fake_upstream.will_reply(Reply(pieces=PIECES, delay=PACE, usage=USAGE))
    prompt, completion = USAGE
    expected = {
        "pieces": PIECES,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        # The upstream sends the pieces PACE apart: they must arrive spread out, at least half as much.
        "min_spread_ms": int(1000 * PACE * (len(PIECES) - 1) / 2),
    }

    run_node_test(name, live_site, expected)

    assert len(fake_upstream.requests) == 1
    assert fake_upstream.requests[0].json()["messages"] == [{"role": "user", "content": "Say hello."}]


@pytest.mark.parametrize(
    "name",
    [
        "ndjson: an error line mid-stream rejects the answer with an APIError",
        "sse: an error event mid-stream throws an APIError from the Stream",
    ],
)
def test_an_error_mid_stream_reaches_the_sdk_as_an_error(live_site, fake_upstream, user, name):
    fake_upstream.will_reply(Reply(pieces=["one", " two", " three"], error_after=2, delay=0.05))

    run_node_test(name, live_site, {"pieces": ["one", " two"], "error": "The model crashed mid-answer."})

    assert len(fake_upstream.requests) == 1


WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": CITY_PARAMETERS,
            "strict": True,
        },
    }
    for name, description in [("get_weather", "The weather in a city."), ("get_local_time", "The time in a city.")]
]
WEATHER_CALL = ScriptedToolCall("call_w3ather0001", "get_weather", ('{"ci', 'ty": "Par', 'is"}'))
TIME_CALL = ScriptedToolCall("call_t1me000002", "get_local_time", ('{"city"', ': "Lyon"', "}"))


def tool_request(content: str) -> dict:
    return {"messages": [{"role": "user", "content": content}], "tools": WEATHER_TOOLS, "tool_choice": "auto"}


@pytest.mark.parametrize("whole", [False, True], ids=["streamed-in-pieces", "whole-in-one-delta"])
@pytest.mark.parametrize("calls", [[WEATHER_CALL], [WEATHER_CALL, TIME_CALL]], ids=["one-call", "two-parallel-calls"])
def test_tool_calls_reassemble_in_the_sdk_as_the_upstream_sent_them(live_site, fake_upstream, user, calls, whole):
    fake_upstream.will_reply(Reply(pieces=[], tool_calls=calls, whole_tool_calls=whole, delay=0.01))
    request = tool_request("Weather and time in Paris?")
    expected = {"request": request, "tool_calls": [call.as_message_tool_call() for call in calls]}

    run_node_test("ndjson: streamed tool calls reassemble with their ids, names and arguments", live_site, expected)

    sent = fake_upstream.requests[-1].json()
    assert sent["tools"] == WEATHER_TOOLS and sent["tool_choice"] == "auto"
    row = UsageLog.objects.get(user=user)
    assert row.status == "completed"


def test_a_tool_call_loop_sends_the_tool_result_back_and_gets_the_final_answer(live_site, fake_upstream, user):
    final = ["It is ", "14:05", " in Lyon."]
    fake_upstream.will_reply(Reply(pieces=[], tool_calls=[TIME_CALL]), Reply(pieces=final))
    request = tool_request("What time is it in Lyon?")

    run_node_test(
        "ndjson: a tool-call loop runs the tool and ends in the final answer",
        live_site,
        {"request": request, "final_text": "".join(final)},
    )

    assert len(fake_upstream.requests) == 2
    assistant, tool = fake_upstream.requests[1].json()["messages"][-2:]
    assert assistant["tool_calls"] == [TIME_CALL.as_message_tool_call()]
    assert tool == {"role": "tool", "tool_call_id": TIME_CALL.id, "content": '{"city":"Lyon","time":"14:05"}'}
    assert UsageLog.objects.filter(user=user, status="completed").count() == 2


def test_a_structured_output_answer_parses_as_json(live_site, fake_upstream, user):
    document = {"city": "Paris", "temperature_c": 21.5, "sunny": True}
    text = json.dumps(document)
    fake_upstream.will_reply(Reply(pieces=[text[:10], text[10:25], text[25:]]))
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "temperature_c": {"type": "number"}, "sunny": {"type": "boolean"}},
        "required": ["city", "temperature_c", "sunny"],
        "additionalProperties": False,
    }
    request = {
        "messages": [{"role": "user", "content": "Weather in Paris as JSON."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": schema, "strict": True},
        },
    }

    run_node_test(
        "ndjson: a structured-output answer parses as the JSON the upstream sent",
        live_site,
        {"request": request, "json": document},
    )

    assert fake_upstream.requests[-1].json()["response_format"] == request["response_format"]


# --- The Responses API: openai-node's ResponseStream against /api/responses/stream ---------------

RESPONSES_TOOLS = [
    {
        "type": "function",
        "name": tool["function"]["name"],
        "description": tool["function"]["description"],
        "parameters": tool["function"]["parameters"],
        "strict": True,
    }
    for tool in WEATHER_TOOLS
]


def responses_request(text: str = "Say hello.", **fields) -> dict:
    return {"model": MODEL, "input": text, **fields}


def function_call(call: ScriptedToolCall) -> dict:
    """A function_call item as the final response carries it (the parts the tests compare)."""
    return {"call_id": call.id, "name": call.name, "arguments": call.arguments}


def test_response_stream_reads_the_text_its_usage_and_each_delta_as_it_arrives(live_site, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=PIECES, delay=PACE, usage=USAGE, cached_tokens=4))
    input_tokens, output_tokens = USAGE
    expected = {
        "request": responses_request(),
        "pieces": PIECES,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        "min_spread_ms": int(1000 * PACE * (len(PIECES) - 1) / 2),
    }

    run_node_test("responses: ResponseStream.fromReadableStream reads the answer as it streams", live_site, expected)

    [request] = fake_upstream.requests
    assert request.path.endswith("/responses")
    sent = request.json()
    assert sent["input"] == "Say hello." and sent["stream"] is True and sent["store"] is False
    [row] = wait_for_rows(user)
    assert row.endpoint == UsageLog.Endpoint.RESPONSES
    assert (row.status, row.finish_reason) == ("completed", "completed")
    assert (row.prompt_tokens, row.completion_tokens) == USAGE
    assert row.cached_tokens == 4 and not row.tokens_estimated
    assert row.upstream_response_id.startswith("resp_")


@pytest.mark.parametrize("whole", [False, True], ids=["streamed-in-pieces", "whole-in-one-delta"])
def test_response_stream_reassembles_two_streamed_function_calls(live_site, fake_upstream, user, whole):
    calls = [WEATHER_CALL, TIME_CALL]
    fake_upstream.will_reply(Reply(pieces=[], tool_calls=calls, whole_tool_calls=whole, delay=0.01))
    request = responses_request("Weather and time in Paris?", tools=RESPONSES_TOOLS, tool_choice="auto")
    expected = {"request": request, "function_calls": [function_call(call) for call in calls]}

    run_node_test("responses: streamed function-call arguments reassemble into the final response", live_site, expected)

    sent = fake_upstream.requests[-1].json()
    assert sent["tools"] == RESPONSES_TOOLS and sent["tool_choice"] == "auto"
    [row] = wait_for_rows(user)
    assert (row.status, row.finish_reason, row.tool_calls) == ("completed", "completed", 2)


def test_an_upstream_error_event_rejects_the_response_stream_after_the_deltas_before_it(live_site, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["one", " two", " three"], error_after=2, delay=0.05))
    expected = {
        "request": responses_request(),
        "pieces": ["one", " two"],
        "error": MID_STREAM_ERROR_MESSAGE,
        "code": "upstream_stream_error",
    }

    run_node_test(
        "responses: an upstream error event mid-stream rejects the ResponseStream with an APIError", live_site, expected
    )

    assert len(fake_upstream.requests) == 1
    [row] = wait_for_rows(user)
    assert row.endpoint == UsageLog.Endpoint.RESPONSES and row.status == "error"


def test_a_dropped_upstream_rejects_the_response_stream_instead_of_hanging(live_site, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["one", " two", " three"], drop_after=2, delay=0.05))
    expected = {
        "request": responses_request(),
        "pieces": ["one", " two"],
        "error": "lost mid-answer",
        "code": "upstream_connection_lost",
    }

    run_node_test("responses: a dropped upstream rejects the ResponseStream instead of hanging", live_site, expected)

    [row] = wait_for_rows(user)
    assert row.status == "error" and row.tokens_estimated


def test_a_responses_tool_call_loop_sends_the_function_output_back(live_site, fake_upstream, user):
    final = ["It is ", "14:05", " in Lyon."]
    fake_upstream.will_reply(Reply(pieces=[], tool_calls=[TIME_CALL]), Reply(pieces=final))
    request = responses_request("What time is it in Lyon?", tools=RESPONSES_TOOLS)

    run_node_test(
        "responses: a tool-call loop sends the function output back and reads the final answer",
        live_site,
        {"request": request, "final_text": "".join(final)},
    )

    assert len(fake_upstream.requests) == 2
    user_message, call, output = fake_upstream.requests[1].json()["input"]
    assert user_message == {"role": "user", "content": "What time is it in Lyon?"}
    # The item as the first response carried it, without the SDK's own `parsed_arguments`.
    assert call == {"type": "function_call", "id": "fc_fake0", "status": "completed", **function_call(TIME_CALL)}
    assert output == {
        "type": "function_call_output",
        "call_id": TIME_CALL.id,
        "output": '{"city":"Lyon","time":"14:05"}',
    }
    first, second = wait_for_rows(user, 2)
    assert (first.finish_reason, first.tool_calls) == ("completed", 1)
    assert (second.status, second.finish_reason, second.tool_calls) == ("completed", "completed", 0)


def test_the_responses_stream_speaks_openai_sse_when_asked(live_site, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=PIECES, usage=USAGE))
    input_tokens, output_tokens = USAGE
    expected = {
        "request": responses_request(),
        "pieces": PIECES,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }

    run_node_test("responses: sse framing carries the events in order, each named by its type", live_site, expected)

    [row] = wait_for_rows(user)
    assert (row.endpoint, row.status) == (UsageLog.Endpoint.RESPONSES, "completed")
