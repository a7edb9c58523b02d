"""With no API key, the built-in demo model answers through the same SDK and relay path."""

import json
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import openai
import pytest
from openai import OpenAI, pydantic_function_tool
from pydantic import BaseModel

from streaming.demo_model import DemoModelServer
from streaming.models import UsageLog
from tests.fake_upstream import CITY_PARAMETERS
from tests.live_site import v1_url, wait_for_rows


def test_demo_page_is_labelled_and_a_question_streams_an_answer(demo_client, user):
    page = demo_client.get("/")
    assert 'id="demo-label"' in page.text and "chatproxy-demo" in page.text

    body = {"messages": [{"role": "user", "content": "What is chatproxy?"}]}
    with demo_client.stream("POST", "/api/chat/stream", json=body) as response:
        assert response.status_code == 200
        chunks = [json.loads(line) for line in response.iter_lines() if line.strip()]

    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "demo model" in text and '"What is chatproxy?"' in text
    assert len(chunks) > 20, "the demo answer should stream word by word"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-1]["usage"]
    row = UsageLog.objects.get(user=user)
    assert (row.status, row.model) == ("completed", "chatproxy-demo")
    assert not row.tokens_estimated and row.total_tokens == usage["total_tokens"]


def test_demo_model_honours_max_tokens_and_refuses_other_models(demo_client):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    with demo_client.stream("POST", "/api/chat/stream", json=body) as response:
        chunks = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3

    refused = demo_client.post("/api/chat/stream", json={**body, "model": "gpt-4o"})
    assert refused.status_code == 400 and "chatproxy-demo" in refused.json()["error"]["message"]


# The demo server itself, driven by the official openai Python SDK.

DEMO = "chatproxy-demo"


class GetWeather(BaseModel):
    """The weather forecast for a city."""

    city: str
    days: int
    unit: Literal["celsius", "fahrenheit"]


class GetTime(BaseModel):
    """The local time in a city."""

    city: str


class Trip(BaseModel):
    destination: str
    nights: int
    stops: list[str]


WEATHER_TOOL = pydantic_function_tool(GetWeather, name="get_weather")
TIME_TOOL = pydantic_function_tool(GetTime, name="get_time")
WEATHER_QUESTION = {"role": "user", "content": "What will the weather be? city: Paris, days: 3, unit: fahrenheit"}


@pytest.fixture(scope="module")
def demo_server() -> Iterator[DemoModelServer]:
    server = DemoModelServer(token_delay=0).start()
    yield server
    server.stop()


@pytest.fixture
async def openai_client(demo_server: DemoModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=demo_server.base_url, api_key=demo_server.api_key, max_retries=0)
    yield client
    await client.close()


async def test_a_streamed_tool_call_reassembles_with_arguments_from_the_schema(openai_client):
    done_events = []
    argument_deltas = 0
    async with openai_client.chat.completions.stream(
        model=DEMO, messages=[WEATHER_QUESTION], tools=[WEATHER_TOOL], stream_options={"include_usage": True}
    ) as stream:
        async for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                argument_deltas += 1
            elif event.type == "tool_calls.function.arguments.done":
                done_events.append(event)
        completion = await stream.get_final_completion()

    assert argument_deltas >= 3, "the arguments should stream in pieces"
    assert [event.parsed_arguments for event in done_events] == [GetWeather(city="Paris", days=3, unit="fahrenheit")]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3, "unit": "fahrenheit"}
    assert completion.usage.completion_tokens == argument_deltas - 1, "a token per piece after the empty start"


async def test_the_first_tool_call_delta_carries_id_type_name_and_empty_arguments(openai_client):
    stream = await openai_client.chat.completions.create(
        model=DEMO, messages=[WEATHER_QUESTION], tools=[WEATHER_TOOL], stream=True
    )
    deltas = [chunk.choices[0].delta async for chunk in stream if chunk.choices]

    calls = [delta.tool_calls[0] for delta in deltas if delta.tool_calls]
    first, *rest = calls
    assert (first.index, first.type, first.function.name, first.function.arguments) == (
        0,
        "function",
        "get_weather",
        "",
    )
    assert first.id.startswith("call_")
    assert len(rest) >= 3 and all(c.index == 0 and c.id is None and c.function.name is None for c in rest)
    assert "".join(c.function.arguments for c in rest) == '{"city":"Paris","days":3,"unit":"fahrenheit"}'


