import orjson
import pytest

from streaming.errors import ApiError
from streaming.schemas.chat_completions import parse_chat_completion_request
from streaming.schemas.fields import TOKENS_PER_IMAGE
from tests.live_site import MODEL, OTHER_MODEL

HI = [{"role": "user", "content": "Hi"}]
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}
TOOL_LOOP = [
    {"role": "developer", "content": [{"type": "text", "text": "Be brief."}], "name": "ops"},
    {"role": "user", "content": "Weather in Oslo?", "name": "alice"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "4 °C, rain"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Rainy."}, {"type": "refusal", "refusal": "No."}]},
]


def parse(**body):
    return parse_chat_completion_request(orjson.dumps(body))


def refusal(**body) -> ApiError:
    with pytest.raises(ApiError) as raised:
        parse(**body)
    return raised.value


def test_defaults_fill_in_model_and_the_max_tokens_cap(settings):
    chat = parse(messages=HI)
    assert chat.model == MODEL
    assert chat.max_tokens == settings.CHAT_MAX_TOKENS
    assert chat.upstream_params() == {"model": MODEL, "messages": HI, "max_tokens": settings.CHAT_MAX_TOKENS}


def test_max_tokens_and_max_completion_tokens_above_the_cap_are_clamped(settings):
    settings.CHAT_MAX_TOKENS = 100
    assert parse(messages=HI, max_tokens=5000).max_tokens == 100
    assert parse(messages=HI, max_tokens=40).max_tokens == 40
    sent = parse(messages=HI, max_completion_tokens=5000).upstream_params()
    assert sent["max_completion_tokens"] == 100 and "max_tokens" not in sent
    assert parse(messages=HI, max_completion_tokens=7).upstream_params()["max_completion_tokens"] == 7


def test_an_allowed_model_and_temperature_pass_through():
    chat = parse(
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        model=OTHER_MODEL,
        temperature=0,
    )
    assert chat.upstream_params()["model"] == OTHER_MODEL
    assert chat.upstream_params()["temperature"] == 0.0


def test_a_whole_tool_loop_with_every_role_and_part_is_sent_as_given():
    chat = parse(messages=TOOL_LOOP, tools=[WEATHER], tool_choice="auto", parallel_tool_calls=False)
    sent = chat.upstream_params()
    assert sent["messages"] == TOOL_LOOP
    assert (sent["tools"], sent["tool_choice"], sent["parallel_tool_calls"]) == ([WEATHER], "auto", False)


def test_every_sampling_parameter_is_sent_as_given(settings):
    settings.CHAT_MAX_CHOICES = 3
    parameters = {
        "top_p": 0.5,
        "n": 3,
        "stop": ["\n\n", "END"],
        "seed": 42,
        "frequency_penalty": -1.5,
        "presence_penalty": 2,
        "logit_bias": {"50256": -100, "15": 7},
        "logprobs": True,
        "top_logprobs": 20,
        "reasoning_effort": "minimal",
        "verbosity": "low",
        "stream_options": {"include_usage": True},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True, "description": "d"},
        },
    }
    chat = parse(messages=HI, **parameters)
    assert chat.upstream_params() == {"model": MODEL, "messages": HI, "max_tokens": 1024, **parameters}
    assert chat.include_usage is True
    assert parse(messages=HI, stop="END").upstream_params()["stop"] == "END"
    assert parse(messages=HI).include_usage is False
    assert parse(messages=HI, stream=False).include_usage is True, "a single answer always carries its usage"


def test_nulls_are_left_out():
    assert (
        parse(messages=HI, temperature=None, top_p=None, tools=None).upstream_params()
        == parse(messages=HI).upstream_params()
    )


def test_image_parts_in_user_messages_are_sent_and_counted():
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": PNG}},
    ]
    chat = parse(messages=[{"role": "user", "content": content}])
    assert chat.upstream_params()["messages"][0]["content"] == content
    text_only = parse(messages=[{"role": "user", "content": "What is in these?"}])
    assert chat.estimated_input_tokens() == text_only.estimated_input_tokens() + 2 * TOKENS_PER_IMAGE


def test_the_estimate_counts_tool_arguments_refusals_and_tool_schemas():
    plain = parse(messages=HI).estimated_input_tokens()
    assert (
        parse(messages=TOOL_LOOP, tools=[WEATHER]).estimated_input_tokens()
        > parse(messages=TOOL_LOOP).estimated_input_tokens()
    )
    arguments = '{"city": "' + "x" * 400 + '"}'
    with_arguments = HI + [
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}],
        }
    ]
    assert parse(messages=with_arguments).estimated_input_tokens() >= plain + 100
    refusing = HI + [{"role": "assistant", "content": "", "refusal": "r" * 400}]
    assert parse(messages=refusing).estimated_input_tokens() >= plain + 100


