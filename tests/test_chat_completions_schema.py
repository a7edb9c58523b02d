import orjson
import pytest

from streaming.errors import ApiError
from streaming.schemas.chat_completions import parse_chat_completion_request
from tests.live_site import MODEL, OTHER_MODEL


def parse(**body):
    return parse_chat_completion_request(orjson.dumps(body))


def test_defaults_fill_in_model_and_the_max_tokens_cap(settings):
    chat = parse(messages=[{"role": "user", "content": "Hi"}])
    assert chat.model == MODEL
    assert chat.max_tokens == settings.CHAT_MAX_TOKENS
    assert chat.upstream_params() == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": settings.CHAT_MAX_TOKENS,
    }


def test_max_tokens_above_the_cap_is_clamped(settings):
    settings.CHAT_MAX_TOKENS = 100
    assert parse(messages=[{"role": "user", "content": "Hi"}], max_tokens=5000).max_tokens == 100
    assert parse(messages=[{"role": "user", "content": "Hi"}], max_tokens=40).max_tokens == 40


def test_an_allowed_model_and_temperature_pass_through():
    chat = parse(
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        model=OTHER_MODEL,
        temperature=0,
    )
    assert chat.upstream_params()["model"] == OTHER_MODEL
    assert chat.upstream_params()["temperature"] == 0.0


@pytest.mark.parametrize("temperature", [-0.1, 2.5, True, "1"])
def test_temperature_out_of_range_is_refused(temperature):
    with pytest.raises(ApiError) as raised:
        parse(messages=[{"role": "user", "content": "x"}], temperature=temperature)
    assert raised.value.status == 400 and "temperature" in raised.value.message


def test_too_many_messages_and_too_much_text_name_the_bound(settings):
    settings.CHAT_MAX_MESSAGES = 2
    settings.CHAT_MAX_INPUT_CHARS = 10
    with pytest.raises(ApiError) as raised:
        parse(messages=[{"role": "user", "content": "a"}] * 3)
    assert raised.value.status == 400 and "at most 2" in raised.value.message
    with pytest.raises(ApiError) as raised:
        parse(messages=[{"role": "user", "content": "x" * 11}])
    assert raised.value.status == 413 and "at most 10" in raised.value.message


def test_unknown_message_fields_are_named():
    with pytest.raises(ApiError) as raised:
        parse(messages=[{"role": "user", "content": "x", "name": "eve"}])
    assert "messages[0]" in raised.value.message and "name" in raised.value.message