async def test_a_message_naming_two_tools_gets_two_parallel_calls_in_the_order_named(openai_client):
    question = {"role": "user", "content": "Use get_time and then get_weather for city: Oslo, days: 2"}
    async with openai_client.chat.completions.stream(
        model=DEMO, messages=[question], tools=[WEATHER_TOOL, TIME_TOOL]
    ) as stream:
        completion = await stream.get_final_completion()

    calls = completion.choices[0].message.tool_calls
    assert [call.function.name for call in calls] == ["get_time", "get_weather"]
    assert len({call.id for call in calls}) == 2
    assert [call.function.parsed_arguments for call in calls] == [
        GetTime(city="Oslo"),
        GetWeather(city="Oslo", days=2, unit="celsius"),
    ]

    single = await openai_client.chat.completions.create(
        model=DEMO, messages=[question], tools=[WEATHER_TOOL, TIME_TOOL], parallel_tool_calls=False
    )
    assert [call.function.name for call in single.choices[0].message.tool_calls] == ["get_time"]


async def test_tool_choice_picks_the_tool_or_turns_calls_off(openai_client):
    question = {"role": "user", "content": "Use get_time for city: Rome"}
    forced = await openai_client.chat.completions.create(
        model=DEMO,
        messages=[question],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    (call,) = forced.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Rome"

    required = await openai_client.chat.completions.create(
        model=DEMO,
        messages=[{"role": "user", "content": "Hi"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
    )
    assert [c.function.name for c in required.choices[0].message.tool_calls] == ["get_weather"], "else the first"

    off = await openai_client.chat.completions.create(
        model=DEMO, messages=[question], tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="none"
    )
    assert off.choices[0].finish_reason == "stop" and not off.choices[0].message.tool_calls
    assert '"Use get_time for city: Rome"' in off.choices[0].message.content


async def test_a_non_streaming_tool_call_is_one_completion_with_tool_calls(openai_client):
    completion = await openai_client.chat.completions.parse(
        model=DEMO, messages=[WEATHER_QUESTION], tools=[WEATHER_TOOL]
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.parsed_arguments == GetWeather(
        city="Paris", days=3, unit="fahrenheit"
    )
    assert completion.usage.completion_tokens >= 3


async def test_the_whole_tool_loop_ends_in_an_answer_quoting_the_result(openai_client):
    messages: list[dict] = [WEATHER_QUESTION]
    first = await openai_client.chat.completions.create(model=DEMO, messages=messages, tools=[WEATHER_TOOL])
    (call,) = first.choices[0].message.tool_calls
    forecast = GetWeather.model_validate_json(call.function.arguments)
    result = f"Sunny in {forecast.city} for {forecast.days} days, 75 F"
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]

    async with openai_client.chat.completions.stream(model=DEMO, messages=messages, tools=[WEATHER_TOOL]) as stream:
        final = await stream.get_final_completion()

    choice = final.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert f'The tool get_weather returned: "{result}".' in choice.message.content


async def test_structured_outputs_are_one_json_document_streamed_in_pieces(openai_client):
    question = {"role": "user", "content": "Plan a trip. destination: Lisbon, nights: 4"}
    pieces = 0
    async with openai_client.chat.completions.stream(model=DEMO, messages=[question], response_format=Trip) as stream:
        async for event in stream:
            pieces += event.type == "content.delta"
        completion = await stream.get_final_completion()
    assert pieces >= 3
    trip = completion.choices[0].message.parsed
    assert (trip.destination, trip.nights, len(trip.stops)) == ("Lisbon", 4, 1)

    plain = await openai_client.chat.completions.create(
        model=DEMO, messages=[question], response_format={"type": "json_object"}
    )
    assert '"Plan a trip.' in json.loads(plain.choices[0].message.content)["answer"]


async def test_the_answer_counts_the_images_and_reads_text_parts_as_words(openai_client):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "What is"}, image, {"type": "text", "text": "in these?"}, image]
    completion = await openai_client.chat.completions.create(
        model=DEMO, messages=[{"role": "user", "content": content}]
    )

    text = completion.choices[0].message.content
    assert "I received 2 images" in text and '"What is in these?"' in text


async def test_the_same_request_gets_the_same_answer(openai_client):
    request = {"model": DEMO, "messages": [WEATHER_QUESTION], "tools": [WEATHER_TOOL, TIME_TOOL]}
    first, second = [await openai_client.chat.completions.create(**request) for _ in range(2)]

    def answer(completion):
        return [(call.function.name, call.function.arguments) for call in completion.choices[0].message.tool_calls]

    assert answer(first) == answer(second)
    assert first.choices[0].message.tool_calls[0].id != second.choices[0].message.tool_calls[0].id


def test_the_site_streams_a_demo_tool_call(demo_client, user):
    body = {"messages": [WEATHER_QUESTION], "tools": [WEATHER_TOOL]}
    with demo_client.stream("POST", "/api/chat/stream", json=body) as response:
        assert response.status_code == 200
        chunks = [json.loads(line) for line in response.iter_lines() if line.strip()]

    calls = [call for c in chunks if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls") or []]
    first, *rest = calls
    assert first["id"].startswith("call_") and first["function"] == {"name": "get_weather", "arguments": ""}
    arguments = "".join(call["function"]["arguments"] for call in rest)
    assert len(rest) >= 3 and json.loads(arguments) == {"city": "Paris", "days": 3, "unit": "fahrenheit"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert UsageLog.objects.get(user=user).completion_tokens == chunks[-1]["usage"]["completion_tokens"] == len(rest)


# The demo server's Responses API, driven by the same SDK.

WEATHER_FUNCTION = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather forecast for a city.",
    "parameters": CITY_PARAMETERS,
    "strict": True,
}
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
MESSAGE_START = ["response.created", "response.in_progress", "response.output_item.added"]


async def test_a_streamed_response_is_the_event_sequence_with_the_chat_answer(openai_client):
    question = "What is chatproxy?"
    async with openai_client.responses.stream(model=DEMO, input=question) as stream:
        events = [event async for event in stream]
        response = await stream.get_final_response()

    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 20, "the demo answer should stream word by word"
    assert [event.type for event in events] == [
        *MESSAGE_START,
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    lifecycle = [event.response for event in events if hasattr(event, "response")]
    assert len(lifecycle) == 3 and {r.id for r in lifecycle} == {response.id} and response.id.startswith("resp_")
    item_ids = {getattr(event, "item_id", None) or event.item.id for event in events[2:-1]}
    assert item_ids == {response.output[0].id}
    assert response.status == "completed" and response.output_text == "".join(d.delta for d in deltas)

    chat = await openai_client.chat.completions.create(model=DEMO, messages=[{"role": "user", "content": question}])
    assert response.output_text == chat.choices[0].message.content, "the same answer through both APIs"
    assert f'"{question}"' in response.output_text
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        chat.usage.prompt_tokens,
        chat.usage.completion_tokens,
    )
    assert response.usage.output_tokens == len(deltas)


async def test_a_streamed_function_call_item_and_the_tool_loop(openai_client):
    question = {"role": "user", "content": "What will the weather be? city: Oslo"}
    async with openai_client.responses.stream(model=DEMO, input=[question], tools=[WEATHER_FUNCTION]) as stream:
        events = [event async for event in stream]
        response = await stream.get_final_response()

    deltas = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    assert len(deltas) >= 3, "the arguments should stream in pieces"
    assert [event.type for event in events] == [
        *MESSAGE_START,
        *["response.function_call_arguments.delta"] * len(deltas),
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    (call,) = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert call.arguments == "".join(deltas) and json.loads(call.arguments) == {"city": "Oslo"}
    assert call.parsed_arguments == {"city": "Oslo"}, "a strict tool's arguments parse in the SDK"
    assert not response.output_text

    result = "Rain in Oslo, 4 C"
    answer = await openai_client.responses.create(
        model=DEMO,
        input=[
            question,
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": result},
        ],
        tools=[WEATHER_FUNCTION],
    )
    assert answer.status == "completed" and [item.type for item in answer.output] == ["message"]
    assert f'The tool get_weather returned: "{result}".' in answer.output_text


async def test_a_json_schema_format_gets_the_same_document_as_the_chat_response_format(openai_client):
    question = "Forecast please. city: Paris, days: 3, unit: fahrenheit"
    text_format = {"type": "json_schema", "name": "weather", "schema": WEATHER_SCHEMA, "strict": True}
    response = await openai_client.responses.create(model=DEMO, input=question, text={"format": text_format})

    forecast = json.loads(response.output_text)
    assert forecast == {"city": "Paris", "days": 3, "unit": "fahrenheit"}
    assert response.text.format.type == "json_schema" and response.text.format.name == "weather"

    chat = await openai_client.chat.completions.create(
        model=DEMO,
        messages=[{"role": "user", "content": question}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True},
        },
    )
    assert json.loads(chat.choices[0].message.content) == forecast

    parsed = await openai_client.responses.parse(model=DEMO, input=question, text_format=GetWeather)
    assert parsed.output_parsed == GetWeather(city="Paris", days=3, unit="fahrenheit")


async def test_max_output_tokens_cuts_the_answer_and_ends_with_response_incomplete(openai_client):
    whole = await openai_client.responses.create(model=DEMO, input="Hi")
    cut = await openai_client.responses.create(model=DEMO, input="Hi", max_output_tokens=16)
    assert (cut.status, cut.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert cut.usage.output_tokens == 16 and cut.max_output_tokens == 16
    assert whole.output_text.startswith(cut.output_text) and len(cut.output_text) < len(whole.output_text)
    assert cut.output[0].status == "incomplete"

    async with openai_client.responses.stream(model=DEMO, input="Hi", max_output_tokens=16) as stream:
        events = [event async for event in stream]
        with pytest.raises(RuntimeError, match="response.completed"):
            await stream.get_final_response()
    assert [event.type for event in events].count("response.output_text.delta") == 16
    last = events[-1]
    assert last.type == "response.incomplete" and "response.completed" not in [e.type for e in events]
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == cut.output_text


async def test_instructions_and_an_input_image_are_read_as_the_chat_endpoint_reads_them(openai_client):
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}
    content = [{"type": "input_text", "text": "What is in"}, image, {"type": "input_text", "text": "this picture?"}]
    response = await openai_client.responses.create(
        model=DEMO, instructions="Answer briefly.", input=[{"role": "user", "content": content}]
    )

    text = response.output_text
    assert "I received 1 image;" in text and '"What is in this picture?"' in text
    assert "(message 1 of this conversation)" in text, "the instructions are not a user message"
    assert response.instructions == "Answer briefly."


# Through the live demo site.


def test_the_demo_site_answers_v1_responses_and_logs_a_responses_row(demo_site, user, api_key, seeded_prices):
    with OpenAI(base_url=v1_url(demo_site), api_key=api_key, max_retries=0) as client:
        response = client.responses.create(model=DEMO, input="Say hello.")
        with client.responses.stream(model=DEMO, input="Say hello.") as stream:
            types = [event.type for event in stream]
            streamed = stream.get_final_response()

    assert response.status == "completed" and response.id.startswith("resp_")
    assert "demo model" in response.output_text and '"Say hello."' in response.output_text
    assert streamed.output_text == response.output_text and streamed.id != response.id
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    row, streamed_row = wait_for_rows(user, 2)
    assert streamed_row.upstream_response_id == streamed.id and streamed_row.endpoint == "responses"
    assert (row.endpoint, row.status, row.model, row.finish_reason) == (
        UsageLog.Endpoint.RESPONSES,
        "completed",
        DEMO,
        "completed",
    )
    assert row.upstream_response_id == response.id and row.api_key is not None
    assert not row.tokens_estimated and row.completion_tokens == response.usage.output_tokens
    assert row.cost == 0 and not row.price_missing  # the demo model's seeded price: free
    assert row.prompt_tokens == response.usage.input_tokens and row.tool_calls == 0


def test_the_demo_site_streams_responses_events_as_ndjson(demo_client, user):
    with demo_client.stream("POST", "/api/responses/stream", json={"input": "What is chatproxy?"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in response.iter_lines() if line.strip()]

    assert all(isinstance(event.get("type"), str) for event in events)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    text = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    final = events[-1]["response"]
    assert text == final["output"][0]["content"][0]["text"] and '"What is chatproxy?"' in text
    (row,) = wait_for_rows(user)
    assert (row.endpoint, row.status, row.upstream_response_id) == ("responses", "completed", final["id"])
    assert row.completion_tokens == final["usage"]["output_tokens"] and not row.tokens_estimated
