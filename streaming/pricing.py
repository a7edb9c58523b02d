"""What a request cost: the price valid for its model at its time, applied to its tokens.

The price is looked up when the usage row is written (in the hop that settles the row, after the
stream), from a copy of the price table each process keeps: a query through the ORM cost about
0.7 ms of CPU a request here, against 40 µs for the one-line check that the table has not changed
since (its row count and latest `updated_at`), so a price staff add or edit in the admin applies
from the next row on, in every process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from . import limits
from .models import ModelPrice, UsageLog


@dataclass(frozen=True)
class Cost:
    """A row's cost and the price it came from; both None when no price was known."""

    amount: Decimal | None
    price: ModelPrice | None


def prices_for(model: str, *, until: datetime) -> list[ModelPrice]:
    """The prices that may apply to `model` up to `until`: its exact ones and every family's."""
    return [
        price
        for price in current_prices()
        if price.valid_from <= until and (price.match == ModelPrice.Match.PREFIX or price.model == model)
    ]


# This process's copy of the price table, and the table's state it was read in.
_prices: tuple[tuple[object, ...], list[ModelPrice]] = ((), [])


def current_prices() -> list[ModelPrice]:
    """Every price, as the table holds it now: this process's copy, read again when the table changed.

    Prices are written through the ORM (the admin, `seed_prices`), which sets `updated_at`; an
    `update()` on a queryset of prices would not, and other processes would keep their copies.
    """
    global _prices
    state = _price_table_state()
    known, prices = _prices
    if state != known:
        prices = list(ModelPrice.objects.all())
        _prices = (state, prices)
    return prices


def _price_table_state() -> tuple[object, ...]:
    """The price table's row count and latest `updated_at`: they change whenever a price is added,
    edited or deleted."""
    quote = connection.ops.quote_name
    table = quote(ModelPrice._meta.db_table)
    updated_at = quote(ModelPrice._meta.get_field("updated_at").column)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*), MAX({updated_at}) FROM {table}")
        return tuple(cursor.fetchone() or ())


def price_for(model: str, at: datetime, prices: Iterable[ModelPrice]) -> ModelPrice | None:
    """Of `prices`, the one valid for `model` at `at`: an exact match, else the longest matching
    prefix; of those, the one that started last before `at`."""
    started = [price for price in prices if price.valid_from <= at]
    exact = [price for price in started if price.match == ModelPrice.Match.EXACT and price.model == model]
    if exact:
        return max(exact, key=lambda price: price.valid_from)
    family = [price for price in started if price.match == ModelPrice.Match.PREFIX and model.startswith(price.model)]
    if not family:
        return None
    return max(family, key=lambda price: (len(price.model), price.valid_from))


def cost_of(row: UsageLog, prices: Iterable[ModelPrice] | None = None) -> Cost:
    """What the row's tokens cost at the price valid for its model at its time."""
    candidates = prices_for(row.model, until=row.created_at) if prices is None else prices
    price = price_for(row.model, row.created_at, candidates)
    if price is None:
        return Cost(None, None)
    amount = price.cost(
        prompt_tokens=row.prompt_tokens, cached_tokens=row.cached_tokens or 0, completion_tokens=row.completion_tokens
    )
    return Cost(amount, price)


def apply_cost(row: UsageLog, cost: Cost) -> None:
    """Set the row's cost, price and `price_missing` flag (never a guessed zero)."""
    row.cost, row.price, row.price_missing = cost.amount, cost.price, cost.price is None


@dataclass(frozen=True)
class Recomputed:
    rows: int
    changed: int
    missing: int


def recompute_costs(
    *, since: datetime, until: datetime, model: str | None = None, batch_size: int = 2000
) -> Recomputed:
    """Recompute the cost of the rows made in [since, until) from the prices as they stand now (after
    a price was corrected), and drop the users' spending counters for those days, to be re-read."""
    rows = UsageLog.objects.filter(created_at__gte=since, created_at__lt=until).order_by("pk")
    if model is not None:
        rows = rows.filter(model=model)
    prices = list(ModelPrice.objects.filter(valid_from__lt=until))
    counted = changed = missing = 0
    touched: set[tuple[int, date]] = set()
    batch: list[UsageLog] = []
    for row in rows.only(*COST_INPUTS, *COST_FIELDS).iterator(chunk_size=batch_size):
        counted += 1
        cost = cost_of(row, prices)
        missing += cost.price is None
        if (row.cost, row.price_id, row.price_missing) != (
            cost.amount,
            cost.price and cost.price.pk,
            cost.price is None,
        ):
            apply_cost(row, cost)
            batch.append(row)
            touched.add((row.user_id, timezone.localdate(row.created_at)))
        if len(batch) >= batch_size:
            changed += _save_costs(batch)
    changed += _save_costs(batch)
    limits.forget_spending(touched)
    return Recomputed(rows=counted, changed=changed, missing=missing)


# What a row's cost is computed from, and what it is stored in.
COST_INPUTS = ("pk", "user_id", "created_at", "model", "prompt_tokens", "cached_tokens", "completion_tokens")
COST_FIELDS = ("cost", "price", "price_missing")


def _save_costs(batch: list[UsageLog]) -> int:
    saved = len(batch)
    if batch:
        with transaction.atomic():
            UsageLog.objects.bulk_update(batch, COST_FIELDS)
        batch.clear()
    return saved
