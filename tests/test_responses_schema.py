import orjson
import pytest

from streaming.errors import ApiError
from streaming.schemas.fields import TOKENS_PER_IMAGE
from streaming.schemas.responses import parse_responses_request
from tests.live_site import MODEL, OTHER_MODEL

PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
TOOL_LOOP = [
    {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
    {"type": "message", "role": "user", "content": "Weather in Oslo?"},
    {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
        "status": "completed",
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "4 °C, rain"},
    {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": "Rainy.", "annotations": []},
            {"type": "refusal", "refusal": "No."},
        ],
    },
]


def parse(**body):
    return parse_responses_request(orjson.dumps(body))


def refusal(**body) -> ApiError:
    with pytest.raises(ApiError) as raised:
        parse(**body)
    return raised.value


def test_a_string_input_gets_the_default_model_the_cap_and_store_false(settings):
    request = parse(input="Hi")
    assert request.model == MODEL
    assert request.upstream_params() == {
        "model": MODEL,
        "input": "Hi",
        "max_output_tokens": settings.CHAT_MAX_TOKENS,
        "store": False,
    }


def test_max_output_tokens_above_the_cap_is_clamped(settings):
    settings.CHAT_MAX_TOKENS = 100
    assert parse(input="Hi", max_output_tokens=5000).upstream_params()["max_output_tokens"] == 100
    assert parse(input="Hi", max_output_tokens=40).upstream_params()["max_output_tokens"] == 40
    for too_few in (0, 15):
        error = refusal(input="Hi", max_output_tokens=too_few)
        assert error.code == "invalid_max_output_tokens" and "'max_output_tokens'" in error.message


def test_a_whole_tool_loop_with_every_role_and_item_is_sent_as_given():
    request = parse(
        model=OTHER_MODEL,
        input=TOOL_LOOP,
        instructions="Answer in English.",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    sent = request.upstream_params()
    assert (sent["model"], sent["input"], sent["instructions"]) == (OTHER_MODEL, TOOL_LOOP, "Answer in English.")
    assert (sent["tools"], sent["tool_choice"], sent["parallel_tool_calls"]) == (
        [WEATHER],
        {"type": "function", "name": "get_weather"},
        False,
    )


def test_sdk_style_null_parameters_and_strict_in_a_tool_are_accepted():
    tool = {"type": "function", "name": "now", "parameters": None, "strict": None}
    assert parse(input="Hi", tools=[tool], tool_choice="required").upstream_params()["tools"] == [tool]


def test_every_sampling_and_format_parameter_is_sent_as_given():
    parameters = {
        "temperature": 0,
        "top_p": 0.5,
        "text": {
            "format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True},
            "verbosity": "low",
        },
        "reasoning": {"effort": "minimal", "summary": "concise"},
        "stream_options": {"include_obfuscation": False},
    }
    sent = parse(input="Hi", **parameters).upstream_params()
    assert sent == {"model": MODEL, "input": "Hi", "max_output_tokens": 1024, **parameters, "store": False}
    for text_format in ({"type": "text"}, {"type": "json_object"}):
        assert parse(input="Hi", text={"format": text_format}).upstream_params()["text"] == {"format": text_format}


def test_nulls_are_left_out():
    assert (
        parse(input="Hi", temperature=None, top_p=None, tools=None, reasoning=None).upstream_params()
        == parse(input="Hi").upstream_params()
    )


def test_image_parts_in_user_messages_are_sent_and_counted():
    content = [
        {"type": "input_text", "text": "What is in these?"},
        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "high"},
        {"type": "input_image", "image_url": PNG},
    ]
    request = parse(input=[{"role": "user", "content": content}])
    assert request.upstream_params()["input"][0]["content"] == content
    text_only = parse(input=[{"role": "user", "content": "What is in these?"}])
    assert request.estimated_input_tokens() == text_only.estimated_input_tokens() + 2 * TOKENS_PER_IMAGE


