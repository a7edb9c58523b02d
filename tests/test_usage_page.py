"""A user's own usage page: today's and this month's tokens and cost against their budgets, their
recent requests and this month per key, and never anyone else's."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.test import Client
from django.utils import timezone

from streaming.api_keys import create_api_key
from streaming.limits import period_starts
from streaming.models import UsageLimit, UsageLog
from tests.live_site import BASE_DIR, PASSWORD
from tests.test_browser import screenshot_dir

USAGE_URL = "/usage/"


def client_of(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def log(user, *, at, model="gpt-4o-mini", tokens=100, cost: str | None = "0.001", api_key=None, **fields) -> UsageLog:
    return UsageLog.objects.create(
        user=user,
        created_at=at,
        model=model,
        status=fields.pop("status", UsageLog.Status.COMPLETED),
        prompt_tokens=tokens // 2,
        completion_tokens=tokens - tokens // 2,
        total_tokens=tokens,
        duration_ms=500,
        cost=None if cost is None else Decimal(cost),
        price_missing=cost is None,
        api_key=api_key,
        **fields,
    )


def text_of(html: str) -> str:
    """The page as a person reads it: tags dropped, whitespace collapsed."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def table_rows(html: str, table_id: str) -> list[str]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert body, f"no table {table_id}"
    return [text_of(row) for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)]


def budget_text(html: str, key: str) -> str:
    match = re.search(rf'<div class="budget[^"]*" id="budget-{key}">(.*?)</div>', html, re.S)
    assert match, f"no budget {key}"
    return text_of(match.group(1))


def meter(html: str, key: str) -> dict[str, str]:
    match = re.search(rf'<meter id="meter-{key}"([^>]*)>', html, re.S)
    assert match, f"no meter for {key}"
    return dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get(USAGE_URL)
    assert response.status_code == 302 and response["Location"] == f"/accounts/login/?next={USAGE_URL}"


def test_the_chat_and_keys_pages_link_to_it(alice):
    client = client_of(alice)
    for page in ("/", "/keys/"):
        assert f'href="{USAGE_URL}"' in client.get(page).content.decode()


def test_totals_today_and_this_month_equal_the_rows(alice, settings):
    settings.CHAT_DAILY_TOKEN_BUDGET = settings.CHAT_MONTHLY_TOKEN_BUDGET = 0  # 0: no limit
    now = timezone.localtime()
    today, month = period_starts(now)
    key = create_api_key(user=alice, name="laptop")[0]
    rows = [
        log(alice, at=now - timedelta(seconds=5), tokens=1200, cost="0.5"),
        log(alice, at=now - timedelta(seconds=10), tokens=300, cost="0.000123", api_key=key),
        log(alice, at=now - timedelta(seconds=15), tokens=50, cost=None, model="my-own-model"),
        # Earlier this month (today too, on the first of the month), and last month.
        log(alice, at=month + timedelta(seconds=1), tokens=4000, cost="1.25", api_key=key),
        log(alice, at=month - timedelta(days=1), tokens=9999, cost="7.00"),
    ]
    page = client_of(alice).get(USAGE_URL).content.decode()

    def shown(amount: Decimal) -> str:
        return f"{amount.quantize(Decimal('0.01' if amount >= 1 else '0.0001'))} USD"

    def totals(since):
        chosen = [row for row in rows if row.created_at >= since]
        return sum(row.total_tokens for row in chosen), sum(row.cost or Decimal(0) for row in chosen)

    tokens_today, cost_today = totals(today)
    tokens_month, cost_month = totals(month)
    assert budget_text(page, "tokens-today") == f"Tokens today {tokens_today:,} tokens no limit"
    assert budget_text(page, "cost-today") == f"Cost today {shown(cost_today)} no limit"
    assert budget_text(page, "tokens-month") == f"Tokens this month {tokens_month:,} tokens no limit"
    assert budget_text(page, "cost-month") == f"Cost this month {shown(cost_month)} no limit"
    assert "1 request this month used a model with no known price" in text_of(page)


