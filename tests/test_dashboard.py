"""The usage dashboard in the admin: its numbers are the rows', its filters narrow every chart, its CSV streams."""

from __future__ import annotations

import csv
import io
import os
import random
import re
import time as clock
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.db import connection, connections
from django.db.models import Sum
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from streaming.api_keys import create_api_key
from streaming.models import ApiKey, LimitRefusal, UsageLog

DASHBOARD = "/admin/streaming/usagelog/dashboard/"
EXPORT = "/admin/streaming/usagelog/dashboard/usage.csv"


def at(day: date, hour: int = 12) -> datetime:
    return timezone.make_aware(datetime.combine(day, time(hour)))


@pytest.fixture
def today() -> date:
    return timezone.localdate()


@pytest.fixture
def usage(db, django_user_model, today):
    """Two days of requests by alice (page and key) and bob, on two models, and bob's refusals."""
    alice = django_user_model.objects.create_user("alice", password="pw-alice-123")
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123")
    laptop = ApiKey.objects.get(pk=create_api_key(user=alice, name="laptop")[0].pk)
    yesterday = today - timedelta(days=1)

    def log(user, day, model, status, tokens, cost, ttft=None, key=None, hour=12, **extra):
        return UsageLog.objects.create(
            user=user,
            api_key=key,
            created_at=at(day, hour),
            model=model,
            status=status,
            prompt_tokens=tokens // 2,
            completion_tokens=tokens - tokens // 2,
            total_tokens=tokens,
            cost=None if cost is None else Decimal(cost),
            price_missing=cost is None,
            time_to_first_token_ms=ttft,
            duration_ms=900,
            **extra,
        )

    # gpt-a's times to first token: 100, 200, 300, 400, 1000 → p50 300, p95 400 + 0.8 × 600 = 880.
    log(alice, yesterday, "gpt-a", "completed", 100, "0.01", ttft=100, hour=9)
    log(alice, yesterday, "gpt-a", "completed", 300, "0.03", ttft=1000, key=laptop, hour=10)
    log(alice, yesterday, "gpt-b", "error", 0, "0", finish_reason="")
    log(bob, yesterday, "gpt-b", "completed", 50, None, ttft=700)  # no price: unknown cost
    log(bob, today, "gpt-a", "cancelled", 20, "0.002", ttft=300, hour=1)
    log(
        alice, today, "gpt-a", "completed", 1000, "0.1", ttft=200, key=laptop, hour=2, upstream_response_id="chatcmpl-1"
    )
    log(bob, today, "gpt-a", "completed", 400, "0.04", ttft=400, hour=3)
    log(bob, today - timedelta(days=40), "gpt-a", "completed", 999, "9.99", ttft=5)  # outside the 30 days
    LimitRefusal.objects.create(user=bob, day=today, limit=LimitRefusal.Limit.REQUESTS_PER_MINUTE, count=3)
    LimitRefusal.objects.create(user=alice, day=yesterday, limit=LimitRefusal.Limit.DAILY_COST_BUDGET, count=2)
    return {"alice": alice, "bob": bob, "laptop": laptop, "yesterday": yesterday}


@pytest.fixture
def staff(db, django_user_model):
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password="pw-root-123"))
    return client


def table(page: str, name: str) -> list[list[str]]:
    """The body rows of the page's table `table-<name>`, as the texts of their cells."""
    found = re.search(rf'<table id="table-{name}">.*?<tbody>(.*?)</tbody>', page, re.DOTALL)
    assert found, f"no table {name}"
    rows = re.findall(r"<tr>(.*?)</tr>", found[1], re.DOTALL)
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)] for row in rows
    ]


def header(page: str, name: str) -> list[str]:
    found = re.search(rf'<table id="table-{name}">.*?<thead>(.*?)</thead>', page, re.DOTALL)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<th[^>]*>(.*?)</th>", found[1])]


def by_day(rows: list[list[str]], day: date) -> list[str]:
    return next(row[1:] for row in rows if row[0] == day.isoformat())


def get(client: Client, query: str = "") -> str:
    response = client.get(f"{DASHBOARD}?{query}")
    assert response.status_code == 200
    return response.content.decode()