def test_the_estimate_counts_instructions_calls_outputs_and_schemas():
    plain = parse(input="Hi").estimated_input_tokens()
    assert parse(input="Hi", instructions="i" * 400).estimated_input_tokens() >= plain + 100
    assert (
        parse(input=TOOL_LOOP, tools=[WEATHER]).estimated_input_tokens()
        > parse(input=TOOL_LOOP).estimated_input_tokens()
    )
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "a" * 400}
    output = {"type": "function_call_output", "call_id": "c", "output": "o" * 400}
    assert parse(input=[call, output]).estimated_input_tokens() >= plain + 200


def test_the_clients_user_and_safety_identifier_are_never_forwarded():
    sent = parse(input="Hi", user="alice@example.com", safety_identifier="alice").upstream_params()
    assert "user" not in sent and "safety_identifier" not in sent
    assert "alice" not in orjson.dumps(sent).decode()


def test_storing_needs_the_setting(settings):
    for body in ({"store": True}, {"metadata": {"team": "a"}}, {"previous_response_id": "resp_1"}):
        error = refusal(input="Hi", **body)
        assert error.code == "parameter_not_allowed" and next(iter(body)) in error.message
        assert "CHAT_ALLOW_STORE" in error.message
    assert parse(input="Hi", store=False).upstream_params()["store"] is False
    settings.CHAT_ALLOW_STORE = True
    assert "store" not in parse(input="Hi").upstream_params(), "the upstream's own default applies"
    sent = parse(input="Hi", store=True, metadata={"team": "a"}, previous_response_id="resp_1").upstream_params()
    assert (sent["store"], sent["metadata"], sent["previous_response_id"]) == (True, {"team": "a"}, "resp_1")


def test_a_function_call_output_must_answer_an_earlier_call_unless_it_continues_a_stored_response(settings):
    orphan = [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]
    error = refusal(input=orphan)
    assert (error.code, "'input[0].call_id'" in error.message) == ("invalid_call_id", True)
    settings.CHAT_ALLOW_STORE = True
    assert parse(input=orphan, previous_response_id="resp_1").upstream_params()["input"] == orphan


def test_built_in_tools_pass_only_when_the_site_lists_their_type(settings):
    search = {"type": "web_search"}
    error = refusal(input="Hi", tools=[WEATHER, search])
    assert error.code == "parameter_not_allowed" and "'tools[1].type'" in error.message
    assert "CHAT_RESPONSES_TOOL_TYPES" in error.message
    settings.CHAT_RESPONSES_TOOL_TYPES = ["web_search"]
    assert parse(input="Hi", tools=[WEATHER, search]).upstream_params()["tools"] == [WEATHER, search]


def test_extra_parameters_pass_through_only_when_the_site_lists_them(settings):
    assert refusal(input="Hi", service_tier="flex").code == "unknown_field"
    settings.CHAT_EXTRA_PARAMETERS = ["service_tier", "truncation", "stream"]
    sent = parse(input="Hi", service_tier="flex", truncation="auto").upstream_params()
    assert (sent["service_tier"], sent["truncation"]) == ("flex", "auto")
    assert "stream" not in parse(input="Hi", stream=False).upstream_params()


def user_content(*parts):
    return [{"role": "user", "content": list(parts)}]


