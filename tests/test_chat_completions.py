"""A stream of chunks adds up to the `chat.completion` that `stream: false` answers with."""

from __future__ import annotations

import orjson

from streaming.chat_completions import assemble_chat_completion
from streaming.openai_shapes import ChunkFactory, chat_completion, tool_call
from tests.live_site import MODEL


def assemble(*chunks: bytes) -> dict:
    return assemble_chat_completion(orjson.loads(chunk) for chunk in chunks)


def test_text_pieces_add_up_to_one_message_with_usage():
    chunks = ChunkFactory(MODEL)
    completion = assemble(
        chunks.role(), chunks.content("Hel"), chunks.content("lo"), chunks.finish("stop"), chunks.usage(12, 2)
    )
    expected = chat_completion(chunks, "Hello", "stop", 12, 2)
    assert {key: completion[key] for key in expected} | {"choices": None} == expected | {"choices": None}
    choice = completion["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == "Hello"
    assert choice["finish_reason"] == "stop" and choice["index"] == 0


def test_tool_calls_in_pieces_and_whole_are_joined_by_index_without_the_sdks_parse_fields():
    chunks = ChunkFactory(MODEL)
    completion = assemble(
        chunks.role(None),
        chunks.tool_call_start(0, "call_a", "get_weather"),
        chunks.tool_call_arguments(0, '{"city":'),
        chunks.tool_call_arguments(0, '"Oslo"}'),
        chunks.whole_tool_call(1, "call_b", "get_time", '{"tz":"CET"}'),
        chunks.finish("tool_calls"),
        chunks.usage(30, 12),
    )
    message = completion["choices"][0]["message"]
    assert message["tool_calls"] == [
        tool_call("call_a", "get_weather", '{"city":"Oslo"}'),
        tool_call("call_b", "get_time", '{"tz":"CET"}'),
    ]
    assert "parsed" not in message and message["content"] is None
    assert completion["choices"][0]["finish_reason"] == "tool_calls"


def test_a_refusal_is_kept_as_the_messages_refusal():
    chunks = ChunkFactory(MODEL)
    completion = assemble(chunks.role(), chunks.refusal("I can't "), chunks.refusal("help."), chunks.finish())
    assert completion["choices"][0]["message"]["refusal"] == "I can't help."
