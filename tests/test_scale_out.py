"""The production path: several server processes sharing PostgreSQL and Redis.

These tests need a shared cache (and, for the connection count, PostgreSQL). On the embedded
defaults they are skipped; with CHATPROXY_REQUIRE_SERVICES=1 (the CI run against the services)
a skip becomes a failure.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from io import StringIO

import httpx
import orjson
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from streaming.limits import spending
from streaming.models import ModelPrice, UsageLimit, UsageLog
from streaming.schemas.chat_completions import parse_chat_completion_request
from tests.fake_upstream import FakeUpstream, Reply
from tests.live_site import (
    LIVE_DATABASE_POOL_MAX_SIZE,
    LIVE_SITE_DB_APPLICATION,
    MODEL,
    OTHER_MODEL,
    STREAM_URL,
    TEST_API_KEY,
    LiveSite,
    live_site_environment,
    logged_in_client,
    skip_or_fail,
    wait_for_rows,
)

REQUIRED_BY = "CHATPROXY_REQUIRE_SERVICES"
BODY = {"messages": [{"role": "user", "content": "Hi"}]}
# Budgets far above anything a test spends: reservations are made and released, nothing is refused.
AMPLE_TOKEN_BUDGET = 10**9


def uses_shared_cache() -> bool:
    return not settings.CACHES["default"]["BACKEND"].endswith("LocMemCache")


def uses_postgresql() -> bool:
    return connection.vendor == "postgresql"


def require_services() -> None:
    if not uses_shared_cache():
        skip_or_fail("several server processes need a shared cache (CACHE_URL=redis://...)", required_by=REQUIRED_BY)
    if not uses_postgresql():
        skip_or_fail("several server processes need PostgreSQL (DATABASE_URL=postgres://...)", required_by=REQUIRED_BY)


def sites_environment(upstream: FakeUpstream, application_name: str, **extra: str) -> dict[str, str]:
    """The environment of each of several server processes of one site (a restarted one gets it too)."""
    return live_site_environment(
        application_name,
        OPENAI_API_KEY=TEST_API_KEY,
        OPENAI_BASE_URL=upstream.base_url,
        CHAT_DEFAULT_MODEL=MODEL,
        CHAT_ALLOWED_MODELS=f"{MODEL},{OTHER_MODEL}",
        **extra,
    )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting until {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def environment(django_db_setup, fake_upstream_server) -> dict[str, str]:
    require_services()
    return sites_environment(fake_upstream_server, "chatproxy-two-sites")


@pytest.fixture(scope="module")
def two_sites(environment, tmp_path_factory) -> Iterator[list[LiveSite]]:
    """Two server processes of the site; a test that kills one puts its restarted successor in its place."""
    folder = tmp_path_factory.mktemp("two-sites")
    sites = [LiveSite(folder / f"daphne-{n}.log", environment) for n in (1, 2)]
    yield sites
    for site in sites:
        site.stop()


@pytest.fixture
def clients(two_sites, user) -> Iterator[list[httpx.Client]]:
    clients = [logged_in_client(site, user) for site in two_sites]
    yield clients
    for client in clients:
        client.close()


def fire_across(clients: list[httpx.Client], count: int, body: dict = BODY) -> list[httpx.Response]:
    """`count` simultaneous requests, alternating between the server processes; their responses
    (each read to its end), by status."""
    start = threading.Barrier(count)

    def one(n: int) -> httpx.Response:
        client = clients[n % len(clients)]
        with httpx.Client(base_url=client.base_url, cookies=client.cookies, headers=client.headers, timeout=20) as own:
            start.wait(10)
            return own.post(STREAM_URL, json=body)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return sorted(pool.map(one, range(count)), key=lambda response: response.status_code)


def statuses(responses: list[httpx.Response]) -> list[int]:
    return [response.status_code for response in responses]


def test_concurrent_stream_limit_holds_across_processes(clients, fake_upstream, user):
    UsageLimit.objects.create(user=user, requests_per_minute=0, concurrent_streams=4)
    fake_upstream.default_reply = Reply(pieces=["slow "] * 8, delay=0.15)
    assert statuses(fire_across(clients, 9)) == [200] * 4 + [429] * 5


def test_rate_limit_holds_across_processes(clients, fake_upstream, user):
    UsageLimit.objects.create(user=user, requests_per_minute=6, concurrent_streams=0)
    assert statuses(fire_across(clients, 11)) == [200] * 6 + [429] * 5


def stream_ids(client: httpx.Client) -> str:
    """Run one stream to its end; the upstream's request id (as the usage row stores it)."""
    with client.stream("POST", STREAM_URL, json=BODY) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert "error" not in lines[-1] and lines[-1]["usage"]
    return f"req_{lines[0]['id'][-12:]}"