def test_the_clients_user_and_safety_identifier_are_never_forwarded():
    sent = parse(messages=HI, user="alice@example.com", safety_identifier="alice").upstream_params()
    assert "user" not in sent and "safety_identifier" not in sent
    assert "alice" not in orjson.dumps(sent).decode()


def test_store_and_metadata_need_the_setting(settings):
    for body in ({"store": True}, {"metadata": {"team": "a"}}):
        error = refusal(messages=HI, **body)
        assert error.code == "parameter_not_allowed" and next(iter(body)) in error.message
        assert "CHAT_ALLOW_STORE" in error.message
    settings.CHAT_ALLOW_STORE = True
    sent = parse(messages=HI, store=True, metadata={"team": "a"}).upstream_params()
    assert (sent["store"], sent["metadata"]) == (True, {"team": "a"})
    assert "metadata" in refusal(messages=HI, metadata={"k": "v" * 513}).message


def test_extra_parameters_pass_through_only_when_the_site_lists_them(settings):
    assert refusal(messages=HI, service_tier="flex").code == "unknown_field"
    settings.CHAT_EXTRA_PARAMETERS = ["service_tier", "prompt_cache_key", "stream"]
    sent = parse(messages=HI, service_tier="flex", prompt_cache_key={"any": ["shape"]}).upstream_params()
    assert (sent["service_tier"], sent["prompt_cache_key"]) == ("flex", {"any": ["shape"]})
    # The relay's own field stays the relay's own, listed or not: it never travels upstream as sent.
    assert "stream" not in parse(messages=HI, stream=False).upstream_params()


def user_content(*parts):
    return [{"role": "user", "content": list(parts)}]


def image(url, **extra):
    return {"type": "image_url", "image_url": {"url": url, **extra}}


LOOP_HEAD = TOOL_LOOP[:3]


