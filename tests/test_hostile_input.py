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
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "USER", ""]) | json_values,
            "content": tricky_text | json_values,
        },
        optional={"name": st.text(max_size=5)},
    ),
    max_size=4,
)
chat_bodies = st.fixed_dictionaries(
    {"messages": messages | json_values},
    optional={
        "model": st.sampled_from([MODEL, "gpt-other", ""]) | json_values,
        "max_tokens": st.integers(-5, 2**70) | json_values,
        "temperature": st.floats() | json_values,
        "stream": json_values,
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