@pytest.mark.parametrize(
    ("body", "code", "path"),
    [
        ({"input": []}, "invalid_input", "input"),
        ({"input": 5}, "invalid_input", "input"),
        ({"input": ["Hi"]}, "invalid_input", "input[0]"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "invalid_input", "input[0].id"),
        ({"input": [{"type": "computer_call", "call_id": "c"}]}, "invalid_input", "input[0].type"),
        ({"input": [{"type": ["message"], "role": "user", "content": "x"}]}, "invalid_input", "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "invalid_role", "input[0].role"),
        ({"input": [{"role": "user"}]}, "invalid_input", "input[0].content"),
        ({"input": [{"role": "user", "content": "x", "name": "a"}]}, "invalid_input", "input[0].name"),
        ({"input": [{"role": "user", "content": "x", "phase": "commentary"}]}, "invalid_input", "input[0].phase"),
        ({"input": [{"role": "user", "content": "x", "status": "done"}]}, "invalid_input", "input[0].status"),
        ({"input": [{"role": "user", "content": []}]}, "invalid_content", "input[0].content"),
        ({"input": user_content({"type": "text", "text": "x"})}, "invalid_content", "input[0].content[0]"),
        ({"input": user_content({"type": "output_text", "text": "x"})}, "invalid_content", "input[0].content[0]"),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": PNG}]}]},
            "invalid_content",
            "input[0].content[0]",
        ),
        ({"input": user_content({"type": "input_text", "text": 5})}, "invalid_content", "input[0].content[0].text"),
        (
            {"input": user_content({"type": "input_file", "file_id": "f"})},
            "unsupported_content",
            "input[0].content[0].type",
        ),
        (
            {"input": user_content({"type": "input_image", "file_id": "f"})},
            "unsupported_content",
            "input[0].content[0].file_id",
        ),
        (
            {"input": user_content({"type": "input_image", "image_url": "http://example.com/a.png"})},
            "invalid_image",
            "input[0].content[0].image_url",
        ),
        (
            {"input": user_content({"type": "input_image", "image_url": "data:image/png;base64,@@"})},
            "invalid_image",
            "input[0].content[0].image_url",
        ),
        (
            {"input": user_content({"type": "input_image", "image_url": PNG, "detail": "max"})},
            "invalid_image",
            "input[0].content[0].detail",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
            "invalid_input",
            "input[0].arguments",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "", "name": "f", "arguments": "{}"}]},
            "invalid_input",
            "input[0].call_id",
        ),
        (
            {"input": [*TOOL_LOOP[2:3], {"type": "function_call_output", "call_id": "call_1", "output": {}}]},
            "invalid_input",
            "input[1].output",
        ),
        ({"input": "x", "instructions": 5}, "invalid_instructions", "instructions"),
        ({"input": "x", "tools": []}, "invalid_tools", "tools"),
        ({"input": "x", "tools": ["get_weather"]}, "invalid_tools", "tools[0]"),
        (
            {"input": "x", "tools": [{"type": "function", "function": {"name": "f"}}]},
            "invalid_tools",
            "tools[0].function",
        ),
        ({"input": "x", "tools": [{"type": "function", "name": "bad name"}]}, "invalid_tools", "tools[0].name"),
        (
            {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": "{}"}]},
            "invalid_tools",
            "tools[0].parameters",
        ),
        ({"input": "x", "tool_choice": "auto"}, "invalid_tool_choice", "tool_choice"),
        ({"input": "x", "tools": [WEATHER], "tool_choice": "any"}, "invalid_tool_choice", "tool_choice"),
        (
            {"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}},
            "invalid_tool_choice",
            "tool_choice.name",
        ),
        (
            {
                "input": "x",
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
            "invalid_tool_choice",
            "tool_choice.function",
        ),
        ({"input": "x", "parallel_tool_calls": True}, "invalid_parallel_tool_calls", "parallel_tool_calls"),
        ({"input": "x", "top_p": 1.5}, "invalid_top_p", "top_p"),
        ({"input": "x", "text": "json"}, "invalid_text", "text"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "invalid_text", "text.format"),
        ({"input": "x", "text": {"format": {"type": "text", "name": "n"}}}, "invalid_text", "text.format.name"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}},
            "invalid_text",
            "text.format.schema",
        ),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": None}}},
            "invalid_text",
            "text.format.schema",
        ),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "json_schema": {"name": "a"}}}},
            "invalid_text",
            "text.format.json_schema",
        ),
        ({"input": "x", "text": {"verbosity": "loud"}}, "invalid_text", "text.verbosity"),
        ({"input": "x", "reasoning": {"effort": "extreme"}}, "invalid_reasoning", "reasoning.effort"),
        ({"input": "x", "reasoning": {"summary": "long"}}, "invalid_reasoning", "reasoning.summary"),
        ({"input": "x", "reasoning": {"budget": 5}}, "invalid_reasoning", "reasoning.budget"),
        (
            {"input": "x", "stream_options": {"include_usage": True}},
            "invalid_stream_options",
            "stream_options.include_usage",
        ),
        (
            {"input": "x", "stream_options": {"include_obfuscation": "no"}},
            "invalid_stream_options",
            "stream_options.include_obfuscation",
        ),
        ({"input": "x", "user": 7}, "invalid_user", "user"),
        ({"input": "x", "messages": []}, "unknown_field", "messages"),
    ],
)
def test_each_invalid_shape_is_refused_naming_its_path(body, code, path):
    error = refusal(**body)
    assert (error.status, error.code) == (400, code), error.message
    assert f"'{path}" in error.message


