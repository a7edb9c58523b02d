"""Prometheus metrics at /metrics: scraped from the live site before and after requests, and access.

The metrics site runs with CHAT_METRICS=token; `live_site` (CHAT_METRICS unset) shows the default,
staff sessions. Two processes sharing PROMETHEUS_MULTIPROC_DIR must add up to what happened on both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from bench.workloads import server_timing
from streaming.models import ModelPrice, UsageLimit, UsageLog
from tests.fake_upstream import Reply
from tests.live_site import (
    LIVE_SITE_DB_APPLICATION,
    MODEL,
    OTHER_MODEL,
    STREAM_URL,
    TEST_API_KEY,
    LiveSite,
    live_site_environment,
    logged_in_client,
    wait_for_rows,
)

METRICS_TOKEN = "metrics-token-4f1c9a7e2b"
BODY = {"messages": [{"role": "user", "content": "Say hello."}]}
CHAT = UsageLog.Endpoint.CHAT_COMPLETIONS.value

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_environment(base_url: str, application: str, **extra: str) -> dict[str, str]:
    return live_site_environment(
        application,
        OPENAI_API_KEY=TEST_API_KEY,
        OPENAI_BASE_URL=base_url,
        CHAT_DEFAULT_MODEL=MODEL,
        CHAT_ALLOWED_MODELS=f"{MODEL},{OTHER_MODEL}",
        CHAT_METRICS="token",
        CHAT_METRICS_TOKEN=METRICS_TOKEN,
        **extra,
    )


@pytest.fixture(scope="module")
def metrics_site(django_db_setup, fake_upstream_server, tmp_path_factory) -> Iterator[LiveSite]:
    """One process, its metrics in its own registry, scraped with the token."""
    folder = tmp_path_factory.mktemp("metrics-site")
    site = LiveSite(folder / "daphne.log", metrics_environment(fake_upstream_server.base_url, LIVE_SITE_DB_APPLICATION))
    yield site
    site.stop()


@pytest.fixture
def client(metrics_site, user) -> Iterator[httpx.Client]:
    client = logged_in_client(metrics_site, user)
    yield client
    client.close()


def scrape(site: LiveSite) -> Samples:
    response = httpx.get(f"{site.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(site: LiveSite, settled: Callable[[Samples], bool], timeout: float = 5.0) -> Samples:
    """The site's metrics once `settled` holds (a request is counted just after its usage row)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(site)
        if settled(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def requests(samples: Samples, outcome: str, model: str = MODEL) -> float:
    return value(samples, "chatproxy_requests_total", endpoint=CHAT, model=model, outcome=outcome)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_a_completed_stream_counts_its_request_tokens_cost_and_timings(metrics_site, client, fake_upstream, user):
    ModelPrice.objects.create(
        model=MODEL,
        input_per_million=Decimal("2"),
        output_per_million=Decimal("8"),
        valid_from=timezone.now() - timedelta(days=1),
    )
    fake_upstream.will_reply(Reply(pieces=["Hello", " there"], usage=(11, 7)))
    before = scrape(metrics_site)

    with client.stream("POST", STREAM_URL, json=BODY) as response:
        assert response.status_code == 200
        response.read()
    phases = server_timing(response.headers["server-timing"])
    row = wait_for_rows(user)[-1]
    after = scrape_until(metrics_site, lambda s: requests(s, "completed") > requests(before, "completed"))

    assert row.status == "completed" and row.cost == Decimal("0.00007800")
    assert row.time_to_first_token_ms is not None
    assert moved(before, after, "chatproxy_requests_total", endpoint=CHAT, model=MODEL, outcome="completed") == 1
    assert moved(before, after, "chatproxy_tokens_total", model=MODEL, kind="prompt") == 11
    assert moved(before, after, "chatproxy_tokens_total", model=MODEL, kind="completion") == 7
    assert moved(before, after, "chatproxy_cost_total", model=MODEL, currency="USD") == pytest.approx(0.000078)
    assert moved(before, after, "chatproxy_time_to_first_token_seconds_count", model=MODEL) == 1
    ttft = moved(before, after, "chatproxy_time_to_first_token_seconds_sum", model=MODEL)
    assert ttft == pytest.approx(row.time_to_first_token_ms / 1000, abs=0.001)
    assert moved(before, after, "chatproxy_relay_request_overhead_seconds_count") == 1
    assert moved(before, after, "chatproxy_relay_first_byte_overhead_seconds_count") == 1
    assert 0 < moved(before, after, "chatproxy_relay_first_byte_overhead_seconds_sum") < 0.5
    # Where the request's time went, as its Server-Timing header said.
    assert sorted(phases) == ["admission", "auth", "proxy", "upstream"]
    for phase, seconds in phases.items():
        assert moved(before, after, "chatproxy_request_phase_seconds_count", phase=phase) == 1
        assert moved(before, after, "chatproxy_request_phase_seconds_sum", phase=phase) == pytest.approx(
            seconds, abs=1e-5
        )
    assert value(after, "chatproxy_open_streams") == 0


def test_an_unpriced_model_counts_no_cost_but_an_unpriced_request(metrics_site, client, fake_upstream, user):
    before = scrape(metrics_site)
    response = client.post(STREAM_URL, json={**BODY, "model": OTHER_MODEL})
    assert response.status_code == 200
    assert wait_for_rows(user)[-1].price_missing
    after = scrape_until(
        metrics_site, lambda s: requests(s, "completed", OTHER_MODEL) > requests(before, "completed", OTHER_MODEL)
    )

    assert moved(before, after, "chatproxy_unpriced_requests_total", model=OTHER_MODEL) == 1
    assert moved(before, after, "chatproxy_cost_total", model=OTHER_MODEL, currency="USD") == 0


def test_an_open_stream_is_counted_until_the_client_leaves(metrics_site, client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=[f"word{i} " for i in range(100)], delay=0.1))
    before = scrape(metrics_site)

    with client.stream("POST", STREAM_URL, json=BODY) as response:
        lines = response.iter_lines()
        for _ in range(3):
            while not next(lines).strip():
                pass
        during = scrape(metrics_site)
    assert wait_for_rows(user)[-1].status == "cancelled"
    after = scrape_until(metrics_site, lambda s: requests(s, "cancelled") > requests(before, "cancelled"))

    assert value(during, "chatproxy_open_streams") == 1
    assert value(after, "chatproxy_open_streams") == 0
    assert moved(before, after, "chatproxy_requests_total", endpoint=CHAT, model=MODEL, outcome="cancelled") == 1
    assert moved(before, after, "chatproxy_requests_total", endpoint=CHAT, model=MODEL, outcome="completed") == 0


