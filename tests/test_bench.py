"""Tests of the benchmark harness (bench/): its text verification, and a smoke run end to end.

The smoke run only happens under CI or with BENCH_SMOKE=1 (BENCH_SMOKE=0 turns it off under CI too,
as CI's second run does: the benchmark brings its own SQLite site, so the first run covered it),
since it starts several processes for about 40 s. Nothing here asserts a speed: timings on a
shared machine are not a test result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.answers import MODEL, StreamSpec
from bench.http_client import Exchange
from bench.run import ttfb_attribution
from bench.site import SERVERS
from bench.transcript import read_transcript, verification_problems
from bench.upstream import render_answer, render_response
from bench.workloads import RunMetrics, SoakMetrics, median_metrics

BASE_DIR = Path(__file__).resolve().parent.parent

_smoke = os.environ.get("BENCH_SMOKE")
smoke_test = pytest.mark.skipif(
    not (_smoke == "1" or (os.environ.get("CI") and _smoke != "0")),
    reason="benchmark smoke test: set BENCH_SMOKE=1 (CI runs it once)",
)


def _sse_events(spec: StreamSpec, api: str = "chat") -> list[bytes]:
    """The fake upstream's SSE events for `spec` (chat chunks, or Responses events with their
    `event:` line), blank line included: what `/v1` relays as it is."""
    frames = render_response(spec, MODEL) if api == "responses" else render_answer(spec, MODEL, include_usage=True)
    body = b""
    for frame in frames:
        while frame:
            size, _, rest = frame.partition(b"\r\n")
            length = int(size, 16)
            body += rest[:length]
            frame = rest[length + 2 :]
    return [event + b"\n\n" for event in body.split(b"\n\n") if event]


def _relayed_lines(spec: StreamSpec, api: str = "chat") -> list[bytes]:
    """The NDJSON lines a correct relay sends on the page's API for the fake upstream's answer to `spec`."""
    events = [event.strip().rpartition(b"\n")[2].removeprefix(b"data: ") for event in _sse_events(spec, api)]
    return [event + b"\n" for event in events if event != b"[DONE]"]


def _problems(spec: StreamSpec, lines: list[bytes], sse: bool = False, api: str = "chat") -> list[str]:
    exchange = Exchange(sent_at=1.0, first_byte_at=1.1, ended_at=2.0, status=200)
    exchange.pieces = [(1.1 + index / 1000, line) for index, line in enumerate(lines)]
    return verification_problems(spec, exchange, read_transcript(exchange), sse=sse, api=api)


def test_verification_passes_a_faithful_relay() -> None:
    spec = StreamSpec.new(chunks=30, delay_ms=0)
    assert _problems(spec, _relayed_lines(spec)) == []


def test_verification_passes_a_faithful_v1_stream_and_catches_a_missing_done_marker() -> None:
    spec = StreamSpec.new(chunks=30, delay_ms=0)
    events = _sse_events(spec)
    assert events[-1] == b"data: [DONE]\n\n"
    assert _problems(spec, events, sse=True) == []
    assert _problems(spec, events[:-1], sse=True) == ["no data: [DONE]"]


def test_verification_catches_a_dropped_chunk() -> None:
    spec = StreamSpec.new(chunks=30, delay_ms=0)
    lines = _relayed_lines(spec)
    del lines[5]
    assert any("text differs" in problem for problem in _problems(spec, lines))


def test_verification_catches_merged_chunks() -> None:
    spec = StreamSpec.new(chunks=30, delay_ms=0)
    lines = _relayed_lines(spec)
    first, second = orjson.loads(lines[3]), orjson.loads(lines[4])
    first["choices"][0]["delta"]["content"] += second["choices"][0]["delta"]["content"]
    lines[3:5] = [orjson.dumps(first) + b"\n"]
    assert any("dropped or merged" in problem for problem in _problems(spec, lines))


def test_verification_catches_a_chunk_of_another_stream_and_a_missing_usage_chunk() -> None:
    spec, other = StreamSpec.new(chunks=30, delay_ms=0), StreamSpec.new(chunks=30, delay_ms=0)
    lines = _relayed_lines(spec)
    lines[7] = lines[7].replace(spec.completion_id.encode(), other.completion_id.encode())
    problems = _problems(spec, lines[:-1])
    assert any("another stream" in problem for problem in problems)
    assert any("usage" in problem for problem in problems)


def test_verification_passes_a_faithful_responses_relay_in_ndjson_and_sse() -> None:
    spec = StreamSpec.new(chunks=30, delay_ms=0)
    lines = _relayed_lines(spec, "responses")
    types = [orjson.loads(line)["type"] for line in lines]
    assert types.count("response.output_text.delta") == 30
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert _problems(spec, lines, api="responses") == []
    events = _sse_events(spec, "responses")
    assert events[0].startswith(b"event: response.created\ndata: {")
    assert _problems(spec, events, sse=True, api="responses") == []


def test_responses_verification_catches_a_dropped_and_a_merged_text_delta() -> None:
    spec = StreamSpec.new(chunks=30, delay_ms=0)
    lines = _relayed_lines(spec, "responses")
    dropped = lines[:10] + lines[11:]
    problems = _problems(spec, dropped, api="responses")
    assert any("text differs" in problem for problem in problems)
    assert any("sequence_number" in problem for problem in problems)
    first, second = orjson.loads(lines[10]), orjson.loads(lines[11])
    first["delta"] += second["delta"]
    merged = [*lines[:10], orjson.dumps(first) + b"\n", *lines[12:]]
    assert any("dropped or merged" in problem for problem in _problems(spec, merged, api="responses"))


def test_responses_verification_catches_another_streams_event_a_missing_end_and_a_misnamed_event() -> None:
    spec, other = StreamSpec.new(chunks=30, delay_ms=0), StreamSpec.new(chunks=30, delay_ms=0)
    lines = _relayed_lines(spec, "responses")
    lines[7] = lines[7].replace(spec.item_id.encode(), other.item_id.encode())
    problems = _problems(spec, lines[:-1], api="responses")
    assert any("another stream" in problem for problem in problems)
    assert any("expected response.completed" in problem for problem in problems)
    assert any("usage" in problem for problem in problems)
    events = _sse_events(spec, "responses")
    events[5] = events[5].replace(b"event: response.output_text.delta", b"event: response.output_text.done", 1)
    assert _problems(spec, events, sse=True, api="responses") == ["1 SSE event name(s) that are not the event's type"]


def test_verification_refuses_a_chat_stream_where_responses_events_are_expected_and_back() -> None:
    spec = StreamSpec.new(chunks=30, delay_ms=0)
    assert any("expected response.completed" in p for p in _problems(spec, _relayed_lines(spec), api="responses"))
    assert any("Responses event(s)" in p for p in _problems(spec, _relayed_lines(spec, "responses")))


def test_uvicorn_runs_in_the_production_configuration() -> None:
    command = SERVERS["uvicorn"].command(8000)
    for option, value in (("--loop", "uvloop"), ("--http", "httptools"), ("--lifespan", "off")):
        assert command[command.index(option) + 1] == value
    assert "--no-access-log" in command and command[-1] == "chatproxy.asgi:application"
    assert SERVERS["uvicorn"].requires == ("uvloop", "httptools")


def test_ttfb_attribution_splits_the_proxied_time_to_first_byte() -> None:
    direct = RunMetrics(target="direct", ttfb_p50=0.0002)
    proxy = RunMetrics(
        target="proxy",
        ttfb_p50=0.0084,
        server_timing_p50={"auth": 0.0016, "admission": 0.0008, "upstream": 0.0010, "proxy": 0.0028},
    )
    attribution = ttfb_attribution(direct, proxy)
    assert attribution["ttfb_added"] == pytest.approx(0.0082)
    assert attribution["outside_view"] == pytest.approx(0.0084 - 0.0028 - 0.0010)
    assert attribution["upstream_minus_direct"] == pytest.approx(0.0008)
    assert ttfb_attribution(direct, RunMetrics(target="proxy", ttfb_p50=0.01))["outside_view"] is None


def test_median_of_repeated_runs_keeps_each_processs_cpu_share() -> None:
    runs = [RunMetrics(target="proxy", server_cpu_shares=[share, share / 2]) for share in (0.2, 0.4, 0.6)]
    assert median_metrics(runs).server_cpu_shares == [0.4, 0.2]


def _soak(samples: list[tuple[float, int]], seconds: float = 600) -> SoakMetrics:
    return SoakMetrics(seconds, 200, 0.2, 100 << 20, samples, 5.0, 20_000, 5_000, 0, [], 256.0)


def test_soak_slope_is_fitted_over_the_second_half_only() -> None:
    # A steep warm-up, then flat with allocator noise: flat.
    warm_up = [(t, (100 << 20) + t * 100_000) for t in range(0, 300, 10)]
    plateau = [(t, (130 << 20) + (4096 if t % 20 else 0)) for t in range(300, 610, 10)]
    flat = _soak(warm_up + plateau)
    assert abs(flat.slope_kib_per_minute or 0) < 10 and flat.verdict == "flat"
    # 1 MiB a minute in the second half: growing.
    growing = _soak([(t, (130 << 20) + t * (1 << 20) // 60) for t in range(0, 610, 10)])
    assert growing.slope_kib_per_minute == pytest.approx(1024, rel=0.01) and growing.verdict == "growing"
    assert _soak(plateau, seconds=30).verdict.startswith("too short")
    summary = flat.as_dict()
    assert summary["start_rss_bytes"] == warm_up[1][1] and summary["max_rss_bytes"] == max(r for _, r in plateau)


@smoke_test
def test_quick_benchmark_runs_end_to_end_with_verified_text(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench", "--quick", "--server", "daphne", "--processes", "2"]
    result = subprocess.run(
        [*command, "--results-dir", str(tmp_path)],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-5000:]}"
    assert result.returncode == 0, output
    assert "Text verification: **passed**" in result.stdout, output
    assert "| server | TTFB p50 / p99 ms |" in result.stdout, output
    assert "| daphne | latency" in result.stdout, output
    assert "| daphne | proxy /v1 (bearer key) |" in result.stdout, output

    reports = sorted(tmp_path.glob("*.json"))
    assert len(reports) == 1 and reports[0].with_suffix(".md").exists()
    results = json.loads(reports[0].read_text())
    assert results["verification"]["passed"] is True
    assert results["verification"]["streams_checked"] > 0
    daphne = results["servers"]["daphne"]
    for target in ("proxy", "proxy_v1"):
        assert daphne["latency"][target]["streams"] > 0
        assert daphne["latency"][target]["failed_streams"] == 0
        assert daphne["request_rate"][target]["failed_streams"] == 0
        assert daphne["cpu_bound"][target]["content_chunks"] > 0
    assert daphne["aborts"]["proxy"]["aborts"] > 0

    # The Responses API row: the paced and CPU-bound workloads, as Responses events, verified.
    assert "## Responses API" in result.stdout, output
    assert "| daphne | CPU-bound 200×0 ms | 4 | Responses |" in result.stdout, output
    assert "| daphne | CPU-bound 200×0 ms (Responses) | 4 | proxy Responses (session) |" in result.stdout, output
    responses = daphne["responses"]
    assert responses["paced"]["concurrency"] == 10
    for workload in ("paced", "cpu_bound"):
        for target in ("direct_responses", "proxy_responses"):
            run = responses[workload][target]
            assert run["streams"] > 0 and run["failed_streams"] == 0, run
    assert responses["cpu_bound"]["proxy_responses"]["content_chunks"] == 4 * 200

    # Where the time to first byte goes: the Server-Timing phases and what lies outside the view.
    assert "## Where the time to first byte goes" in result.stdout, output
    for target in ("proxy", "proxy_v1"):
        attribution = daphne["ttfb_attribution"][target]
        for key in ("ttfb_p50", "ttfb_p50_direct", "auth", "admission", "upstream", "proxy", "outside_view"):
            assert attribution[key] is not None, (target, key, attribution)

    # Memory at each level (quick: 10 and 20 streams), the summary at the level it names.
    assert "| RSS KiB per open stream, 20 streams |" in result.stdout, output
    memory = daphne["memory"]
    assert [level["streams"] for level in memory["levels"]] == [10, 20] and memory["summary_streams"] == 20
    for level in memory["levels"]:
        assert level["failed_streams"] == 0 and level["open_together"] > 0, level

    # How the cost grows: one-chunk requests and paced streams at each level, verified.
    assert "## How the cost grows" in result.stdout, output
    scaling = daphne["scaling"]["levels"]
    assert [level["concurrency"] for level in scaling] == [1, 4]
    for level in scaling:
        for run in (level["requests"], level["paced"]):
            assert run["streams"] > 0 and run["failed_streams"] == 0, run
        assert level["requests"]["streams"] == level["concurrency"] * level["request_rounds"]
        assert level["paced_verdict"]

    # One process or two: the paced levels against two processes, users alternating, verified.
    assert "## One process or two" in result.stdout, output
    two = daphne["two_processes"]
    assert two["levels"] and two["levels"][0]["concurrency"] == 10
    for level in two["levels"]:
        assert level["proxy"]["streams"] > 0 and level["proxy"]["failed_streams"] == 0, level
        assert len(level["proxy"]["server_cpu_shares"]) in (0, 2)

    # The tiny soak: streams kept open and reopened, some aborted, every one verified, RSS sampled.
    assert "## Soak" in result.stdout, output
    soak = daphne["soak"]
    assert soak["completed"] > 0 and soak["aborted"] > 0 and soak["failed_streams"] == 0, soak
    assert soak["started"] == soak["completed"] + soak["aborted"] + soak["failed_streams"]
    assert len(soak["samples"]) >= 3 and soak["max_rss_bytes"] >= soak["end_rss_bytes"] > 0
    assert soak["verdict"].startswith("too short")
