"""Per-user limits, the upstream identity, timeouts, keepalives and the shared upstream client."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.contrib.auth.models import Group
from django.test import AsyncClient
from django.utils import timezone

from streaming.limits import limits_for
from streaming.models import LimitRefusal, UsageLimit, UsageLog
from streaming.upstream import get_upstream, upstream_user_id
from streaming.usage import STALE_SECONDS
from tests.fake_upstream import Reply
from tests.live_site import (
    LIVE_KEEPALIVE_SECONDS,
    MODEL,
    PROMPT_ESTIMATE,
    STREAM_URL,
    in_progress_row,
    wait_for_rows,
)

BODY = {"messages": [{"role": "user", "content": "Hi"}]}


def fire_concurrently(client: httpx.Client, count: int, body: dict = BODY) -> list[httpx.Response]:
    """`count` requests at once, each on its own connection, read to the end."""

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=client.base_url, cookies=client.cookies, headers=client.headers, timeout=20) as own:
            response = own.post(STREAM_URL, json=body)
            response.read()
            return response

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def refusals(responses: list[httpx.Response]) -> list[dict]:
    return [r.json()["error"] for r in responses if r.status_code == 429]


def test_rate_limit_admits_exactly_n_of_n_plus_5_racing_requests(site_client, fake_upstream, user):
    UsageLimit.objects.create(user=user, requests_per_minute=10, concurrent_streams=0)
    responses = fire_concurrently(site_client, 15)

    assert sorted(r.status_code for r in responses) == [200] * 10 + [429] * 5
    for response in responses:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "requests_per_minute"
            assert "10 requests per minute" in response.json()["error"]["message"]
            assert 1 <= int(response.headers["retry-after"]) <= 60
    assert UsageLog.objects.filter(user=user).count() == 10  # refused requests leave no usage row
    assert LimitRefusal.objects.get(user=user, limit="requests_per_minute").count == 5


def test_concurrent_streams_admits_exactly_n_and_frees_slots_when_streams_end(site_client, fake_upstream, user):
    UsageLimit.objects.create(user=user, requests_per_minute=0, concurrent_streams=3)
    fake_upstream.default_reply = Reply(pieces=["slow "] * 8, delay=0.15)
    responses = fire_concurrently(site_client, 8)

    assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 5
    assert {error["code"] for error in refusals(responses)} == {"concurrent_streams"}
    assert all(r.headers["retry-after"] == "5" for r in responses if r.status_code == 429)
    # All three streams have ended, so their slots are free again.
    fake_upstream.default_reply = Reply()
    assert sorted(r.status_code for r in fire_concurrently(site_client, 3)) == [200] * 3


def test_daily_budget_admits_a_request_only_if_its_worst_case_fits(site_client, fake_upstream, user):
    UsageLimit.objects.create(user=user, daily_token_budget=100)
    UsageLog.objects.create(
        user=user, created_at=timezone.now(), model=MODEL, status="completed", total_tokens=40, duration_ms=1
    )
    small = {**BODY, "max_tokens": 40}  # worst case: a 5-token prompt estimate + 40
    too_large = site_client.post(STREAM_URL, json=BODY)  # 5 + CHAT_MAX_TOKENS (1,024) cannot fit
    assert too_large.status_code == 429
    assert too_large.json()["error"]["message"].startswith(
        "Daily token budget too low for this request: it may need up to 1029 tokens, and 40 of 100 are used;"
    )

    fake_upstream.will_reply(Reply(usage=(30, 20)))
    with site_client.stream("POST", STREAM_URL, json=small) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert response.status_code == 200 and lines[-1]["usage"]["total_tokens"] == 50  # never cut short
    wait_for_rows(user, count=2)

    refused = site_client.post(STREAM_URL, json=small)  # 90 used: 45 more cannot fit
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "daily_token_budget" and "45 tokens, and 90 of 100 are used" in error["message"]
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert UsageLog.objects.filter(user=user).count() == 2


def test_concurrent_requests_never_overshoot_a_token_budget(site_client, fake_upstream, user):
    worst_case = PROMPT_ESTIMATE + 200
    UsageLimit.objects.create(
        user=user, requests_per_minute=0, concurrent_streams=0, daily_token_budget=5 * worst_case + 10
    )
    fake_upstream.default_reply = Reply(pieces=["word "] * 6, delay=0.1, usage=(PROMPT_ESTIMATE, 200))
    responses = fire_concurrently(site_client, 20, body={**BODY, "max_tokens": 200})

    assert sorted(r.status_code for r in responses) == [200] * 5 + [429] * 15
    refused = [r.json()["error"] for r in responses if r.status_code == 429]
    assert {error["code"] for error in refused} == {"daily_token_budget"}
    assert any("held by" in error["message"] for error in refused)  # said while the admitted ones streamed
    rows = wait_for_rows(user, count=5)
    assert len(rows) == 5 and sum(row.total_tokens for row in rows) <= 5 * worst_case + 10


def test_a_dead_process_reservation_is_released_when_it_would_refuse(site_client, fake_upstream, user):
    UsageLimit.objects.create(user=user, daily_token_budget=300)
    dead = in_progress_row(user, age=STALE_SECONDS + 5, reserved=290)
    fake_upstream.will_reply(Reply(usage=(PROMPT_ESTIMATE, 3)))
    with site_client.stream("POST", STREAM_URL, json={**BODY, "max_tokens": 20}) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert response.status_code == 200 and lines[-1]["usage"]["total_tokens"] == PROMPT_ESTIMATE + 3
    dead.refresh_from_db()
    assert dead.status == "interrupted"


def test_monthly_budget_counts_earlier_days(site_client, fake_upstream, user):
    UsageLimit.objects.create(user=user, daily_token_budget=0, monthly_token_budget=500)
    start_of_month = timezone.localtime().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    UsageLog.objects.create(
        user=user,
        created_at=start_of_month + timedelta(seconds=1),
        model=MODEL,
        status="completed",
        total_tokens=500,
        duration_ms=1,
    )
    UsageLog.objects.create(
        user=user,
        created_at=start_of_month - timedelta(days=1),
        model=MODEL,
        status="completed",
        total_tokens=10_000,
        duration_ms=1,
    )
    refused = site_client.post(STREAM_URL, json=BODY)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "monthly_token_budget"
    assert fake_upstream.requests == []


def test_group_limits_apply_and_the_most_generous_group_wins(db, django_user_model, settings):
    settings.CHAT_REQUESTS_PER_MINUTE = 20
    settings.CHAT_DAILY_TOKEN_BUDGET = 1000
    user = django_user_model.objects.create_user("gina", password="pw-gina-123")
    for name, rpm, budget in (("students", 5, 2000), ("staff", 50, None), ("unlimited", None, 0)):
        group = Group.objects.create(name=name)
        group.user_set.add(user)
        UsageLimit.objects.create(group=group, requests_per_minute=rpm, daily_token_budget=budget)
    limits = limits_for(user)
    assert (limits.requests_per_minute, limits.daily_token_budget) == (50, 0)
    # Limits are cached; changing an override or a membership takes effect at once.
    Group.objects.get(name="unlimited").user_set.remove(user)
    assert limits_for(user).daily_token_budget == 2000
    UsageLimit.objects.create(user=user, requests_per_minute=3)
    assert limits_for(user).requests_per_minute == 3
    assert limits_for(user).concurrent_streams == settings.CHAT_CONCURRENT_STREAMS


def test_upstream_sees_a_stable_pseudonym_not_the_user(site_client, fake_upstream, user, django_user_model):
    site_client.post(STREAM_URL, json=BODY)
    site_client.post(STREAM_URL, json=BODY)
    first, second = (request.json()["safety_identifier"] for request in fake_upstream.requests)
    assert first == second and first.startswith("user-") and len(first) == 37
    assert user.username not in first and str(user.pk) != first.removeprefix("user-")
    other = django_user_model.objects.create_user("zed", password="pw-zed-123")
    assert upstream_user_id(other) != first


def test_keepalives_flow_while_the_upstream_is_silent(site_client, fake_upstream):
    fake_upstream.will_reply(Reply(pieces=["before", " after"], delay=1.6), Reply(pieces=["x", "y"], delay=1.6))
    with site_client.stream("POST", STREAM_URL, json=BODY) as response:
        raw = response.read().decode()
    lines = raw.split("\n")
    assert lines.count("") >= int(1.6 / LIVE_KEEPALIVE_SECONDS)  # blank keepalive lines between chunks
    chunks = [json.loads(line) for line in lines if line]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "before after"

    with site_client.stream("POST", STREAM_URL, json=BODY, headers={"Accept": "text/event-stream"}) as response:
        raw = response.read().decode()
    assert raw.count(": ping\n\n") >= 2 and raw.endswith("data: [DONE]\n\n")


def test_a_gap_longer_than_the_idle_timeout_ends_the_stream(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["one", " two"], pause_before={2: 3.0}))
    started = time.monotonic()
    with site_client.stream("POST", STREAM_URL, json=BODY) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert lines[-1]["error"]["code"] == "upstream_timeout"
    assert "mid-answer" in lines[-1]["error"]["message"]
    assert time.monotonic() - started < 3.0  # OPENAI_IDLE_TIMEOUT is 2 s on the live site
    record = fake_upstream.wait_for_closed_stream()
    assert record.client_closed_at is not None
    assert UsageLog.objects.get(user=user).status == "error"


@pytest.mark.django_db(transaction=True)
async def test_one_bounded_upstream_client_per_process(settings, django_user_model, fake_upstream):
    settings.OPENAI_MAX_CONNECTIONS = 1
    settings.OPENAI_CONNECT_TIMEOUT = 0.5
    assert get_upstream() is get_upstream()
    user = await django_user_model.objects.acreate_user("hal", password="pw-hal-123")
    client = AsyncClient()
    await client.aforce_login(user)
    fake_upstream.will_reply(Reply(pieces=["slow "] * 10, delay=0.2))

    first = await client.post(STREAM_URL, BODY, content_type="application/json")
    assert first.status_code == 200
    body = first.streaming_content
    await anext(body)  # the first stream holds the only connection
    second = await client.post(STREAM_URL, BODY, content_type="application/json")
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "upstream_busy"
    remainder = b"".join([part async for part in body])
    assert b"slow" in remainder
    await asyncio.sleep(0)