@pytest.mark.parametrize(
    ("body", "code", "path"),
    [
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "unsupported_role", "messages[0].role"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "invalid_role", "messages[0].role"),
        ({"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]}, "invalid_role", "messages[0].role"),
        (
            {"messages": [*LOOP_HEAD, {"role": "tool", "tool_call_id": "other", "content": "x"}]},
            "invalid_tool_call_id",
            "messages[3].tool_call_id",
        ),
        (
            {"messages": [*LOOP_HEAD, {"role": "tool", "tool_call_id": "call_1", "content": "x", "name": "n"}]},
            "invalid_messages",
            "messages[3].name",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
            "invalid_messages",
            "messages[0].tool_calls",
        ),
        ({"messages": [{"role": "user", "name": 5, "content": "x"}]}, "invalid_name", "messages[0].name"),
        ({"messages": user_content()}, "invalid_content", "messages[0].content"),
        (
            {"messages": user_content({"type": "text", "text": "a"}, {"type": "input_audio", "input_audio": {}})},
            "unsupported_content",
            "messages[0].content[1].type",
        ),
        (
            {"messages": user_content({"type": "file", "file": {}})},
            "unsupported_content",
            "messages[0].content[0].type",
        ),
        ({"messages": user_content({"type": "text", "text": 3})}, "invalid_content", "messages[0].content[0].text"),
        (
            {"messages": user_content({"type": "text", "text": "a", "extra": 1})},
            "invalid_content",
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "system", "content": [image(PNG)]}]}, "invalid_content", "messages[0].content[0]"),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "refusal", "refusal": None}]}]},
            "invalid_content",
            "messages[0].content[0].refusal",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]},
            "invalid_content",
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "assistant", "content": None}]}, "invalid_content", "messages[0].content"),
        (
            {
                "messages": HI
                + [{"role": "user", "content": [{"type": "text", "text": "a"}, image("http://example.com/a.png")]}]
            },
            "invalid_image",
            "messages[1].content[1].image_url.url",
        ),
        (
            {"messages": user_content(image("data:image/svg+xml;base64,PHN2Zz4="))},
            "invalid_image",
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": user_content(image("data:image/png;base64,not base64!"))},
            "invalid_image",
            "messages[0].content[0].image_url.url",
        ),
        ({"messages": user_content(image("https://"))}, "invalid_image", "messages[0].content[0].image_url.url"),
        (
            {"messages": user_content(image(PNG, detail="max"))},
            "invalid_image",
            "messages[0].content[0].image_url.detail",
        ),
        (
            {"messages": user_content({"type": "image_url", "image_url": {}})},
            "invalid_image",
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "function": {}}]}]},
            "invalid_tool_calls",
            "messages[0].tool_calls[0].type",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}
                ]
            },
            "invalid_tool_calls",
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}],
                    }
                ]
            },
            "invalid_tool_calls",
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": ""}}],
                    }
                ]
            },
            "invalid_tool_calls",
            "messages[0].tool_calls[0].id",
        ),
        ({"messages": HI, "tools": []}, "invalid_tools", "tools"),
        ({"messages": HI, "tools": [{"type": "custom", "custom": {"name": "x"}}]}, "invalid_tools", "tools[0]"),
        (
            {"messages": HI, "tools": [WEATHER, {"type": "function", "function": {"name": "get weather"}}]},
            "invalid_tools",
            "tools[1].function.name",
        ),
        (
            {"messages": HI, "tools": [{"type": "function", "function": {"name": "f" * 65}}]},
            "invalid_tools",
            "tools[0].function.name",
        ),
        (
            {"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "invalid_tools",
            "tools[0].function.parameters",
        ),
        (
            {"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
            "invalid_tools",
            "tools[0].function.strict",
        ),
        (
            {"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "description": 1}}]},
            "invalid_tools",
            "tools[0].function.description",
        ),
        ({"messages": HI, "tool_choice": "auto"}, "invalid_tool_choice", "tool_choice"),
        ({"messages": HI, "tools": [WEATHER], "tool_choice": "any"}, "invalid_tool_choice", "tool_choice"),
        (
            {"messages": HI, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "invalid_tool_choice",
            "tool_choice.function.name",
        ),
        (
            {"messages": HI, "tools": [WEATHER], "tool_choice": {"type": "function"}},
            "invalid_tool_choice",
            "tool_choice.function",
        ),
        ({"messages": HI, "parallel_tool_calls": True}, "invalid_parallel_tool_calls", "parallel_tool_calls"),
        ({"messages": HI, "response_format": {"type": "xml"}}, "invalid_response_format", "response_format"),
        (
            {"messages": HI, "response_format": {"type": "json_object", "schema": {}}},
            "invalid_response_format",
            "response_format",
        ),
        (
            {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "a"}}},
            "invalid_response_format",
            "response_format.json_schema.schema",
        ),
        (
            {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}},
            "invalid_response_format",
            "response_format.json_schema.name",
        ),
        (
            {"messages": HI, "response_format": {"type": "json_schema"}},
            "invalid_response_format",
            "response_format.json_schema",
        ),
        ({"messages": HI, "max_completion_tokens": 0}, "invalid_max_completion_tokens", "max_completion_tokens"),
        ({"messages": HI, "top_p": 1.5}, "invalid_top_p", "top_p"),
        ({"messages": HI, "n": 2}, "invalid_n", "n"),
        ({"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "invalid_stop", "stop"),
        ({"messages": HI, "stop": [1]}, "invalid_stop", "stop"),
        ({"messages": HI, "seed": 1.5}, "invalid_seed", "seed"),
        ({"messages": HI, "frequency_penalty": -3}, "invalid_frequency_penalty", "frequency_penalty"),
        ({"messages": HI, "presence_penalty": "0"}, "invalid_presence_penalty", "presence_penalty"),
        ({"messages": HI, "logit_bias": {"abc": 1}}, "invalid_logit_bias", "logit_bias"),
        ({"messages": HI, "logit_bias": {"12": 101}}, "invalid_logit_bias", "logit_bias.12"),
        ({"messages": HI, "logprobs": 1}, "invalid_logprobs", "logprobs"),
        ({"messages": HI, "top_logprobs": 3}, "invalid_top_logprobs", "top_logprobs"),
        ({"messages": HI, "logprobs": True, "top_logprobs": 21}, "invalid_top_logprobs", "top_logprobs"),
        ({"messages": HI, "reasoning_effort": "extreme"}, "invalid_reasoning_effort", "reasoning_effort"),
        ({"messages": HI, "verbosity": "loud"}, "invalid_verbosity", "verbosity"),
        (
            {"messages": HI, "stream_options": {"include_usage": "yes"}},
            "invalid_stream_options",
            "stream_options.include_usage",
        ),
        ({"messages": HI, "stream_options": {"chunk_size": 1}}, "invalid_stream_options", "stream_options"),
        ({"messages": HI, "user": 7}, "invalid_user", "user"),
        ({"messages": HI, "functions": []}, "unknown_field", "functions"),
    ],
)
def test_each_invalid_shape_is_refused_naming_its_path(body, code, path):
    error = refusal(**body)
    assert (error.status, error.code) == (400, code), error.message
    assert f"'{path}" in error.message


def test_an_unhashable_tool_call_id_is_a_400_not_a_crash():
    error = refusal(messages=[*LOOP_HEAD, {"role": "tool", "tool_call_id": ["call_1"], "content": "x"}])
    assert (error.status, error.code) == (400, "invalid_tool_call_id")


def test_bounds_on_images_tools_and_text_name_the_field(settings):
    settings.CHAT_MAX_IMAGES = 2
    settings.CHAT_MAX_IMAGE_URL_BYTES = 100
    settings.CHAT_MAX_TOOLS = 2
    settings.CHAT_MAX_TOOLS_BYTES = 400
    settings.CHAT_MAX_INPUT_CHARS = 50
    error = refusal(messages=user_content(image(PNG)) + user_content(image(PNG), image(PNG)))
    assert (error.status, error.code) == (400, "too_many_images") and "'messages[1].content[1]'" in error.message
    error = refusal(messages=user_content(image(PNG + "A" * 100)))
    assert (error.status, error.code) == (
        413,
        "image_too_large",
    ) and "'messages[0].content[0].image_url.url'" in error.message
    error = refusal(messages=HI, tools=[WEATHER] * 3)
    assert (error.status, error.code) == (400, "too_many_tools") and "at most 2" in error.message
    big = {"type": "function", "function": {"name": "f", "description": "d" * 400}}
    error = refusal(messages=HI, tools=[big])
    assert (error.status, error.code) == (413, "tools_too_large") and "'tools'" in error.message
    arguments = "a" * 51
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]
    error = refusal(messages=[*HI, {"role": "assistant", "tool_calls": calls}])
    assert (error.status, error.code) == (413, "input_too_long")
    error = refusal(messages=user_content({"type": "text", "text": "x" * 51}))
    assert (error.status, error.code) == (413, "input_too_long")