def test_bounds_on_items_images_tools_and_text_name_the_field(settings):
    settings.CHAT_MAX_MESSAGES = 3
    settings.CHAT_MAX_IMAGES = 2
    settings.CHAT_MAX_IMAGE_URL_BYTES = 100
    settings.CHAT_MAX_TOOLS = 2
    settings.CHAT_MAX_TOOLS_BYTES = 400
    settings.CHAT_MAX_INPUT_CHARS = 50
    error = refusal(input=[{"role": "user", "content": "a"}] * 4)
    assert (error.status, error.code) == (400, "too_many_input_items") and "at most 3" in error.message
    image = {"type": "input_image", "image_url": PNG}
    error = refusal(input=user_content(image) + user_content(image, image))
    assert (error.status, error.code) == (400, "too_many_images") and "'input[1].content[1]'" in error.message
    error = refusal(input=user_content({"type": "input_image", "image_url": PNG + "A" * 100}))
    assert (error.status, error.code) == (413, "image_too_large")
    assert "'input[0].content[0].image_url'" in error.message
    error = refusal(input="Hi", tools=[WEATHER] * 3)
    assert (error.status, error.code) == (400, "too_many_tools") and "at most 2" in error.message
    error = refusal(input="Hi", tools=[{"type": "function", "name": "f", "description": "d" * 400}])
    assert (error.status, error.code) == (413, "tools_too_large") and "'tools'" in error.message
    for body in ({"input": "x" * 51}, {"input": "x", "instructions": "i" * 50}):
        error = refusal(**body)
        assert (error.status, error.code) == (413, "input_too_long") and "'input'" in error.message
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "a" * 51}
    assert refusal(input=[call]).code == "input_too_long"


def test_an_unknown_item_field_and_an_unknown_top_level_field_are_named():
    error = refusal(input=[{"role": "user", "content": "x", "audio": {"id": "a"}}])
    assert "input[0]" in error.message and "audio" in error.message
    error = refusal(input="x", background=True)
    assert error.code == "unknown_field" and "'background'" in error.message


def test_the_body_must_be_a_json_object():
    for body in (b"{", b"[]", b"\xff"):
        with pytest.raises(ApiError) as raised:
            parse_responses_request(body)
        assert raised.value.code == "invalid_json"


def test_stream_says_how_the_client_wants_the_answer_and_never_travels_upstream():
    assert parse(input="Hi").stream is True
    assert parse_responses_request(orjson.dumps({"input": "Hi"}), stream_default=False).stream is False
    request = parse(input="Hi", stream=False)
    assert request.stream is False and "stream" not in request.upstream_params()
    assert parse(input="Hi", stream=True).upstream_params() == parse(input="Hi").upstream_params()


def test_stream_must_be_a_boolean_and_stream_options_needs_a_stream():
    assert refusal(input="Hi", stream="yes").code == "invalid_stream"
    error = refusal(input="Hi", stream=False, stream_options={"include_obfuscation": False})
    assert error.code == "invalid_stream_options" and "'stream'" in error.message


