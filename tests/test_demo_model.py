"""With no API key, the built-in demo model answers through the same SDK and relay path."""

import json
from collections.abc import AsyncIterator, Iterator
from typing import Literal

import openai
import pytest
from openai import pydantic_function_tool
from pydantic import BaseModel

from streaming.demo_model import DemoModelServer
from streaming.models import UsageLog


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