def test_the_numbers_are_the_rows(staff, usage, today):
    page = get(staff)
    yesterday = usage["yesterday"]

    assert header(page, "cost") == ["Day", "gpt-a", "gpt-b", "Total"]
    cost = table(page, "cost")
    assert len(cost) == 30 and cost[-1][0] == today.isoformat()
    assert by_day(cost, yesterday) == ["0.0400", "0.0000", "0.0400"]
    assert by_day(cost, today) == ["0.1420", "0.0000", "0.1420"]
    assert by_day(cost, today - timedelta(days=2)) == ["0.0000", "0.0000", "0.0000"]
    tokens = table(page, "tokens")
    assert by_day(tokens, yesterday) == ["400", "50", "450"]
    assert by_day(tokens, today) == ["1420", "0", "1420"]

    # 7 requests, 1870 tokens, 0.1820 USD; bob's unpriced request is counted as unknown, not as free.
    summary = re.sub(r"\s+", " ", re.search(r'id="dashboard-summary">(.*?)</p>', page, re.DOTALL)[1])
    assert "<strong>7</strong> requests, <strong>1870</strong> tokens, <strong>0.1820 USD</strong>" in summary
    assert "5 refused by the limits" in summary
    assert "<strong>1</strong> of these requests had no price" in summary

    outcomes = table(page, "outcomes")
    assert header(page, "outcomes") == ["Day", "Completed", "Error", "Cancelled", "Refused"]
    assert by_day(outcomes, yesterday) == ["3", "1", "0", "2"]
    assert by_day(outcomes, today) == ["2", "0", "1", "3"]

    # user, cost, tokens, requests, unpriced
    assert table(page, "users") == [["alice", "0.1400", "1400", "4", "0"], ["bob", "0.0420", "470", "3", "1"]]
    key = usage["laptop"].public_id
    assert table(page, "keys") == [[f"{key} (laptop)", "alice", "0.1300", "1300", "2", "0"]]

    # model, p50, p95, requests timed: gpt-a's times are 100, 200, 300, 400, 1000; gpt-b has one.
    assert table(page, "first-token") == [["gpt-a", "300.0", "880.0", "5"], ["gpt-b", "700.0", "700.0", "1"]]


def test_percentiles_interpolate_as_percentile_cont(staff, usage, today):
    """Ten timed requests of one model: p50 is halfway between the 5th and 6th, p95 between the 9th and 10th."""
    for n, ttft in enumerate([10, 20, 30, 40, 50, 60, 70, 80, 90, 1000]):
        UsageLog.objects.create(
            user=usage["bob"],
            created_at=at(today, 4),
            model="gpt-c",
            status="completed",
            duration_ms=n,
            time_to_first_token_ms=ttft,
        )
    UsageLog.objects.create(user=usage["bob"], created_at=at(today, 4), model="gpt-c", status="error", duration_ms=1)
    rows = table(get(staff, "model=gpt-c"), "first-token")
    # p50: 50 + 0.5 × 10 = 55; p95: position 1 + 0.95 × 9 = 9.55, so 90 + 0.55 × 910 = 590.5.
    assert rows == [["gpt-c", "55.0", "590.5", "10"]]


def test_filters_narrow_every_chart(staff, usage, today):
    yesterday = usage["yesterday"]

    by_model = get(staff, "model=gpt-b")
    assert header(by_model, "cost") == ["Day", "gpt-b", "Total"]
    assert by_day(table(by_model, "tokens"), yesterday) == ["50", "50"]
    assert header(by_model, "outcomes") == ["Day", "Completed", "Error", "Cancelled"]  # refusals have no model
    assert by_day(table(by_model, "outcomes"), yesterday) == ["1", "1", "0"]
    assert by_day(table(by_model, "outcomes"), today) == ["0", "0", "0"]
    assert [row[0] for row in table(by_model, "users")] == ["bob", "alice"]  # no cost: most tokens first
    assert table(by_model, "keys") == [["No requests made with API keys."]]
    assert table(by_model, "first-token") == [["gpt-b", "700.0", "700.0", "1"]]
    assert "Refusals are counted per user and day" in by_model

    by_user = get(staff, "user=bob")
    assert by_day(table(by_user, "cost"), today) == ["0.0420", "0.0000", "0.0420"]  # gpt-a, gpt-b, total
    assert by_day(table(by_user, "outcomes"), today) == ["1", "0", "1", "3"]
    assert by_day(table(by_user, "outcomes"), yesterday) == ["1", "0", "0", "0"]  # alice's refusals left out
    assert [row[0] for row in table(by_user, "users")] == ["bob"]
    assert table(by_user, "first-token") == [["gpt-a", "350.0", "395.0", "2"], ["gpt-b", "700.0", "700.0", "1"]]

    key = usage["laptop"].public_id
    by_key = get(staff, f"key={key}")
    assert by_day(table(by_key, "cost"), today) == ["0.1000", "0.1000"]
    assert by_day(table(by_key, "cost"), yesterday) == ["0.0300", "0.0300"]
    assert table(by_key, "users") == [["alice", "0.1300", "1300", "2", "0"]]
    assert table(by_key, "first-token") == [["gpt-a", "600.0", "960.0", "2"]]

    one_day = get(staff, f"start={yesterday}&end={yesterday}")
    assert [row[0] for row in table(one_day, "outcomes")] == [yesterday.isoformat()]
    assert table(one_day, "users") == [["alice", "0.0400", "400", "3", "0"], ["bob", "0.0000", "50", "1", "1"]]
    assert table(one_day, "first-token") == [["gpt-a", "550.0", "955.0", "2"], ["gpt-b", "700.0", "700.0", "1"]]

    forty_days_ago = today - timedelta(days=40)
    old = get(staff, f"start={forty_days_ago}&end={forty_days_ago}")
    assert table(old, "users") == [["bob", "9.9900", "999", "1", "0"]]