def test_a_killed_process_leaves_one_row_per_upstream_request_settled_as_interrupted_by_the_sweep(
    two_sites, environment, tmp_path, clients, fake_upstream, user
):
    UsageLimit.objects.create(
        user=user,
        requests_per_minute=0,
        concurrent_streams=0,
        daily_token_budget=AMPLE_TOKEN_BUDGET,
        monthly_token_budget=AMPLE_TOKEN_BUDGET,
    )
    doomed, survivor = two_sites
    fake_upstream.default_reply = Reply(pieces=["tick "] * 20, delay=0.1)
    with ThreadPoolExecutor(max_workers=6) as pool:
        on_doomed = [pool.submit(_read_until_cut, clients[0]) for _ in range(3)]
        on_survivor = [pool.submit(stream_ids, clients[1]) for _ in range(3)]
        wait_until(
            lambda: len(fake_upstream.streams) == 6 and all(stream.content_sent_at for stream in fake_upstream.streams),
            10,
            "six streams are under way",
        )
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait(10)
        cut = [future.result(timeout=20) for future in on_doomed]
        finished = [future.result(timeout=20) for future in on_survivor]
    assert all(cut), "the killed process's streams should end abruptly"
    wait_until(lambda: _statuses(user).count("completed") == 3, 5, "the survivor's rows are settled")

    # Right after the crash: a row for every request that reached the upstream; the dead process's
    # rows are in progress and still hold their worst case against the budget.
    rows = list(UsageLog.objects.filter(user=user).order_by("pk"))
    assert len(rows) == len(fake_upstream.requests) == 6
    assert sorted(row.upstream_request_id for row in rows if row.status == "completed") == sorted(finished)
    orphans = [row for row in rows if row.status != "completed"]
    assert [row.status for row in orphans] == ["in_progress"] * 3
    assert all(row.reserved_tokens > 0 for row in orphans)
    settled_tokens = sum(row.total_tokens for row in rows if row.status == "completed")
    held_tokens = sum(row.reserved_tokens for row in orphans)
    assert spending(user.pk).tokens_today == settled_tokens + held_tokens

    assert sweep_every_open_row() == "3 usage rows settled as interrupted."
    rows = list(UsageLog.objects.filter(user=user).order_by("pk"))
    interrupted = [row for row in rows if row.pk in {orphan.pk for orphan in orphans}]
    assert [row.status for row in interrupted] == ["interrupted"] * 3
    for row in interrupted:
        assert row.tokens_estimated and row.prompt_tokens > 0
        assert row.total_tokens == row.prompt_tokens + row.completion_tokens
        assert "stopped before it ended" in row.error_message
    assert [row.status for row in rows if row not in interrupted] == ["completed"] * 3
    # The reservations are released: the budget counts what the rows used, nothing more.
    assert spending(user.pk).tokens_today == sum(row.total_tokens for row in rows)

    before = list(UsageLog.objects.filter(user=user).order_by("pk").values())
    assert sweep_every_open_row() == "0 usage rows settled as interrupted."
    assert list(UsageLog.objects.filter(user=user).order_by("pk").values()) == before
    assert spending(user.pk).tokens_today == sum(row.total_tokens for row in rows)

    restarted = LiveSite(tmp_path / "daphne-restarted.log", environment)
    two_sites[0] = restarted  # later tests get a live process in its place
    doomed.stop()
    fake_upstream.default_reply = Reply()
    client = logged_in_client(restarted, user)
    try:
        served = stream_ids(client)
    finally:
        client.close()
    rows = wait_for_rows(user, 7)
    assert len(rows) == len(fake_upstream.requests) == 7
    assert [(row.upstream_request_id, row.status) for row in rows if row.upstream_request_id == served] == [
        (served, "completed")
    ]


def _read_until_cut(client: httpx.Client) -> bool:
    """Read a stream until the server goes away; True when it ended without its usage chunk."""
    try:
        with client.stream("POST", STREAM_URL, json=BODY) as response:
            lines = [line for line in response.iter_lines() if line.strip()]
    except httpx.HTTPError:
        return True
    return not lines or '"usage":{' not in lines[-1]


def _statuses(user) -> list[str]:
    return list(UsageLog.objects.filter(user=user).values_list("status", flat=True))


def sweep_every_open_row() -> str:
    """Run `manage.py sweep_interrupted --stale-after 0` (every stream in progress counts as dead):
    what it says."""
    out = StringIO()
    call_command("sweep_interrupted", "--stale-after", "0", stdout=out)
    return out.getvalue().strip()


