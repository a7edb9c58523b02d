"""What reaches the upstream: the validated request, byte for byte, through the live site and the SDK."""

from __future__ import annotations

import base64

from streaming.upstream import upstream_user_id
from tests.live_site import MODEL, STREAM_URL

# A real 1×1 PNG, as a browser would send a pasted picture.
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cf00000301010018dd8db40000000049454e44ae426082"
    )
).decode()
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
MESSAGES = [
    {"role": "developer", "content": "Answer in one line."},
    {
        "role": "user",
        "name": "alice",
        "content": [
            {"type": "text", "text": "Where was this taken, and what is the weather there? 🌧"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/photos/oslo.jpg?size=large"}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"C"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_abc", "content": '{"temperature": 4, "sky": "rain"}'},
]


def test_images_tools_and_every_parameter_reach_the_upstream_as_validated(site_client, fake_upstream, user):
    parameters = {
        "max_completion_tokens": 300,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "logit_bias": {"1734": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "reasoning_effort": "low",
        "verbosity": "medium",
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "forecast",
                "schema": {"type": "object", "properties": {"line": {"type": "string"}}, "required": ["line"]},
                "strict": True,
            },
        },
    }
    response = site_client.post(STREAM_URL, json={"messages": MESSAGES, **parameters})
    assert response.status_code == 200, response.text

    sent = fake_upstream.requests[-1].json()
    assert sent["messages"] == MESSAGES
    assert {name: sent[name] for name in parameters} == parameters
    # The relay's own fields, and nothing else.
    assert sent["model"] == MODEL and sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert set(sent) == {*parameters, "messages", "model", "stream", "stream_options", "safety_identifier"}


def test_max_tokens_is_clamped_on_the_way_up(site_client, fake_upstream, user):
    response = site_client.post(STREAM_URL, json={"messages": MESSAGES[:2], "max_completion_tokens": 10**9})
    assert response.status_code == 200
    sent = fake_upstream.requests[-1].json()
    # The live site's cap is the default, 1024; with max_completion_tokens given no max_tokens is added.
    assert sent["max_completion_tokens"] == 1024 and "max_tokens" not in sent


def test_the_clients_user_fields_are_replaced_by_the_pseudonym(site_client, fake_upstream, user):
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "user": "alice@example.com",
        "safety_identifier": "alice-chosen-id",
        "stream_options": {"include_usage": False},
    }
    response = site_client.post(STREAM_URL, json=body)
    assert response.status_code == 200

    raw = fake_upstream.requests[-1].body
    sent = fake_upstream.requests[-1].json()
    assert sent["safety_identifier"] == upstream_user_id(user)
    assert "user" not in sent
    assert b"alice@example.com" not in raw and b"alice-chosen-id" not in raw
    # The relay still asks for usage, whatever the client said.
    assert sent["stream_options"] == {"include_usage": True}


def test_an_invalid_image_never_reaches_the_upstream(site_client, fake_upstream, user):
    content = [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]
    response = site_client.post(STREAM_URL, json={"messages": [{"role": "user", "content": content}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_image" and "'messages[0].content[1].image_url.url'" in error["message"]
    assert fake_upstream.requests == []