# --- Reasoning items, include, function outputs as parts, and the further parameters ------------

REASONING = {
    "id": "rs_1",
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "Look up the weather."}],
    "content": [{"type": "reasoning_text", "text": "The user wants Oslo."}],
    "encrypted_content": "gAAAAB" + "e" * 200,
    "status": "completed",
}
# As the SDK's output models dump a reasoning item nothing was asked of: no summary, nulls.
BARE_REASONING = {"id": "rs_2", "type": "reasoning", "summary": [], "content": None, "encrypted_content": None}
REASONING_LOOP = [
    {"role": "user", "content": "Weather in Oslo?"},
    REASONING,
    TOOL_LOOP[2],
    {"type": "function_call_output", "call_id": "call_1", "output": "4 °C, rain"},
    BARE_REASONING,
]


def test_a_tool_loop_with_reasoning_items_and_include_is_sent_as_given():
    include = ["reasoning.encrypted_content", "message.output_text.logprobs"]
    request = parse(input=REASONING_LOOP, tools=[WEATHER], include=include, store=False)
    sent = request.upstream_params()
    assert (sent["input"], sent["include"], sent["store"]) == (REASONING_LOOP, include, False)
    assert parse(input="Hi", include=[]).upstream_params()["include"] == []


def test_the_include_values_are_the_sdks():
    from typing import get_args

    from openai.types.responses import ResponseIncludable

    from streaming.schemas.responses import INCLUDABLES

    assert set(INCLUDABLES) == set(get_args(ResponseIncludable))
    assert parse(input="Hi", include=list(INCLUDABLES)).upstream_params()["include"] == list(INCLUDABLES)


def test_reasoning_text_counts_toward_the_estimate_and_encrypted_content_only_toward_the_bound(settings):
    def item(**fields):
        return [{"id": "rs_1", "type": "reasoning", "summary": [], **fields}]

    bare = parse(input=item()).estimated_input_tokens()
    summary = [{"type": "summary_text", "text": "s" * 400}]
    content = [{"type": "reasoning_text", "text": "c" * 400}]
    assert parse(input=item(summary=summary)).estimated_input_tokens() >= bare + 100
    assert parse(input=item(summary=summary, content=content)).estimated_input_tokens() >= bare + 200
    assert parse(input=item(encrypted_content="e" * 4000)).estimated_input_tokens() == bare
    settings.CHAT_MAX_INPUT_CHARS = 100
    assert parse(input=item(encrypted_content="e" * 98)).upstream_params()["input"] == item(encrypted_content="e" * 98)
    error = refusal(input=[{"role": "user", "content": "Hi"}, *item(encrypted_content="e" * 99)])
    assert (error.status, error.code) == (413, "input_too_long")
    error = refusal(input=item(summary=[{"type": "summary_text", "text": "s" * 101}]))
    assert (error.status, error.code) == (413, "input_too_long")


def test_a_function_output_may_be_text_and_image_parts_and_its_images_count(settings):
    parts = [
        {"type": "input_text", "text": "t" * 400},
        {"type": "input_image", "image_url": PNG, "detail": "low"},
    ]
    loop = [TOOL_LOOP[2], {"type": "function_call_output", "call_id": "call_1", "output": parts}]
    request = parse(input=loop)
    assert request.upstream_params()["input"] == loop
    as_text = parse(input=[TOOL_LOOP[2], {"type": "function_call_output", "call_id": "call_1", "output": ""}])
    assert request.image_count == 1
    assert request.estimated_input_tokens() >= as_text.estimated_input_tokens() + 100 + TOKENS_PER_IMAGE
    settings.CHAT_MAX_IMAGES = 1
    error = refusal(input=[*user_content({"type": "input_image", "image_url": PNG}), *loop])
    assert (error.status, error.code) == (400, "too_many_images") and "'input[2].output[1]'" in error.message
    settings.CHAT_MAX_INPUT_CHARS = 400
    assert refusal(input=loop).code == "input_too_long"