def test_bad_filters_are_named_and_show_no_charts(staff, usage, today):
    page = get(staff, f"start={today}&end={today - timedelta(days=3)}")
    assert "The start is after the end." in page and 'id="table-cost"' not in page
    assert "Choose at most 366 days." in get(staff, f"start={today - timedelta(days=400)}&end={today}")
    assert "Enter a valid date." in get(staff, "start=yesterday")
    assert staff.get(f"{EXPORT}?start={today}&end={today - timedelta(days=3)}").status_code == 400


def test_the_charts_are_inline_svg_with_nothing_to_fetch(staff, usage):
    page = get(staff)
    charts = re.findall(r"<svg role=\"img\".*?</svg>", page, re.DOTALL)
    assert len(charts) == 6
    for svg in charts:
        assert "<script" not in svg and "href" not in svg
        assert not re.search(r"(?:https?:)?//(?!www\.w3\.org/2000/svg\b)", svg), "the chart refers to a URL"
        assert "var(--body-fg" in svg  # its text follows the admin's light or dark theme
    assert "gpt-a" in charts[0] and "alice" in charts[3]  # cost, tokens, outcomes, users, keys, first token


def test_only_staff_who_may_view_usage_see_it(usage, django_user_model):
    anonymous = Client()
    for url in (DASHBOARD, EXPORT):
        response = anonymous.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")

    not_staff = Client()
    not_staff.force_login(usage["alice"])
    assert not_staff.get(DASHBOARD).status_code == 302

    clerk = django_user_model.objects.create_user("clerk", password="pw-clerk-123", is_staff=True)
    client = Client()
    client.force_login(clerk)
    assert client.get(DASHBOARD).status_code == 403
    assert client.get(EXPORT).status_code == 403
    assert "Usage dashboard" not in client.get("/admin/").content.decode()

    clerk.user_permissions.add(Permission.objects.get(codename="view_usagelog"))
    client.force_login(django_user_model.objects.get(pk=clerk.pk))
    assert client.get(DASHBOARD).status_code == 200
    assert client.get(EXPORT).status_code == 200
    index = client.get("/admin/").content.decode()
    assert f'href="{DASHBOARD}"' in index


def read_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_the_csv_streams_the_filtered_rows(staff, usage, today):
    response = staff.get(f"{EXPORT}?user=alice")
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = read_csv(b"".join(response.streaming_content))
    assert len(rows) == 4 and {row["user"] for row in rows} == {"alice"}
    assert [row["time"] for row in rows] == sorted(row["time"] for row in rows)
    last = rows[-1]
    assert last == {
        "time": at(today, 2).isoformat(),
        "user": "alice",
        "key": usage["laptop"].public_id,
        "endpoint": "chat.completions",
        "model": "gpt-a",
        "status": "completed",
        "prompt_tokens": "500",
        "completion_tokens": "500",
        "total_tokens": "1000",
        "cached_tokens": "",
        "reasoning_tokens": "",
        "tokens_estimated": "no",
        "cost": "0.10000000",
        "currency": "USD",
        "price_missing": "no",
        "time_to_first_token_ms": "200",
        "duration_ms": "900",
        "finish_reason": "",
        "upstream_request_id": "",
        "upstream_response_id": "chatcmpl-1",
    }
    unpriced = read_csv(b"".join(staff.get(f"{EXPORT}?user=bob&model=gpt-b").streaming_content))
    assert [(row["cost"], row["currency"], row["price_missing"]) for row in unpriced] == [("", "", "yes")]
    everything = read_csv(b"".join(staff.get(EXPORT).streaming_content))
    assert len(everything) == 7  # the 30 days; the row from 40 days ago is not in them
    assert f'href="{EXPORT}?model=gpt-a"' in get(staff, "model=gpt-a")


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_the_csv_is_an_async_stream(usage, django_user_model):
    """Under ASGI a sync iterator would be read whole before the first byte; this one is async."""
    from asgiref.sync import sync_to_async

    root = await sync_to_async(django_user_model.objects.create_superuser)("root", password="pw-root-123")
    client = AsyncClient()
    await client.aforce_login(root)
    response = await client.get(f"{EXPORT}?key={usage['laptop'].public_id}")
    assert response.streaming and response.is_async
    rows = read_csv(b"".join([chunk async for chunk in response.streaming_content]))
    assert [row["total_tokens"] for row in rows] == ["300", "1000"]
    await sync_to_async(connections.close_all)()  # the connection the stream read from, in Django's sync thread


