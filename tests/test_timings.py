"""What the proxy says of its own overhead: each stream's Server-Timing header, and the same figures
in its request log line (the phase histogram is checked with the other metrics)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from bench.workloads import server_timing
from streaming.timings import RequestTimings
from tests.fake_upstream import Reply
from tests.live_site import MODEL, STREAM_URL, LiveSite, v1_url, wait_for_rows

BODY = {"messages": [{"role": "user", "content": "Say hello."}]}
PHASES = ["auth", "admission", "upstream", "proxy"]


def test_the_phases_are_the_marks_apart_and_the_proxys_part_leaves_out_the_upstream():
    timings = RequestTimings(
        entered=10.0, authenticated=10.001, admitted=10.003, upstream_called=10.0035, upstream_answered=10.0535
    )
    timings.opened = 10.0545
    assert timings.phases() == pytest.approx({"auth": 0.001, "admission": 0.002, "upstream": 0.05, "proxy": 0.0045})
    assert timings.server_timing() == (
        'auth;dur=1.0;desc="authentication", '
        'admission;dur=2.0;desc="validation, limits and the usage row", '
        'upstream;dur=50.0;desc="the upstream until its headers", '
        'proxy;dur=4.5;desc="the proxy\'s own part"'
    )


def test_a_request_refused_at_its_front_knows_only_how_long_that_took():
    timings = RequestTimings(entered=5.0)
    assert timings.phases() == {}
    timings.authenticated = 5.002
    assert timings.milliseconds() == {"auth_ms": 2.0, "admission_ms": None, "upstream_ms": None, "proxy_ms": None}


def request_line(site: LiveSite, upstream_request_id: str, timeout: float = 5.0) -> dict:
    """The site's request log line of the request the upstream knows by this id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in site.log().splitlines():
            if upstream_request_id in line and line.startswith("{"):
                return json.loads(line)
        time.sleep(0.05)
    raise AssertionError(f"no request log line for {upstream_request_id}")


@pytest.mark.parametrize("front", ["session", "api key"])
def test_a_stream_says_where_its_time_went_and_its_log_line_says_the_same(
    live_site, site_client, api_key, fake_upstream, user, front
):
    fake_upstream.will_reply(Reply(first_delay=0.05))
    if front == "session":
        response = site_client.post(STREAM_URL, json=BODY)
    else:
        response = httpx.post(
            f"{v1_url(live_site)}/chat/completions",
            json={**BODY, "model": MODEL, "stream": True},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        )
    assert response.status_code == 200
    durations = server_timing(response.headers["server-timing"])
    assert list(durations) == PHASES
    # The upstream took its 50 ms before its headers; the proxy's own part leaves that out.
    assert 0.05 <= durations["upstream"] < 1
    assert durations["proxy"] >= durations["auth"] + durations["admission"] > 0
    assert durations["proxy"] < durations["upstream"] + 1

    row = wait_for_rows(user)[-1]
    line = request_line(live_site, row.upstream_request_id)
    assert {phase: line[f"{phase}_ms"] / 1000 for phase in PHASES} == pytest.approx(durations, abs=1e-6)
