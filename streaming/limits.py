"""Per-user admission: requests per minute, concurrent streams, daily and monthly token and cost budgets.

Counters live in Django's cache (local memory in development, Redis in production) and use only
atomic operations (`add`, `incr`), so limits hold when requests race, across processes on Redis.
Budgets are counted from the usage log, so they survive restarts. `admit` does all its database
and cache work in one synchronous call, so a request pays one thread hop for it.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from . import metrics
from .conf import app_settings
from .errors import limit_exceeded
from .models import LimitRefusal, UsageLimit, UsageLog

Limit = LimitRefusal.Limit
WINDOW_SECONDS = 60
# A concurrency slot outlives a crashed process by at most this long; open streams refresh theirs.
SLOT_TTL_SECONDS = 120
SLOT_REFRESH_SECONDS = 30
LIMITS_CACHE_SECONDS = 60
CONCURRENCY_RETRY_AFTER = 5
LIMIT_FIELDS = tuple(Limit.values)


@dataclass(frozen=True)
class EffectiveLimits:
    """The limits that apply to one user; 0 means no limit."""

    requests_per_minute: int
    concurrent_streams: int
    daily_token_budget: int
    monthly_token_budget: int
    # In CHAT_CURRENCY.
    daily_cost_budget: Decimal = Decimal(0)
    monthly_cost_budget: Decimal = Decimal(0)


@dataclass(frozen=True)
class Spending:
    """What a user's finished requests used today and this month."""

    tokens_today: int
    tokens_this_month: int
    cost_today: Decimal
    cost_this_month: Decimal


# Cost counters count in units of 10⁻⁸ of the currency (a row's cost has 8 decimal places): the
# cache's atomic `incr` adds integers.
COST_UNIT = Decimal("0.00000001")


@dataclass
class Admission:
    """A request let through; holds its concurrency slot until `release`."""

    slot_key: str | None = None
    slot_token: str = ""

    def refresh(self) -> None:
        if self.slot_key:
            cache.touch(self.slot_key, SLOT_TTL_SECONDS)

    def release(self) -> None:
        if self.slot_key and cache.get(self.slot_key) == self.slot_token:
            cache.delete(self.slot_key)
        self.slot_key = None


def default_limits() -> EffectiveLimits:
    return EffectiveLimits(
        requests_per_minute=app_settings.CHAT_REQUESTS_PER_MINUTE,
        concurrent_streams=app_settings.CHAT_CONCURRENT_STREAMS,
        daily_token_budget=app_settings.CHAT_DAILY_TOKEN_BUDGET,
        monthly_token_budget=app_settings.CHAT_MONTHLY_TOKEN_BUDGET,
        daily_cost_budget=Decimal(str(app_settings.CHAT_DAILY_COST_BUDGET)),
        monthly_cost_budget=Decimal(str(app_settings.CHAT_MONTHLY_COST_BUDGET)),
    )


def limits_for(user: AbstractBaseUser) -> EffectiveLimits:
    """The user's limits, cached for a minute; changes to overrides or groups drop the cached copy."""
    key = _limits_key(user.pk)
    cached = cache.get(key)
    if cached is not None:
        return EffectiveLimits(*cached)
    rows = UsageLimit.objects.filter(Q(user=user) | Q(group__user=user)).values("user_id", *LIMIT_FIELDS)
    own = [row for row in rows if row["user_id"] == user.pk]
    limits = resolve_limits(own[0] if own else None, [row for row in rows if row["user_id"] != user.pk])
    cache.set(key, astuple(limits), LIMITS_CACHE_SECONDS)
    return limits


def _limits_key(user_id: int) -> str:
    return f"chatproxy:limits:{user_id}"


def forget_limits(user_ids: Iterable[int]) -> None:
    cache.delete_many([_limits_key(user_id) for user_id in user_ids])


