"""openai-node against the site's /v1 with a personal API key: Node → daphne (child process) → fake upstream.

Each test scripts the fake upstream, then runs the `v1: ...` test of that name in
tests/node_interop/interop.test.mjs with `new OpenAI({ baseURL: <site>/v1, apiKey })`; the README's
Node snippet runs as it is written, against the demo model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.fake_upstream import Reply, ScriptedToolCall
from tests.live_site import MODEL, OTHER_MODEL, readme_code_blocks, skip_or_fail, v1_url, wait_for_rows
from tests.test_node_interop import NODE_DIR, run_node_test

PIECES = ["Hel", "lo", " there", " — ünïcode ✓", "!"]
USAGE = (21, 9)
CITY_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_CALL = ScriptedToolCall("call_w3ather0001", "get_weather", ('{"ci', 'ty": "Par', 'is"}'))
TIME_CALL = ScriptedToolCall("call_t1me000002", "get_local_time", ('{"city"', ': "Lyon"', "}"))


def run_v1_node_test(name: str, site, api_key: str, expected: dict) -> str:
    return run_node_test(name, site, expected, extra_env={"CHATPROXY_API_KEY": api_key})


def test_the_node_sdk_streams_an_answer_and_its_usage(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=PIECES, delay=0.02, usage=USAGE))
    prompt, completion = USAGE
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    run_v1_node_test(
        "v1: the SDK streams an answer with a bearer key",
        live_site,
        api_key,
        {"model": OTHER_MODEL, "pieces": PIECES, "usage": usage},
    )

    assert fake_upstream.requests[-1].json()["model"] == OTHER_MODEL
    [row] = wait_for_rows(user)
    assert row.status == "completed" and row.api_key is not None and row.api_key.name == "test key"


def test_an_error_mid_stream_reaches_the_node_sdk_as_an_api_error(live_site, fake_upstream, user, api_key):
    fake_upstream.will_reply(Reply(pieces=["one", " two", " three"], error_after=2, delay=0.02))

    run_v1_node_test(
        "v1: an error mid-stream throws an APIError",
        live_site,
        api_key,
        {"model": MODEL, "pieces": ["one", " two"], "error": "The model crashed mid-answer."},
    )

    assert [row.status for row in wait_for_rows(user)] == ["error"]


@pytest.mark.parametrize("whole", [False, True], ids=["streamed-in-pieces", "whole-in-one-delta"])
def test_the_node_stream_helper_reassembles_streamed_tool_calls(live_site, fake_upstream, user, api_key, whole):
    calls = [WEATHER_CALL, TIME_CALL]
    fake_upstream.will_reply(Reply(pieces=[], tool_calls=calls, whole_tool_calls=whole, delay=0.01))
    tools = [
        {"type": "function", "function": {"name": call.name, "parameters": CITY_PARAMETERS, "strict": True}}
        for call in calls
    ]
    request = {"model": MODEL, "messages": [{"role": "user", "content": "Paris and Lyon?"}], "tools": tools}

    run_v1_node_test(
        "v1: chat.completions.stream reassembles streamed tool calls",
        live_site,
        api_key,
        {"request": request, "tool_calls": [call.as_message_tool_call() for call in calls]},
    )

    [row] = wait_for_rows(user)
    assert (row.finish_reason, row.tool_calls) == ("tool_calls", 2)


def test_node_run_tools_sends_the_result_back_and_gets_the_final_answer(live_site, fake_upstream, user, api_key):
    final = ["It is ", "14:05", " in Lyon."]
    fake_upstream.will_reply(Reply(pieces=[], tool_calls=[TIME_CALL]), Reply(pieces=final))

    run_v1_node_test(
        "v1: runTools runs the tool and ends in the final answer",
        live_site,
        api_key,
        {"model": MODEL, "final_text": "".join(final)},
    )

    assert len(fake_upstream.requests) == 2
    tool_message = fake_upstream.requests[1].json()["messages"][-1]
    assert tool_message == {"role": "tool", "tool_call_id": TIME_CALL.id, "content": '{"city":"Lyon","time":"14:05"}'}
    rows = wait_for_rows(user, count=2)
    assert [(row.status, row.api_key is not None) for row in rows] == [("completed", True)] * 2


def test_refusals_are_the_node_sdks_error_classes(live_site, fake_upstream, api_key):
    run_v1_node_test(
        "v1: refusals are the SDK's error classes",
        live_site,
        api_key,
        {"models": [MODEL, OTHER_MODEL], "bad_key": "chp_00000000_" + "A" * 43},
    )

    assert fake_upstream.requests == []


def test_the_readmes_node_snippet_streams_an_answer_from_the_demo_model(demo_site, api_key):
    [snippet] = readme_code_blocks("## Use it from code", "js", "javascript")
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not installed")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        skip_or_fail("the openai npm package is not installed: run `npm ci` in tests/node_interop")
    env = {**os.environ, "OPENAI_BASE_URL": v1_url(demo_site), "OPENAI_API_KEY": api_key}

    # Inside tests/node_interop, so that `import OpenAI from "openai"` finds its node_modules.
    with tempfile.TemporaryDirectory(dir=NODE_DIR, prefix=".readme-") as directory:
        script = Path(directory) / "snippet.mjs"
        script.write_text(snippet)
        result = subprocess.run([node, script], env=env, capture_output=True, text=True, timeout=30, check=False)

    assert result.returncode == 0, result.stderr
    assert "I am the chatproxy demo model" in result.stdout
    assert 'You wrote: "Say hello."' in result.stdout
