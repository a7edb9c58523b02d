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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.conf import settings
from django.db import connection

from streaming.models import UsageLimit, UsageLog
from tests.fake_upstream import Reply
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
)

REQUIRED_BY = "CHATPROXY_REQUIRE_SERVICES"
BODY = {"messages": [{"role": "user", "content": "Hi"}]}


def uses_shared_cache() -> bool:
    return not settings.CACHES["default"]["BACKEND"].endswith("LocMemCache")


def uses_postgresql() -> bool:
    return connection.vendor == "postgresql"


@pytest.fixture(scope="module")
def two_sites(django_db_setup, fake_upstream_server, tmp_path_factory) -> Iterator[list[LiveSite]]:
    if not uses_shared_cache():
        skip_or_fail("several server processes need a shared cache (CACHE_URL=redis://...)", required_by=REQUIRED_BY)
    if not uses_postgresql():
        skip_or_fail("several server processes need PostgreSQL (DATABASE_URL=postgres://...)", required_by=REQUIRED_BY)
    environment = live_site_environment(
        "chatproxy-two-sites",
        OPENAI_API_KEY=TEST_API_KEY,
        OPENAI_BASE_URL=fake_upstream_server.base_url,
        CHAT_DEFAULT_MODEL=MODEL,
        CHAT_ALLOWED_MODELS=f"{MODEL},{OTHER_MODEL}",
    )
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


def fire_across(clients: list[httpx.Client], count: int) -> list[int]:
    """`count` simultaneous requests, alternating between the server processes; their statuses."""
    start = threading.Barrier(count)

    def one(n: int) -> int:
        client = clients[n % len(clients)]
        with httpx.Client(base_url=client.base_url, cookies=client.cookies, headers=client.headers, timeout=20) as own:
            start.wait(10)
            response = own.post(STREAM_URL, json=BODY)
            return response.status_code

    with ThreadPoolExecutor(max_workers=count) as pool:
        return sorted(pool.map(one, range(count)))


def test_concurrent_stream_limit_holds_across_processes(clients, fake_upstream, user):
    UsageLimit.objects.create(user=user, requests_per_minute=0, concurrent_streams=4)
    fake_upstream.default_reply = Reply(pieces=["slow "] * 8, delay=0.15)
    assert fire_across(clients, 9) == [200] * 4 + [429] * 5


def test_rate_limit_holds_across_processes(clients, fake_upstream, user):
    UsageLimit.objects.create(user=user, requests_per_minute=6, concurrent_streams=0)
    assert fire_across(clients, 11) == [200] * 6 + [429] * 5


def stream_ids(client: httpx.Client) -> str:
    """Run one stream to its end; the upstream's request id (as the usage row stores it)."""
    with client.stream("POST", STREAM_URL, json=BODY) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert "error" not in lines[-1] and lines[-1]["usage"]
    return f"req_{lines[0]['id'][-12:]}"


def test_killing_one_process_mid_stream_loses_no_finished_rows(two_sites, clients, fake_upstream, user):
    UsageLimit.objects.create(user=user, requests_per_minute=0, concurrent_streams=0)
    doomed, survivor = two_sites
    finished = [stream_ids(clients[0]) for _ in range(3)]

    fake_upstream.default_reply = Reply(pieces=["tick "] * 20, delay=0.1)
    with ThreadPoolExecutor(max_workers=6) as pool:
        on_doomed = [pool.submit(_read_until_cut, clients[0]) for _ in range(3)]
        on_survivor = [pool.submit(stream_ids, clients[1]) for _ in range(3)]
        deadline = time.monotonic() + 10
        while len(fake_upstream.streams) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        os.kill(doomed.process.pid, signal.SIGKILL)
        cut = [future.result(timeout=20) for future in on_doomed]
        finished += [future.result(timeout=20) for future in on_survivor]
    assert all(cut), "the killed process's streams should end abruptly"

    fake_upstream.default_reply = Reply()
    finished.append(stream_ids(clients[1]))  # the survivor keeps serving
    rows = list(UsageLog.objects.filter(user=user).values_list("upstream_request_id", "status"))
    assert sorted(request_id for request_id, _ in rows) == sorted(finished)  # none lost, none twice
    assert {status for _, status in rows} == {"completed"}


def _read_until_cut(client: httpx.Client) -> bool:
    """Read a stream until the server goes away; True when it ended without its usage chunk."""
    try:
        with client.stream("POST", STREAM_URL, json=BODY) as response:
            lines = [line for line in response.iter_lines() if line.strip()]
    except httpx.HTTPError:
        return True
    return not lines or '"usage":{' not in lines[-1]


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