def resolve_limits(own: dict | None, groups: list[dict]) -> EffectiveLimits:
    """The user's own override, else the most generous of their groups' (0, no limit, is the most),
    else the defaults."""
    defaults = default_limits()
    values = {}
    for name in LIMIT_FIELDS:
        group_values = [row[name] for row in groups if row[name] is not None]
        if own and own[name] is not None:
            values[name] = own[name]
        elif group_values:
            values[name] = 0 if 0 in group_values else max(group_values)
        else:
            values[name] = getattr(defaults, name)
    return EffectiveLimits(**values)


def period_starts(now: datetime | None = None) -> tuple[datetime, datetime]:
    today = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return today, today.replace(day=1)


def spending(user_id: int, now: datetime | None = None) -> Spending:
    """Tokens and cost of the user's finished requests today and this month.

    Kept as cache counters that each finished request adds to (`count_spending`); where one is
    missing (a cold cache, after a restart on local memory) they are seeded from the usage log.
    """
    keys = _spending_keys(user_id, now)
    counted = cache.get_many(keys)
    if len(counted) < len(keys):
        today, month = period_starts(now)
        totals = UsageLog.objects.filter(user_id=user_id, created_at__gte=month).aggregate(
            tokens_today=Sum("total_tokens", filter=Q(created_at__gte=today), default=0),
            tokens_month=Sum("total_tokens", default=0),
            cost_today=Sum("cost", filter=Q(created_at__gte=today), default=Decimal(0)),
            cost_month=Sum("cost", default=Decimal(0)),
        )
        seeds = [
            totals["tokens_today"],
            totals["tokens_month"],
            _cost_units(totals["cost_today"]),
            _cost_units(totals["cost_month"]),
        ]
        for key, seed, timeout in zip(keys, seeds, (2 * 86400, 32 * 86400) * 2, strict=True):
            cache.add(key, seed, timeout=timeout)
        counted = cache.get_many(keys)
    tokens_today, tokens_month, cost_today, cost_month = (counted.get(key, 0) for key in keys)
    return Spending(tokens_today, tokens_month, cost_today * COST_UNIT, cost_month * COST_UNIT)


def count_spending(user_id: int, tokens: int, cost: Decimal | None, now: datetime | None = None) -> None:
    """Add a finished request's tokens and cost to the user's counters, where they are being kept."""
    keys = _spending_keys(user_id, now)
    token_keys, cost_keys = keys[:2], keys[2:]
    for keys, amount in ((token_keys, tokens), (cost_keys, _cost_units(cost))):
        if not amount:
            continue
        for key in keys:
            # A counter not seeded yet is left alone: the next admission reads the usage log, this row included.
            with contextlib.suppress(ValueError):
                cache.incr(key, amount)


def forget_spending(touched: Iterable[tuple[int, date]]) -> None:
    """Drop the counters of these (user, day) pairs and their months, to be seeded again from the
    usage log: after costs were recomputed."""
    cache.delete_many([key for user_id, day in set(touched) for key in _day_keys(user_id, day)])


def _cost_units(cost: Decimal | None) -> int:
    return int((cost or Decimal(0)) / COST_UNIT)


def _spending_keys(user_id: int, now: datetime | None) -> list[str]:
    return _day_keys(user_id, timezone.localdate(now))


def _day_keys(user_id: int, day: date) -> list[str]:
    return [
        f"chatproxy:tokens:{user_id}:{day:%Y-%m-%d}",
        f"chatproxy:tokens:{user_id}:{day:%Y-%m}",
        f"chatproxy:cost:{user_id}:{day:%Y-%m-%d}",
        f"chatproxy:cost:{user_id}:{day:%Y-%m}",
    ]


def admit(user: AbstractBaseUser) -> Admission:
    """Let the request in, or raise a 429 ApiError naming the limit (and count the refusal)."""
    limits = limits_for(user)
    try:
        _check_budgets(user, limits)
        _check_rate(user, limits)
        return _take_slot(user, limits)
    except LimitExceeded as refusal:
        record_refusal(user, refusal.limit)
        raise refusal.error from None