def test_the_changelist_exports_its_filtered_rows(staff, usage):
    any_row = UsageLog.objects.first()
    response = staff.post(
        "/admin/streaming/usagelog/?status__exact=completed",
        {"action": "export_csv", "select_across": "1", "index": "0", "_selected_action": [any_row.pk]},
    )
    assert response.streaming
    rows = read_csv(b"".join(response.streaming_content))
    assert len(rows) == 6 and {row["status"] for row in rows} == {"completed"}  # all time, as the list shows


def test_the_dashboard_is_a_fixed_number_of_queries(staff, usage):
    with CaptureQueriesContext(connection) as queries:
        get(staff)
    first = len(queries)
    for day in range(5):
        UsageLog.objects.create(
            user=usage["bob"],
            created_at=at(timezone.localdate() - timedelta(days=day + 2)),
            model=f"gpt-{day}",
            status="completed",
            duration_ms=1,
        )
    with CaptureQueriesContext(connection) as queries:
        get(staff)
    assert len(queries) == first


MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "o4-mini", "chatproxy-demo")


@pytest.mark.skipif(not os.environ.get("CHATPROXY_MILLION_ROWS"), reason="set CHATPROXY_MILLION_ROWS=1 (takes minutes)")
def test_the_dashboard_over_a_million_rows(staff, django_user_model, today):
    rows = int(os.environ.get("CHATPROXY_MILLION_ROWS_COUNT", 1_000_000))
    users = [django_user_model.objects.create_user(f"user{n:02}") for n in range(50)]
    keys = [ApiKey.objects.get(pk=create_api_key(user=users[n], name=f"key {n}")[0].pk) for n in range(20)]
    random.seed(13)
    since = at(today - timedelta(days=29), 0)
    seconds = int((timezone.now() - since).total_seconds())
    statuses = ["completed"] * 17 + ["error", "cancelled", "cancelled"]
    started = clock.monotonic()
    # Rows are written as requests end, so the log is in time order (as the `created_at` index is).
    times = sorted(since + timedelta(seconds=random.randrange(seconds)) for _ in range(rows))
    batch = []
    for n, created_at in enumerate(times):
        tokens = random.randint(20, 4000)
        user = random.randrange(50)
        batch.append(
            UsageLog(
                user=users[user],
                api_key=keys[user] if user < 20 and n % 2 else None,
                created_at=created_at,
                model=MODELS[n % len(MODELS)],
                status=random.choice(statuses),
                prompt_tokens=tokens // 2,
                completion_tokens=tokens - tokens // 2,
                total_tokens=tokens,
                cost=Decimal(tokens) / 1_000_000,
                time_to_first_token_ms=random.randint(80, 4000) if n % 10 else None,
                duration_ms=random.randint(100, 20_000),
            )
        )
        if len(batch) == 10_000:
            UsageLog.objects.bulk_create(batch)
            batch = []
    UsageLog.objects.bulk_create(batch)
    inserted = clock.monotonic() - started
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # as autovacuum would on PostgreSQL after such an insert

    timings = {}
    for name, query in (("all", ""), ("all, again", ""), ("one user", "user=user07"), ("one model", "model=o4-mini")):
        started = clock.monotonic()
        page = get(staff, query)
        timings[name] = clock.monotonic() - started
        assert 'id="table-first-token"' in page
    total = sum(int(row[-1]) for row in table(get(staff), "tokens"))
    assert total == UsageLog.objects.aggregate(n=Sum("total_tokens"))["n"]
    started = clock.monotonic()
    exported = sum(chunk.count(b"\n") for chunk in staff.get(EXPORT).streaming_content) - 1
    timings["csv export"] = clock.monotonic() - started
    assert exported == rows
    report = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items())
    print(f"\n{connection.vendor}, {rows} rows (inserted in {inserted:.0f} s): {report}")
    assert timings["all, again"] < 10