def test_the_further_parameters_are_sent_as_given():
    parameters = {"truncation": "auto", "max_tool_calls": 3, "top_logprobs": 20, "prompt_cache_key": "k" * 64}
    sent = parse(input="Hi", **parameters).upstream_params()
    assert sent == {"model": MODEL, "input": "Hi", "max_output_tokens": 1024, **parameters, "store": False}
    sent = parse(input="Hi", truncation="disabled", top_logprobs=0, prompt_cache_key="").upstream_params()
    assert (sent["truncation"], sent["top_logprobs"], sent["prompt_cache_key"]) == ("disabled", 0, "")


def test_cost_and_behaviour_parameters_stay_for_the_site_to_list():
    for name, value in (("service_tier", "priority"), ("background", True)):
        error = refusal(input="Hi", **{name: value})
        assert error.code == "unknown_field" and f"'{name}'" in error.message


ASSISTANT_OUTPUT = TOOL_LOOP[4]


def test_message_ids_and_statuses_are_accepted_as_the_sdks_message_types_have_them():
    accepted = [
        # EasyInputMessageParam: neither.
        {"role": "assistant", "content": "Rainy.", "phase": "final_answer"},
        # ResponseInputItemParam.Message: a status, with content parts.
        {"type": "message", "role": "user", "status": "completed", "content": [{"type": "input_text", "text": "x"}]},
        # ResponseOutputMessageParam: id, status, type and parts (and a phase).
        {**ASSISTANT_OUTPUT, "phase": "commentary"},
        {"role": "user", "content": "x", "status": None},
    ]
    assert parse(input=accepted).upstream_params()["input"] == accepted


@pytest.mark.parametrize(
    ("item", "code", "path"),
    [
        ({"role": "user", "content": "x", "id": "msg_1"}, "invalid_input", "input[0].id"),
        (
            {"role": "system", "content": [{"type": "input_text", "text": "x"}], "id": "m"},
            "invalid_input",
            "input[0].id",
        ),
        ({"role": "developer", "content": "x", "id": "msg_1"}, "invalid_input", "input[0].id"),
        ({"role": "user", "content": "x", "status": "completed"}, "invalid_input", "input[0].status"),
        ({k: v for k, v in ASSISTANT_OUTPUT.items() if k != "status"}, "invalid_input", "input[0].status"),
        ({k: v for k, v in ASSISTANT_OUTPUT.items() if k != "id"}, "invalid_input", "input[0].id"),
        ({k: v for k, v in ASSISTANT_OUTPUT.items() if k != "type"}, "invalid_input", "input[0].type"),
        ({**ASSISTANT_OUTPUT, "content": "Rainy."}, "invalid_content", "input[0].content"),
        ({**ASSISTANT_OUTPUT, "id": 5}, "invalid_input", "input[0].id"),
        ({**ASSISTANT_OUTPUT, "id": None}, "invalid_input", "input[0].id"),
        ({"role": "user", "content": "x", "id": None}, "invalid_input", "input[0].id"),
    ],
)
def test_message_ids_and_statuses_beyond_the_sdks_types_are_refused(item, code, path):
    error = refusal(input=[item])
    assert (error.status, error.code) == (400, code), error.message
    assert f"'{path}'" in error.message


def reasoning(**fields):
    return [{**REASONING, **fields}]


def output(value):
    return [TOOL_LOOP[2], {"type": "function_call_output", "call_id": "call_1", "output": value}]


