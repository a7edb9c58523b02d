"""Whatever a client sends, the answer is a JSON 4xx error or a valid stream: never a 500."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.models import UsageLimit
from tests.live_site import MODEL, STREAM_URL

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
tricky_text = st.text(alphabet=st.characters(codec="utf-16", categories=None), max_size=60) | st.sampled_from(
    ["", "\x00", "\u202e", "\ufeff", "\ud800", "🧪" * 50, "<script>alert(1)</script>"]
)
names = st.sampled_from(["get_weather", "f", "a" * 65, "bad name", ""]) | tricky_text
image_urls = (
    st.sampled_from(
        [
            "https://example.com/a.png",
            "data:image/png;base64,iVBORw0KGgo=",
            "data:image/png;base64,not base64",
            "data:image/svg+xml;base64,PHN2Zz4=",
            "http://example.com/a.png",
            "https://",
        ]
    )
    | tricky_text
)
content_parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": tricky_text | json_values}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": image_urls}) | json_values},
        optional={"detail": st.sampled_from(["auto", "low", "high", "max"])},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["refusal", "input_audio", "file", "video"]), "refusal": json_values}
    ),
    json_values,
)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["call_1", ""]) | json_values,
            "type": st.sampled_from(["function", "custom"]),
            "function": st.fixed_dictionaries({"name": names, "arguments": tricky_text | json_values}) | json_values,
        }
    ),
    max_size=3,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "developer", "assistant", "tool", "function", "USER", ""])
            | json_values,
            "content": tricky_text | st.lists(content_parts, max_size=3) | json_values,
        },
        optional={
            "name": st.text(max_size=5),
            "tool_calls": tool_calls | json_values,
            "tool_call_id": st.sampled_from(["call_1", "call_2"]) | json_values,
        },
    ),
    max_size=4,
)
function_tools = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["function", "custom"]) | json_values,
            "function": st.fixed_dictionaries(
                {"name": names},
                optional={
                    "parameters": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
                    "strict": st.booleans() | json_values,
                    "description": tricky_text,
                },
            )
            | json_values,
        }
    ),
    max_size=3,
)
tool_choices = st.sampled_from(["none", "auto", "required", "any"]) | st.fixed_dictionaries(
    {"type": st.just("function"), "function": st.fixed_dictionaries({"name": names}) | json_values}
)
response_formats = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
    optional={
        "json_schema": st.fixed_dictionaries({"name": names}, optional={"schema": json_values, "strict": json_values})
        | json_values
    },
)
chat_bodies = st.fixed_dictionaries(
    {"messages": messages | json_values},
    optional={
        "model": st.sampled_from([MODEL, "gpt-other", ""]) | json_values,
        "max_tokens": st.integers(-5, 2**70) | json_values,
        "temperature": st.floats() | json_values,
        "stream": json_values,
        "tools": function_tools | json_values,
        "tool_choice": tool_choices | json_values,
        "response_format": response_formats | json_values,
        "stop": json_values,
        "logit_bias": st.dictionaries(st.text(max_size=4), json_values, max_size=3),
        "user": json_values,
    },
)


def encode(value: object) -> bytes:
    # json.dumps writes NaN/Infinity and lone surrogates as escapes: invalid input worth sending too.
    return json.dumps(value).encode()


bodies = st.one_of(
    chat_bodies.map(encode),
    json_values.map(encode),
    st.binary(max_size=300),
    tricky_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.integers(50_000, 400_000).map(lambda n: encode({"messages": [{"role": "user", "content": "x" * n}]})),
    st.builds(
        lambda a, b: f'{{"messages": {a}, "messages": {b}}}'.encode(),
        st.just("[]"),
        st.just('[{"role": "user", "content": "dup"}]'),
    ),
    st.integers(1, 600).map(lambda depth: b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"),
)


def assert_valid_answer(response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code == 200:
        lines = [json.loads(line) for line in response.text.split("\n") if line.strip()]
        assert lines and "error" not in lines[-1]
        assert any(choice.get("finish_reason") for line in lines for choice in line.get("choices", []))
    else:
        assert 400 <= response.status_code < 500
        error = response.json()["error"]
        assert set(error) == {"message", "type", "code"} and error["message"]


def test_generated_bodies_never_break_the_api(site_client, live_site, fake_upstream, user):
    UsageLimit.objects.create(
        user=user, requests_per_minute=0, concurrent_streams=0, daily_token_budget=0, monthly_token_budget=0
    )
    statuses: set[int] = set()

    @settings(
        max_examples=1500,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies)
    def post(body: bytes) -> None:
        response = site_client.post(STREAM_URL, content=body, headers={"Content-Type": "application/json"})
        statuses.add(response.status_code)
        assert_valid_answer(response)

    post()
    assert {200, 400, 413} <= statuses
    assert live_site.process.poll() is None
    assert (
        site_client.post(STREAM_URL, json={"messages": [{"role": "user", "content": "still there?"}]}).status_code
        == 200
    )