def test_budgets_and_limits_come_from_the_users_override(alice):
    UsageLimit.objects.create(
        user=alice,
        daily_token_budget=1000,
        monthly_token_budget=0,
        daily_cost_budget=Decimal("0.00"),
        monthly_cost_budget=Decimal("5.00"),
        requests_per_minute=7,
        concurrent_streams=0,
    )
    log(alice, at=timezone.now(), tokens=250, cost="1.5")
    page = client_of(alice).get(USAGE_URL).content.decode()
    assert budget_text(page, "tokens-today") == "Tokens today 250 tokens of 1,000 tokens (25%)"
    assert (meter(page, "tokens-today")["value"], meter(page, "tokens-today")["max"]) == ("250", "1000")
    assert budget_text(page, "cost-month") == "Cost this month 1.50 USD of 5.00 USD (30%)"
    assert (Decimal(meter(page, "cost-month")["value"]), Decimal(meter(page, "cost-month")["max"])) == (
        Decimal("1.5"),
        Decimal("5"),
    )
    assert budget_text(page, "tokens-month").endswith("no limit")
    assert budget_text(page, "cost-today").endswith("no limit")
    text = text_of(page)
    assert "Requests per minute: 7" in text and "Open streams at a time: no limit" in text


def test_a_used_up_budget_says_so(alice, settings):
    settings.CHAT_DAILY_TOKEN_BUDGET = 100
    log(alice, at=timezone.now(), tokens=150)
    page = client_of(alice).get(USAGE_URL).content.decode()
    assert budget_text(page, "tokens-today") == (
        "Tokens today 150 tokens of 100 tokens (100%) Used up: new requests are refused until it resets."
    )