@pytest.mark.parametrize("temperature", [-0.1, 2.5, True, "1"])
def test_temperature_out_of_range_is_refused(temperature):
    error = refusal(messages=[{"role": "user", "content": "x"}], temperature=temperature)
    assert error.status == 400 and "temperature" in error.message


def test_too_many_messages_and_too_much_text_name_the_bound(settings):
    settings.CHAT_MAX_MESSAGES = 2
    settings.CHAT_MAX_INPUT_CHARS = 10
    error = refusal(messages=[{"role": "user", "content": "a"}] * 3)
    assert error.status == 400 and "at most 2" in error.message
    error = refusal(messages=[{"role": "user", "content": "x" * 11}])
    assert error.status == 413 and "at most 10" in error.message


def test_unknown_fields_are_named():
    error = refusal(messages=[{"role": "user", "content": "x", "audio": {"id": "a"}}])
    assert "messages[0]" in error.message and "audio" in error.message
    error = refusal(messages=HI, modalities=["audio"])
    assert error.code == "unknown_field" and "modalities" in error.message


def test_the_default_body_cap_fits_the_default_images():
    from streaming.conf import AppSettings

    assert (
        AppSettings.CHAT_MAX_REQUEST_BYTES
        >= AppSettings.CHAT_MAX_IMAGES * AppSettings.CHAT_MAX_IMAGE_URL_BYTES + 64 * 1024
    )


def test_stream_says_how_the_client_wants_the_answer_and_never_travels_upstream():
    assert parse(messages=HI).stream is True
    assert parse_chat_completion_request(orjson.dumps({"messages": HI}), stream_default=False).stream is False
    chat = parse(messages=HI, stream=False)
    assert chat.stream is False and "stream" not in chat.upstream_params()
    assert parse(messages=HI, stream=True).upstream_params() == parse(messages=HI).upstream_params()


def test_stream_must_be_a_boolean_and_stream_options_needs_a_stream():
    assert refusal(messages=HI, stream="yes").code == "invalid_stream"
    error = refusal(messages=HI, stream=False, stream_options={"include_usage": True})
    assert error.code == "invalid_stream_options" and "'stream'" in error.message
    with pytest.raises(ApiError):
        parse_chat_completion_request(
            orjson.dumps({"messages": HI, "stream_options": {"include_usage": True}}), stream_default=False
        )
