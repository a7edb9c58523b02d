"""The official openai npm client reads the site's streams: Node → daphne (child process) → fake upstream.

Each test scripts the fake upstream's reply, then runs the test of the same name in
tests/node_interop/interop.test.mjs, which logs in over HTTP as a browser does and reads the
answer with the SDK's own readers (`ChatCompletionStream.fromReadableStream` for NDJSON,
`Stream.fromSSEResponse` for SSE). One Node test per run keeps the order of upstream requests
obvious. The npm package comes from `npm ci` in tests/node_interop (done by .ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.fake_upstream import Reply
from tests.live_site import BASE_DIR, PASSWORD, skip_or_fail

NODE_DIR = BASE_DIR / "tests" / "node_interop"
PIECES = ["Hel", "lo", " there", " — ünïcode ✓", "!"]
PACE = 0.1  # seconds between the upstream's chunks
USAGE = (21, 9)


def run_node_test(name: str, site, expected: dict) -> str:
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not installed")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        skip_or_fail("the openai npm package is not installed: run `npm ci` in tests/node_interop")
    env = {
        **os.environ,
        "CHATPROXY_URL": site.url,
        "CHATPROXY_USERNAME": "alice",
        "CHATPROXY_PASSWORD": PASSWORD,
        "CHATPROXY_EXPECTED": json.dumps(expected),
    }
    command = [
        node,
        "--test",
        "--test-concurrency=1",
        "--test-reporter=tap",
        f"--test-name-pattern=^{re.escape(name)}$",
        "interop.test.mjs",
    ]
    try:
        result = subprocess.run(command, cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"the Node test did not finish in 60 s:\n{timeout.stdout}\n{timeout.stderr}")
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"the Node test failed:\n{output}"
    assert "# pass 1" in output and "# fail 0" in output, f"no Node test named {name!r} ran:\n{output}"
    return output


@pytest.mark.parametrize(
    "name",
    [
        "ndjson: ChatCompletionStream.fromReadableStream reads the answer as it streams",
        "sse: Stream.fromSSEResponse reads the answer as it streams",
    ],
)
def test_the_sdk_reads_the_answer_its_usage_and_each_delta_as_it_arrives(live_site, fake_upstream, user, name):
    fake_upstream.will_reply(Reply(pieces=PIECES, delay=PACE, usage=USAGE))
    prompt, completion = USAGE
    expected = {
        "pieces": PIECES,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        # The upstream sends the pieces PACE apart: they must arrive spread out, at least half as much.
        "min_spread_ms": int(1000 * PACE * (len(PIECES) - 1) / 2),
    }

    run_node_test(name, live_site, expected)

    assert len(fake_upstream.requests) == 1
    assert fake_upstream.requests[0].json()["messages"] == [{"role": "user", "content": "Say hello."}]


@pytest.mark.parametrize(
    "name",
    [
        "ndjson: an error line mid-stream rejects the answer with an APIError",
        "sse: an error event mid-stream throws an APIError from the Stream",
    ],
)
def test_an_error_mid_stream_reaches_the_sdk_as_an_error(live_site, fake_upstream, user, name):
    fake_upstream.will_reply(Reply(pieces=["one", " two", " three"], error_after=2, delay=0.05))

    run_node_test(name, live_site, {"pieces": ["one", " two"], "error": "The model crashed mid-answer."})

    assert len(fake_upstream.requests) == 1