@pytest.mark.parametrize(
    ("body", "code", "path"),
    [
        ({"input": [{"type": "reasoning", "id": "rs_1"}]}, "invalid_input", "input[0].summary"),
        ({"input": reasoning(id="")}, "invalid_input", "input[0].id"),
        ({"input": reasoning(summary=None)}, "invalid_input", "input[0].summary"),
        ({"input": reasoning(summary="thinking")}, "invalid_input", "input[0].summary"),
        ({"input": reasoning(summary=["thinking"])}, "invalid_content", "input[0].summary[0]"),
        (
            {"input": reasoning(summary=[{"type": "reasoning_text", "text": "x"}])},
            "invalid_content",
            "input[0].summary[0]",
        ),
        ({"input": reasoning(summary=[{"type": "summary_text"}])}, "invalid_content", "input[0].summary[0].text"),
        (
            {"input": reasoning(summary=[{"type": "summary_text", "text": 5}])},
            "invalid_content",
            "input[0].summary[0].text",
        ),
        (
            {"input": reasoning(summary=[{"type": "summary_text", "text": "x", "id": "s"}])},
            "invalid_content",
            "input[0].summary[0].id",
        ),
        ({"input": reasoning(content={"text": "x"})}, "invalid_input", "input[0].content"),
        (
            {"input": reasoning(content=[{"type": "summary_text", "text": "x"}])},
            "invalid_content",
            "input[0].content[0]",
        ),
        (
            {"input": reasoning(content=[{"type": "reasoning_text", "text": None}])},
            "invalid_content",
            "input[0].content[0].text",
        ),
        ({"input": reasoning(encrypted_content=7)}, "invalid_input", "input[0].encrypted_content"),
        ({"input": reasoning(status="done")}, "invalid_input", "input[0].status"),
        ({"input": reasoning(role="assistant")}, "invalid_input", "input[0].role"),
        ({"input": "x", "include": "reasoning.encrypted_content"}, "invalid_include", "include"),
        ({"input": "x", "include": ["reasoning.encrypted_content", "reasoning"]}, "invalid_include", "include[1]"),
        ({"input": "x", "include": [["reasoning.encrypted_content"]]}, "invalid_include", "include[0]"),
        ({"input": output([])}, "invalid_input", "input[1].output"),
        ({"input": output(["4 °C"])}, "invalid_content", "input[1].output[0]"),
        ({"input": output([{"type": "output_text", "text": "x"}])}, "invalid_content", "input[1].output[0]"),
        ({"input": output([{"type": "input_audio", "data": "x"}])}, "invalid_content", "input[1].output[0]"),
        (
            {"input": output([{"type": "input_file", "file_id": "f"}])},
            "unsupported_content",
            "input[1].output[0].type",
        ),
        ({"input": output([{"type": "input_text", "text": 4}])}, "invalid_content", "input[1].output[0].text"),
        (
            {"input": output([{"type": "input_text", "text": "x", "annotations": []}])},
            "invalid_content",
            "input[1].output[0].annotations",
        ),
        (
            {"input": output([{"type": "input_image", "image_url": "http://example.com/a.png"}])},
            "invalid_image",
            "input[1].output[0].image_url",
        ),
        (
            {"input": output([{"type": "input_image", "file_id": "f"}])},
            "unsupported_content",
            "input[1].output[0].file_id",
        ),
        ({"input": "x", "truncation": "none"}, "invalid_truncation", "truncation"),
        ({"input": "x", "max_tool_calls": 0}, "invalid_max_tool_calls", "max_tool_calls"),
        ({"input": "x", "max_tool_calls": True}, "invalid_max_tool_calls", "max_tool_calls"),
        ({"input": "x", "max_tool_calls": 2.0}, "invalid_max_tool_calls", "max_tool_calls"),
        ({"input": "x", "top_logprobs": 21}, "invalid_top_logprobs", "top_logprobs"),
        ({"input": "x", "top_logprobs": -1}, "invalid_top_logprobs", "top_logprobs"),
        ({"input": "x", "prompt_cache_key": "k" * 65}, "invalid_prompt_cache_key", "prompt_cache_key"),
        ({"input": "x", "prompt_cache_key": 5}, "invalid_prompt_cache_key", "prompt_cache_key"),
    ],
)
def test_each_invalid_new_shape_is_refused_naming_its_path(body, code, path):
    error = refusal(**body)
    assert (error.status, error.code) == (400, code), error.message
    assert f"'{path}'" in error.message