class LimitExceeded(Exception):
    def __init__(self, limit: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.error = limit_exceeded(limit=limit, message=message, retry_after=retry_after)


def _check_budgets(user: AbstractBaseUser, limits: EffectiveLimits) -> None:
    if not any(
        (limits.daily_token_budget, limits.monthly_token_budget, limits.daily_cost_budget, limits.monthly_cost_budget)
    ):
        return
    now = timezone.localtime()
    spent = spending(user.pk, now)
    today, month = period_starts(now)
    until_tomorrow = int((today + timedelta(days=1) - now).total_seconds())
    until_next_month = int(((month + timedelta(days=32)).replace(day=1) - now).total_seconds())
    currency = app_settings.CHAT_CURRENCY
    checks = (
        (Limit.DAILY_TOKEN_BUDGET, spent.tokens_today, limits.daily_token_budget, "tokens", until_tomorrow),
        (Limit.MONTHLY_TOKEN_BUDGET, spent.tokens_this_month, limits.monthly_token_budget, "tokens", until_next_month),
        (Limit.DAILY_COST_BUDGET, spent.cost_today, limits.daily_cost_budget, currency, until_tomorrow),
        (Limit.MONTHLY_COST_BUDGET, spent.cost_this_month, limits.monthly_cost_budget, currency, until_next_month),
    )
    for limit, used, budget, unit, retry_after in checks:
        if budget and used >= budget:
            daily = limit in (Limit.DAILY_TOKEN_BUDGET, Limit.DAILY_COST_BUDGET)
            amount = f"{used} of {budget} tokens" if unit == "tokens" else f"{used:.2f} of {budget:.2f} {unit}"
            resets = "it resets at midnight UTC." if daily else "it resets on the first of the month."
            raise LimitExceeded(limit, f"{Limit(limit).label} used up ({amount}); {resets}", retry_after)


def _check_rate(user: AbstractBaseUser, limits: EffectiveLimits) -> None:
    """A fixed window that opens at the user's first request and lasts a minute."""
    if not limits.requests_per_minute:
        return
    now = int(time.time())
    window_key = f"chatproxy:rpm:{user.pk}"
    cache.add(window_key, now, timeout=WINDOW_SECONDS)
    opened = cache.get(window_key, now)
    count_key = f"chatproxy:rpm:{user.pk}:{opened}"
    cache.add(count_key, 0, timeout=WINDOW_SECONDS + 1)
    try:
        count = cache.incr(count_key)
    except ValueError:  # the window closed between add and incr
        cache.add(count_key, 1, timeout=WINDOW_SECONDS + 1)
        count = 1
    if count > limits.requests_per_minute:
        raise LimitExceeded(
            Limit.REQUESTS_PER_MINUTE,
            f"Rate limit: at most {limits.requests_per_minute} requests per minute.",
            opened + WINDOW_SECONDS - now,
        )


def _take_slot(user: AbstractBaseUser, limits: EffectiveLimits) -> Admission:
    """Claim one of the user's N concurrency slots; each claim is one atomic cache `add`."""
    if not limits.concurrent_streams:
        return Admission()
    token = secrets.token_hex(8)
    for slot in range(limits.concurrent_streams):
        key = f"chatproxy:stream:{user.pk}:{slot}"
        if cache.add(key, token, timeout=SLOT_TTL_SECONDS):
            return Admission(slot_key=key, slot_token=token)
    raise LimitExceeded(
        Limit.CONCURRENT_STREAMS,
        f"Too many open streams: at most {limits.concurrent_streams} at a time. Wait for one to finish.",
        CONCURRENCY_RETRY_AFTER,
    )


def record_refusal(user: AbstractBaseUser, limit: str) -> None:
    metrics.limit_refused(limit)
    day = timezone.localdate()
    counts = LimitRefusal.objects.filter(user_id=user.pk, day=day, limit=limit)
    if counts.update(count=F("count") + 1):
        return
    try:
        with transaction.atomic():
            LimitRefusal.objects.create(user_id=user.pk, day=day, limit=limit, count=1)
    except IntegrityError:
        counts.update(count=F("count") + 1)