def test_a_request_refused_by_a_limit_counts_the_refusal_and_its_limit(metrics_site, client, fake_upstream, user):
    UsageLimit.objects.create(user=user, requests_per_minute=1, concurrent_streams=0)
    before = scrape(metrics_site)

    assert client.post(STREAM_URL, json=BODY).status_code == 200
    refused = client.post(STREAM_URL, json=BODY)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "requests_per_minute"
    after = scrape_until(metrics_site, lambda s: requests(s, "completed") > requests(before, "completed"))

    assert moved(before, after, "chatproxy_requests_total", endpoint=CHAT, model="", outcome="refused") == 1
    assert moved(before, after, "chatproxy_refused_requests_total", endpoint=CHAT, code="requests_per_minute") == 1
    assert moved(before, after, "chatproxy_limit_refusals_total", limit="requests_per_minute") == 1
    assert moved(before, after, "chatproxy_requests_total", endpoint=CHAT, model=MODEL, outcome="completed") == 1
    assert len(wait_for_rows(user)) == 1  # the refusal has no row, only the metric


def test_an_invalid_request_counts_as_refused_with_its_code(metrics_site, client):
    before = scrape(metrics_site)
    response = client.post(STREAM_URL, json={"messages": []})
    assert response.status_code == 400
    code = response.json()["error"]["code"]
    after = scrape(metrics_site)

    assert moved(before, after, "chatproxy_refused_requests_total", endpoint=CHAT, code=code) == 1
    assert moved(before, after, "chatproxy_limit_refusals_total", limit="requests_per_minute") == 0


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(pieces=["one", " two", " three"], error_after=1), "upstream_stream_error"),
        (Reply(status=429, error_headers={"retry-after": "3"}), "upstream_rate_limited"),
    ],
    ids=["mid-stream", "refused-upstream"],
)
def test_an_upstream_error_counts_an_error_request_by_its_code(metrics_site, client, fake_upstream, user, reply, code):
    fake_upstream.will_reply(reply)
    before = scrape(metrics_site)

    with client.stream("POST", STREAM_URL, json=BODY) as response:
        body = response.read().decode()
    assert code in body
    assert wait_for_rows(user)[-1].status == "error"
    after = scrape_until(metrics_site, lambda s: requests(s, "error") > requests(before, "error"))

    assert moved(before, after, "chatproxy_requests_total", endpoint=CHAT, model=MODEL, outcome="error") == 1
    assert moved(before, after, "chatproxy_upstream_errors_total", code=code) == 1
    assert value(after, "chatproxy_open_streams") == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": METRICS_TOKEN}],
    ids=["no-token", "wrong-token", "no-bearer"],
)
def test_metrics_need_the_token_in_token_mode(metrics_site, headers):
    response = httpx.get(f"{metrics_site.url}/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "metrics_token_required"
    assert "chatproxy_requests_total" not in response.text


def test_a_staff_session_is_not_enough_in_token_mode(metrics_site, user):
    user.is_staff = True
    user.save()
    with closing(logged_in_client(metrics_site, user)) as staff:
        assert staff.get("/metrics").status_code == 401


def test_by_default_only_staff_sessions_read_the_metrics(live_site, user):
    assert httpx.get(f"{live_site.url}/metrics").status_code == 401
    with closing(logged_in_client(live_site, user)) as alice:
        refused = alice.get("/metrics")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "metrics_not_permitted"
        user.is_staff = True
        user.save()
        allowed = alice.get("/metrics")
    assert allowed.status_code == 200 and "chatproxy_open_streams" in allowed.text
    assert "process_resident_memory_bytes" in allowed.text  # one process: the default registry's own collectors


def test_metrics_can_be_turned_off(settings, db):
    settings.CHAT_METRICS = "off"
    assert Client().get("/metrics").status_code == 404


@pytest.fixture(scope="module")
def two_sites(django_db_setup, fake_upstream_server, tmp_path_factory) -> Iterator[list[LiveSite]]:
    """Two server processes sharing one (empty) PROMETHEUS_MULTIPROC_DIR, as in production."""
    folder = tmp_path_factory.mktemp("metrics-two-sites")
    shared = folder / "prometheus"
    shared.mkdir()
    environment = metrics_environment(
        fake_upstream_server.base_url, "chatproxy-metrics-two-sites", PROMETHEUS_MULTIPROC_DIR=str(shared)
    )
    sites = [LiveSite(folder / f"daphne-{n}.log", environment) for n in (1, 2)]
    yield sites
    for site in sites:
        site.stop()


def test_several_processes_add_up_in_multiprocess_mode(two_sites, fake_upstream, user):
    """Each process writes its values to the shared directory; a scrape of either adds up all of them.

    Nothing here needs the processes to share limit counters, so unlike tests/test_scale_out.py
    this runs on the embedded defaults too."""
    first, second = two_sites
    UsageLimit.objects.create(user=user, requests_per_minute=0, concurrent_streams=0)
    clients = [logged_in_client(site, user) for site in two_sites]
    try:
        before = scrape(first)
        for client in (clients[0], clients[0], clients[1]):
            assert client.post(STREAM_URL, json=BODY).status_code == 200
        prompt_tokens = sum(row.prompt_tokens for row in wait_for_rows(user, 3))
        settled = scrape_until(second, lambda s: requests(s, "completed") - requests(before, "completed") >= 3)
        settled_first = scrape(first)

        fake_upstream.will_reply(Reply(pieces=[f"word{i} " for i in range(100)], delay=0.1))
        with clients[0].stream("POST", STREAM_URL, json=BODY) as response:
            lines = response.iter_lines()
            while not json.loads(next(lines) or "{}").get("choices"):
                pass
            during = scrape(second)
        wait_for_rows(user, 4)
        after = scrape_until(first, lambda s: requests(s, "cancelled") > requests(before, "cancelled"))
    finally:
        for client in clients:
            client.close()

    for samples in (settled, settled_first):
        assert moved(before, samples, "chatproxy_requests_total", endpoint=CHAT, model=MODEL, outcome="completed") == 3
        assert moved(before, samples, "chatproxy_tokens_total", model=MODEL, kind="prompt") == prompt_tokens
        assert moved(before, samples, "chatproxy_time_to_first_token_seconds_count", model=MODEL) == 3
    assert value(during, "chatproxy_open_streams") == 1  # open on the first process, seen from the second
    assert value(after, "chatproxy_open_streams") == 0
    assert moved(before, after, "chatproxy_requests_total", endpoint=CHAT, model=MODEL, outcome="cancelled") == 1