def test_recent_requests_show_the_last_fifty_with_cost_and_key(alice):
    now = timezone.now()
    key = create_api_key(user=alice, name="laptop")[0]
    for minutes in range(60, 5, -1):  # 55 older rows, the oldest first
        log(alice, at=now - timedelta(minutes=minutes), model=f"old-{minutes}")
    log(alice, at=now - timedelta(minutes=3), tokens=2345, cost="0.000123", api_key=key, endpoint="responses")
    log(alice, at=now - timedelta(minutes=2), cost=None, model="unpriced-model", status=UsageLog.Status.CANCELLED)
    log(alice, at=now - timedelta(minutes=1), cost="0.00002", tokens_estimated=True, tokens=12)
    rows = table_rows(client_of(alice).get(USAGE_URL).content.decode(), "recent")
    assert len(rows) == 50
    stamp = timezone.localtime(now - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M")
    assert rows[0] == f"{stamp} gpt-4o-mini Chat completions Completed ≈ 12 < 0.0001 USD chat page"
    assert rows[1].endswith("unpriced-model Chat completions Cancelled 100 — price unknown chat page")
    assert rows[2].endswith(f"gpt-4o-mini Responses Completed 2,345 0.0001 USD {key.public_id}…")
    assert rows[3].endswith("old-6 Chat completions Completed 100 0.001 USD chat page")
    assert not any("old-53" in row for row in rows)  # the 51st and older are left out


def test_this_month_per_key_and_the_chat_page(alice):
    now = timezone.now()
    month = period_starts()[1]
    laptop = create_api_key(user=alice, name="laptop")[0]
    script = create_api_key(user=alice, name="cron script")[0]
    for _ in range(3):
        log(alice, at=now, tokens=1000, cost="0.25", api_key=laptop)
    log(alice, at=now, tokens=10, cost=None, model="unpriced", api_key=laptop)
    log(alice, at=now, tokens=40, cost="0.0004")
    log(alice, at=now, tokens=20, cost="0.0002")
    log(alice, at=month - timedelta(seconds=1), tokens=99999, cost="9", api_key=script)  # last month
    rows = table_rows(client_of(alice).get(USAGE_URL).content.decode(), "by-source")
    assert rows == [
        f"laptop {laptop.public_id}… 4 3,010 0.75 USD 1 price unknown",
        "Chat page 2 60 0.0006 USD",
    ]


def test_another_users_rows_never_show(alice, bob):
    bobs_key = create_api_key(user=bob, name="bob's key")[0]
    log(bob, at=timezone.now(), tokens=77777, cost="3.21", model="bobs-secret-model", api_key=bobs_key)
    log(alice, at=timezone.now(), tokens=10, cost="0.01")
    page = client_of(alice).get(USAGE_URL).content.decode()
    for trace in ("bobs-secret-model", "77,777", "3.21", bobs_key.public_id, "bob&#x27;s key"):
        assert trace not in page
    assert budget_text(page, "tokens-month").startswith("Tokens this month 10 tokens ")
    assert len(table_rows(page, "recent")) == 1 and len(table_rows(page, "by-source")) == 1


def test_the_page_takes_the_same_few_queries_however_many_rows(alice, django_assert_max_num_queries):
    key = create_api_key(user=alice, name="laptop")[0]
    for index in range(60):
        log(alice, at=timezone.now(), api_key=key if index % 2 else None)
    client = client_of(alice)
    # Session, user, limits, spending (these two cached afterwards), this month by key, recent requests.
    with django_assert_max_num_queries(6):
        assert client.get(USAGE_URL).status_code == 200


def test_a_new_user_sees_an_empty_page(alice):
    page = client_of(alice).get(USAGE_URL).content.decode()
    assert "No requests yet." in page and "No requests this month yet." in page
    assert budget_text(page, "cost-month") == "Cost this month 0.00 USD no limit"


def test_costs_are_shown_in_the_sites_currency(alice, settings):
    settings.CHAT_CURRENCY = "EUR"
    settings.CHAT_MONTHLY_COST_BUDGET = "20"
    log(alice, at=timezone.now(), cost="1234.5")
    page = client_of(alice).get(USAGE_URL).content.decode()
    assert budget_text(page, "cost-month") == "Cost this month 1,234.50 EUR of 20.00 EUR (100%) " + (
        "Used up: new requests are refused until it resets."
    )
    assert table_rows(page, "recent")[0].endswith("1,234.50 EUR chat page")


@pytest.fixture
def alices_usage(user):
    """Alice's limits and five requests of today, made before `browser` takes this thread's ORM away."""
    UsageLimit.objects.create(user=user, daily_token_budget=20_000, monthly_cost_budget=Decimal("10.00"))
    now = timezone.now()
    key = create_api_key(user=user, name="laptop")[0]
    log(user, at=now - timedelta(seconds=9), model="gpt-4o", tokens=5200, cost="0.0261", api_key=key)
    log(user, at=now - timedelta(seconds=7), tokens=830, cost="0.000312")
    log(user, at=now - timedelta(seconds=4), model="gpt-4.1-mini", tokens=2410, cost="0.00164", endpoint="responses")
    log(user, at=now - timedelta(seconds=2), model="local-llama", tokens=120, cost=None, api_key=key)
    log(user, at=now - timedelta(seconds=1), tokens=64, cost="0.00002", status=UsageLog.Status.CANCELLED)


def test_chromium_shows_the_page_at_desktop_and_phone_width_in_both_schemes(live_site, alices_usage, browser):
    from playwright.sync_api import expect  # installed: the `browser` fixture skipped otherwise

    for scheme, width in (("light", 900), ("dark", 390)):
        context = browser.new_context(
            base_url=live_site.url, viewport={"width": width, "height": 900}, color_scheme=scheme
        )
        context.set_default_timeout(10_000)
        page = context.new_page()
        page.goto(f"/accounts/login/?next={USAGE_URL}")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("link", name="Chat").click()
        page.get_by_role("link", name="Usage").click()  # from the chat page's navigation
        expect(page.get_by_role("heading", name="Your usage")).to_be_visible()
        tokens_today = page.get_by_role("meter", name="Tokens today")
        expect(tokens_today).to_be_visible()
        assert tokens_today.get_attribute("value") == "8624" and tokens_today.get_attribute("max") == "20000"
        expect(page.locator("#amount-tokens-today")).to_have_text("8,624 tokens of 20,000 tokens (43%)")
        expect(page.get_by_role("meter", name="Cost this month")).to_be_visible()
        expect(page.locator("#amount-cost-month")).to_have_text("0.0281 USD of 10.00 USD (<1%)")
        expect(page.locator("#recent tbody tr")).to_have_count(5)
        expect(page.get_by_role("cell", name="— price unknown")).to_be_visible()
        # At phone width the page itself does not scroll sideways: the tables do, inside their box.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=screenshot_dir() / f"usage-page-{scheme}-{width}.png", full_page=True)
        if scheme == "light" and os.environ.get("UPDATE_DOCS_SCREENSHOT"):
            page.screenshot(path=BASE_DIR / "docs" / "usage-page.png", full_page=True)
        context.close()