def estimated_input_tokens(body: dict) -> int:
    """The site's prompt estimate for this body, in tokens (part of what its reservation holds)."""
    return parse_chat_completion_request(orjson.dumps(body)).estimated_input_tokens()


CONCURRENT_REQUESTS = 20
FITTING = 5


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "two processes"])
def test_a_token_budget_admits_exactly_the_requests_whose_worst_case_fits(processes, clients, fake_upstream, user):
    max_tokens = 1000
    body = {**BODY, "max_tokens": max_tokens}
    worst_case = estimated_input_tokens(body) + max_tokens
    budget = FITTING * worst_case
    UsageLimit.objects.create(
        user=user, requests_per_minute=0, concurrent_streams=0, daily_token_budget=budget, monthly_token_budget=0
    )
    fake_upstream.default_reply = Reply(pieces=["slow "] * 10, delay=0.2)

    responses = fire_across(clients[:processes], CONCURRENT_REQUESTS, body)

    assert statuses(responses) == [200] * FITTING + [429] * (CONCURRENT_REQUESTS - FITTING)
    _assert_refused_by(responses[FITTING:], "daily_token_budget")
    rows = wait_for_rows(user, FITTING)
    assert len(rows) == len(fake_upstream.requests) == FITTING
    assert sum(row.total_tokens for row in rows) <= budget
    # Once the streams have ended, their reservations give way to what they used: the budget admits again.
    assert spending(user.pk).tokens_today == sum(row.total_tokens for row in rows)
    assert clients[0].post(STREAM_URL, json=body).status_code == 200


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "two processes"])
def test_a_money_budget_admits_exactly_the_requests_whose_worst_case_cost_fits(processes, clients, fake_upstream, user):
    # At 100 a million tokens, a request that may take 1,000 tokens may cost 0.10.
    ModelPrice.objects.create(model=MODEL, input_per_million=Decimal(100), output_per_million=Decimal(100))
    body = {**BODY, "max_tokens": 1000 - estimated_input_tokens(BODY)}
    budget = FITTING * Decimal("0.10")
    UsageLimit.objects.create(
        user=user,
        requests_per_minute=0,
        concurrent_streams=0,
        daily_token_budget=0,
        monthly_token_budget=0,
        daily_cost_budget=budget,
        monthly_cost_budget=0,
    )
    fake_upstream.default_reply = Reply(pieces=["slow "] * 10, delay=0.2)

    responses = fire_across(clients[:processes], CONCURRENT_REQUESTS, body)

    assert statuses(responses) == [200] * FITTING + [429] * (CONCURRENT_REQUESTS - FITTING)
    _assert_refused_by(responses[FITTING:], "daily_cost_budget")
    rows = wait_for_rows(user, FITTING)
    assert len(rows) == len(fake_upstream.requests) == FITTING
    costs = [row.cost for row in rows if row.cost is not None]
    assert len(costs) == FITTING
    assert sum(costs) <= budget
    assert spending(user.pk).cost_today == sum(costs)
    assert clients[0].post(STREAM_URL, json=body).status_code == 200


def _assert_refused_by(refusals: list[httpx.Response], code: str) -> None:
    """Each refusal is the budget's 429: OpenAI-shaped, naming the budget, saying when to retry."""
    for response in refusals:
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", code), error
        assert int(response.headers["Retry-After"]) > 0
    messages = [response.json()["error"]["message"] for response in refusals]
    assert any("held by" in message for message in messages), messages


def test_open_streams_do_not_hold_database_connections(live_site, site_client, fake_upstream, user):
    if not uses_postgresql():
        skip_or_fail(
            "counting server connections needs PostgreSQL (DATABASE_URL=postgres://...)", required_by=REQUIRED_BY
        )
    UsageLimit.objects.create(user=user, requests_per_minute=0, concurrent_streams=0)
    fake_upstream.default_reply = Reply(pieces=["slow "] * 10, delay=0.2)
    streams = 30
    with ThreadPoolExecutor(max_workers=streams) as pool:
        futures = [pool.submit(stream_ids, site_client) for _ in range(streams)]
        deadline = time.monotonic() + 10
        while len(fake_upstream.streams) < streams and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        held = _site_connections()
        for future in futures:
            future.result(timeout=30)
    assert len(fake_upstream.streams) == streams
    # The site's connections are its pool's, however many streams are open.
    assert held <= LIVE_DATABASE_POOL_MAX_SIZE, f"{held} database connections held by {streams} open streams"


def _site_connections() -> int:
    """Connections the live site's server processes hold to the test database right now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            [LIVE_SITE_DB_APPLICATION],
        )
        return cursor.fetchone()[0]
