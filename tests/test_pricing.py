"""Prices per model, the cost on every usage row, money budgets, and recomputing costs."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from streaming.models import ModelPrice, UsageLimit, UsageLog
from streaming.pricing import cost_of, price_for, prices_for
from tests.fake_upstream import Reply
from tests.live_site import MODEL, OTHER_MODEL, STREAM_URL, wait_for_rows

BODY = {"messages": [{"role": "user", "content": "Hi"}]}
LAST_YEAR = timezone.now() - timedelta(days=365)


def price(model: str, *, match: str = "exact", valid_from=LAST_YEAR, **per_million: str) -> ModelPrice:
    values = {"input_per_million": "1", "output_per_million": "2", **per_million}
    return ModelPrice.objects.create(
        model=model, match=match, valid_from=valid_from, **{name: Decimal(value) for name, value in values.items()}
    )


def row(user, *, model: str = MODEL, at=None, prompt: int = 0, completion: int = 0, cached=None, cost=None) -> UsageLog:
    return UsageLog.objects.create(
        user=user,
        created_at=at or timezone.now(),
        model=model,
        status="completed",
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=cached,
        cost=cost,
        duration_ms=1,
    )


def test_the_seeded_prices_cover_dated_snapshots_and_the_demo_model_is_free(seeded_prices):
    now = timezone.now()
    snapshot = price_for("gpt-4o-mini-2024-07-18", now, prices_for("gpt-4o-mini-2024-07-18", until=now))
    assert snapshot is not None and snapshot.model == "gpt-4o-mini"  # the longest family, not gpt-4o
    assert "check" in snapshot.note
    demo = price_for("chatproxy-demo", now, prices_for("chatproxy-demo", until=now))
    assert demo is not None and demo.input_per_million == demo.output_per_million == 0


def test_an_exact_price_beats_a_family_and_a_later_price_applies_only_from_its_start(db):
    family = price("gpt-x", match="prefix", input_per_million="5")
    exact = price("gpt-x-1", input_per_million="3")
    raised = price("gpt-x-1", input_per_million="4", valid_from=timezone.now() - timedelta(days=10))
    month_ago, now = timezone.now() - timedelta(days=30), timezone.now()
    assert price_for("gpt-x-1", month_ago, prices_for("gpt-x-1", until=now)) == exact
    assert price_for("gpt-x-1", now, prices_for("gpt-x-1", until=now)) == raised
    assert price_for("gpt-x-2", now, prices_for("gpt-x-2", until=now)) == family
    assert price_for("gpt-y", now, prices_for("gpt-y", until=now)) is None


def test_cost_charges_cached_prompt_tokens_at_the_cached_price(db, user):
    price(MODEL, input_per_million="2.50", cached_input_per_million="1.25", output_per_million="10")
    cost = cost_of(row(user, prompt=1_000, cached=400, completion=500))
    # 600 × 2.50 + 400 × 1.25 + 500 × 10, per million
    assert cost.amount == Decimal("0.00700000")
    assert cost_of(row(user, prompt=1_000, completion=0)).amount == Decimal("0.00250000")  # no cache reported


def test_every_relayed_request_gets_its_cost_or_is_flagged_as_unpriced(site_client, fake_upstream, user):
    price(MODEL, input_per_million="2", cached_input_per_million="1", output_per_million="8")
    fake_upstream.will_reply(Reply(usage=(11, 7)), Reply(usage=(11, 7)))
    for model in (MODEL, OTHER_MODEL):
        with site_client.stream("POST", STREAM_URL, json={**BODY, "model": model}) as response:
            response.read()
    rows = {row.model: row for row in wait_for_rows(user, count=2)}
    priced, unpriced = rows[MODEL], rows[OTHER_MODEL]
    assert priced.cost == Decimal("0.00007800") and not priced.price_missing  # 11 × 2 + 7 × 8, per million
    assert priced.price is not None and priced.price.model == MODEL
    assert unpriced.cost is None and unpriced.price_missing  # unknown, never a guessed zero


def test_a_price_staff_add_edit_or_delete_applies_from_the_next_request_in_the_server(site_client, fake_upstream, user):
    """The server process keeps a copy of the prices; each change made here reaches its next row."""

    relayed = 0

    def relayed_cost() -> Decimal | None:
        nonlocal relayed
        fake_upstream.will_reply(Reply(usage=(11, 7)))
        with site_client.stream("POST", STREAM_URL, json=BODY) as response:
            response.read()
        relayed += 1
        return wait_for_rows(user, count=relayed)[-1].cost

    assert relayed_cost() is None
    listed = price(MODEL, input_per_million="2", output_per_million="8")
    assert relayed_cost() == Decimal("0.00007800")
    listed.output_per_million = Decimal("10")  # an edit in place, as the admin's change form makes
    listed.save()
    assert relayed_cost() == Decimal("0.00009200")
    listed.delete()
    assert relayed_cost() is None


def test_a_daily_money_budget_refuses_with_its_code_once_spent(site_client, fake_upstream, user):
    UsageLimit.objects.create(user=user, daily_cost_budget=Decimal("0.05"), daily_token_budget=0)
    row(user, prompt=10, cost=Decimal("0.06"))
    response = site_client.post(STREAM_URL, json=BODY)
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "daily_cost_budget"
    assert "Daily cost budget used up (0.06 of 0.05 USD)" in error["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 86400
    assert fake_upstream.requests == []


def test_a_monthly_money_budget_counts_earlier_days_and_what_each_relayed_request_cost(
    site_client, fake_upstream, user
):
    UsageLimit.objects.create(user=user, monthly_cost_budget=Decimal("1.00"), daily_token_budget=0)
    price(MODEL, input_per_million="20000", output_per_million="20000")  # 0.02 a token
    row(user, at=timezone.localtime().replace(day=1, hour=0, minute=0, second=1), cost=Decimal("0.40"))
    small = {**BODY, "max_tokens": 11}  # worst case: (5 + 11) tokens, 0.32
    fake_upstream.will_reply(Reply(usage=(11, 7)))
    with site_client.stream("POST", STREAM_URL, json=small) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert response.status_code == 200 and lines[-1]["usage"]["total_tokens"] == 18  # within budget: relayed
    wait_for_rows(user, count=2)

    refused = site_client.post(STREAM_URL, json=small)  # 0.40 + 0.36 spent: 0.32 more cannot fit
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "monthly_cost_budget"
    assert "it may need up to 0.32 USD, and 0.76 of 1.00 are used" in refused.json()["error"]["message"]


def test_recompute_costs_applies_a_corrected_price_to_the_rows_of_its_days(db, user, capsys):
    wrong = price(MODEL, input_per_million="100", output_per_million="100")
    day = timezone.now() - timedelta(days=3)
    inside, outside = row(user, at=day, prompt=1_000_000), row(user, at=day - timedelta(days=5), prompt=1_000_000)
    for stale in (inside, outside):
        stale.cost = cost_of(stale).amount
        stale.save()
    wrong.input_per_million = Decimal("1")
    wrong.save()

    call_command("recompute_costs", "--from", f"{day:%Y-%m-%d}", "--to", f"{day:%Y-%m-%d}")

    inside.refresh_from_db(), outside.refresh_from_db()
    assert inside.cost == Decimal("1.00000000") and outside.cost == Decimal("100.00000000")
    assert "1 usage rows" in capsys.readouterr().out
    with pytest.raises(CommandError, match="not a date"):
        call_command("recompute_costs", "--from", "yesterday", "--to", "2026-01-01")


def test_staff_add_prices_in_the_sites_currency_only(admin_client: Client):
    form = {
        "model": "gpt-z",
        "match": "exact",
        "input_per_million": "1",
        "output_per_million": "2",
        "valid_from_0": "2026-01-01",
        "valid_from_1": "00:00:00",
        "note": "",
    }
    refused = admin_client.post("/admin/streaming/modelprice/add/", {**form, "currency": "EUR"})
    assert refused.status_code == 200 and "the site&#x27;s currency, USD" in refused.content.decode()
    saved = admin_client.post("/admin/streaming/modelprice/add/", {**form, "currency": "usd"})
    assert saved.status_code == 302
    assert ModelPrice.objects.get(model="gpt-z").currency == "USD"
