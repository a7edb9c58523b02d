"""Per-user admission: requests per minute, concurrent streams, daily and monthly token and cost budgets.

Counters live in Django's cache (local memory in development, Redis in production) and use only
atomic operations (`add`, `incr`), so limits hold when requests race, across processes on Redis.
Budgets are hard: a request is admitted only if its worst case (its prompt estimate plus the most
output it may ask for, and that at the model's price) fits beside what the user's settled requests
used and what their open streams hold; the worst case is added to the budget's counters at
admission (one atomic `incr`, which orders racing requests) and replaced by the real usage at the
end (`count_spending` with the difference). Counters are seeded from the usage log where missing
(settled rows' usage plus in-progress rows' reservations), so they survive restarts. `admit` does
all its database and cache work in one synchronous call, so a request pays one thread hop for it.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.cache import cache
from django.db import IntegrityError, models, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from . import metrics, pricing
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
    """What a user's requests used today and this month: their settled usage, plus the worst case
    their open streams hold (see `Reservation`)."""

    tokens_today: int
    tokens_this_month: int
    cost_today: Decimal
    cost_this_month: Decimal


# Cost counters count in units of 10⁻⁸ of the currency (a row's cost has 8 decimal places): the
# cache's atomic `incr` adds integers.
COST_UNIT = Decimal("0.00000001")


@dataclass(frozen=True)
class Reservation:
    """What an admitted request holds against the user's budgets until it is settled: its worst case
    in tokens (where a token budget applies) and in money (where a money budget applies and the
    model has a price); zero and None where nothing was held."""

    tokens: int = 0
    cost: Decimal | None = None


NO_RESERVATION = Reservation()


@dataclass
class Admission:
    """A request let through; holds its concurrency slot until `release`, and its reservation
    (counted from `at`, the admission's time) until the request is settled."""

    slot_key: str | None = None
    slot_token: str = ""
    reserved: Reservation = NO_RESERVATION
    at: datetime = field(default_factory=timezone.now)

    def refresh(self) -> None:
        if self.slot_key:
            cache.touch(self.slot_key, SLOT_TTL_SECONDS)

    def release(self) -> None:
        if self.slot_key and cache.get(self.slot_key) == self.slot_token:
            cache.delete(self.slot_key)
        self.slot_key = None

    @property
    def slot(self) -> str:
        """The slot as a usage row keeps it, for a sweep to free (`release_slot`)."""
        return f"{self.slot_key} {self.slot_token}" if self.slot_key else ""


def release_slot(slot: str) -> None:
    """Free a slot kept as `Admission.slot`, if it is still that request's."""
    key, _, token = slot.partition(" ")
    Admission(slot_key=key or None, slot_token=token).release()


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
        open_ = Q(status=UsageLog.Status.IN_PROGRESS)
        is_today = Q(created_at__gte=today)
        totals = UsageLog.objects.filter(user_id=user_id, created_at__gte=month).aggregate(
            tokens_today=Sum("total_tokens", filter=is_today & ~open_, default=0),
            tokens_month=Sum("total_tokens", filter=~open_, default=0),
            cost_today=Sum("cost", filter=is_today & ~open_, default=Decimal(0)),
            cost_month=Sum("cost", filter=~open_, default=Decimal(0)),
            held_tokens_today=Sum("reserved_tokens", filter=is_today & open_, default=0),
            held_tokens_month=Sum("reserved_tokens", filter=open_, default=0),
            held_cost_today=Sum("reserved_cost", filter=is_today & open_, default=Decimal(0)),
            held_cost_month=Sum("reserved_cost", filter=open_, default=Decimal(0)),
        )
        seeds = [
            totals["tokens_today"] + totals["held_tokens_today"],
            totals["tokens_month"] + totals["held_tokens_month"],
            _cost_units(totals["cost_today"] + totals["held_cost_today"]),
            _cost_units(totals["cost_month"] + totals["held_cost_month"]),
        ]
        for key, seed, timeout in zip(keys, seeds, (2 * 86400, 32 * 86400) * 2, strict=True):
            cache.add(key, seed, timeout=timeout)
        counted = cache.get_many(keys)
    tokens_today, tokens_month, cost_today, cost_month = (counted.get(key, 0) for key in keys)
    return Spending(tokens_today, tokens_month, cost_today * COST_UNIT, cost_month * COST_UNIT)


def count_spending(user_id: int, tokens: int, cost: Decimal | None, now: datetime | None = None) -> None:
    """Add tokens and cost (negative: take them off) to the user's counters of the day and month of
    `now`, where they are being kept."""
    keys = _spending_keys(user_id, now)
    token_keys, cost_keys = keys[:2], keys[2:]
    for keys, amount in ((token_keys, tokens), (cost_keys, _cost_units(cost))):
        if not amount:
            continue
        for key in keys:
            # A counter not seeded yet is left alone: the next admission reads the usage log, this row included.
            with contextlib.suppress(ValueError):
                cache.incr(key, amount)


def settle_reservation(user_id: int, reserved: Reservation, *, tokens: int, cost: Decimal | None, at: datetime) -> None:
    """Replace what a request held against the budgets (reserved at `at`) by what it used."""
    count_spending(user_id, tokens - reserved.tokens, (cost or Decimal(0)) - (reserved.cost or Decimal(0)), at)


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


def admit(
    user: AbstractBaseUser,
    *,
    model: str = "",
    input_tokens: int = 0,
    output_tokens: int = 0,
    sweep_stale: Callable[[int], int] | None = None,
) -> Admission:
    """Let the request in, holding its worst case against the user's budgets; or raise a 429
    ApiError naming the limit (and count the refusal).

    `sweep_stale(user_id)` settles the user's streams whose server process died, releasing what they
    held; it is called once when a budget would refuse while open streams hold part of it.
    """
    limits = limits_for(user)
    now = timezone.now()
    reserved = NO_RESERVATION
    try:
        worst = worst_case(limits, model=model, input_tokens=input_tokens, output_tokens=output_tokens, at=now)
        try:
            reserved = _reserve(user, limits, worst, now)
        except LimitExceeded:
            if sweep_stale is None or not sweep_stale(user.pk):
                raise
            reserved = _reserve(user, limits, worst, now)
        _check_rate(user, limits)
        admission = _take_slot(user, limits)
    except LimitExceeded as refusal:
        release_reservation(user.pk, reserved, at=now)
        record_refusal(user, refusal.limit)
        raise refusal.error from None
    admission.reserved, admission.at = reserved, now
    return admission


def worst_case(
    limits: EffectiveLimits, *, model: str, input_tokens: int, output_tokens: int, at: datetime
) -> Reservation:
    """The most a request may cost, in what the user's budgets count: tokens where a token budget
    applies; money where a money budget applies and the model has a price."""
    tokens = input_tokens + output_tokens
    cost = None
    if limits.daily_cost_budget or limits.monthly_cost_budget:
        price = pricing.price_for(model, at, pricing.prices_for(model, until=at))
        if price is not None:
            cost = price.cost(prompt_tokens=input_tokens, cached_tokens=0, completion_tokens=output_tokens)
    return Reservation(tokens=tokens if limits.daily_token_budget or limits.monthly_token_budget else 0, cost=cost)


def release_reservation(user_id: int, reserved: Reservation, *, at: datetime) -> None:
    """Give back what a request held without using any of it (it was refused after all)."""
    settle_reservation(user_id, reserved, tokens=0, cost=None, at=at)


class LimitExceeded(Exception):
    def __init__(self, limit: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.error = limit_exceeded(limit=limit, message=message, retry_after=retry_after)


def _reserve(user: AbstractBaseUser, limits: EffectiveLimits, worst: Reservation, now: datetime) -> Reservation:
    """Add the request's worst case to the user's counters if it fits every budget, else refuse
    (and take it off again). Racing requests are ordered by the counters' atomic `incr`: each sees
    the others' reservations, so together they never overshoot a budget."""
    if not (worst.tokens or worst.cost):
        return NO_RESERVATION
    now = timezone.localtime(now)
    keys = _spending_keys(user.pk, now)
    spending(user.pk, now)  # seeds the counters where missing
    amounts = (worst.tokens, worst.tokens, _cost_units(worst.cost), _cost_units(worst.cost))
    budgets: tuple[Decimal | int, ...] = (
        limits.daily_token_budget,
        limits.monthly_token_budget,
        limits.daily_cost_budget / COST_UNIT,
        limits.monthly_cost_budget / COST_UNIT,
    )
    reached: dict[str, int] = {}
    complete = True
    for key, amount, budget in zip(keys, amounts, budgets, strict=True):
        try:
            if amount:
                reached[key] = cache.incr(key, amount)
            elif budget:  # nothing to hold (no price known): refused only once the budget is used up
                reached[key] = cache.get(key, 0)
        except ValueError:  # a counter went missing since it was seeded: nothing held there
            complete = False
    for limit, key, amount, budget in zip(LIMIT_FIELDS[2:], keys, amounts, budgets, strict=True):
        if budget and key in reached and (reached[key] > budget or (not amount and reached[key] >= budget)):
            _undo(reached, amounts, keys)
            raise _budget_refusal(user, limit, used=reached[key] - amount, wanted=amount, budget=budget, now=now)
    if not complete:  # held in part: what was added comes off again, and the request goes on unreserved
        _undo(reached, amounts, keys)
        return NO_RESERVATION
    return Reservation(tokens=worst.tokens, cost=worst.cost)


def _undo(reached: dict[str, int], amounts: tuple[int, ...], keys: list[str]) -> None:
    for key, amount in zip(keys, amounts, strict=True):
        if amount and key in reached:
            with contextlib.suppress(ValueError):
                cache.incr(key, -amount)


def _budget_refusal(
    user: AbstractBaseUser, limit: str, *, used: int, wanted: int, budget: Decimal | int, now: datetime
) -> LimitExceeded:
    """The refusal by one budget: how much is used, how much open streams hold, what this request
    needed, and when the budget resets."""
    today, month = period_starts(now)
    daily = limit in (Limit.DAILY_TOKEN_BUDGET, Limit.DAILY_COST_BUDGET)
    in_tokens = limit in (Limit.DAILY_TOKEN_BUDGET, Limit.MONTHLY_TOKEN_BUDGET)
    held = UsageLog.objects.filter(
        user_id=user.pk, status=UsageLog.Status.IN_PROGRESS, created_at__gte=today if daily else month
    ).aggregate(
        streams=models.Count("pk"),
        tokens=Sum("reserved_tokens", default=0),
        cost=Sum("reserved_cost", default=Decimal(0)),
    )
    if in_tokens:
        unit = "tokens"
        used_text, held_text, budget_text, wanted_text = f"{used}", f"{held['tokens']}", f"{budget}", f"{wanted}"
    else:
        unit = app_settings.CHAT_CURRENCY
        used_text, held_text = f"{used * COST_UNIT:.2f}", f"{held['cost']:.2f}"
        budget_text, wanted_text = f"{budget * COST_UNIT:.2f}", f"{wanted * COST_UNIT:.2f}"
    if daily:
        resets, retry_after = "it resets at midnight UTC.", today + timedelta(days=1) - now
    else:
        resets, retry_after = "it resets on the first of the month.", (month + timedelta(days=32)).replace(day=1) - now
    streams = held["streams"]
    holding = f", {held_text} of them held by {streams} open stream{'s' if streams != 1 else ''}" if streams else ""
    label = Limit(limit).label
    if used >= budget:
        message = f"{label} used up ({used_text} of {budget_text} {unit}{holding}); {resets}"
    else:
        message = (
            f"{label} too low for this request: it may need up to {wanted_text} {unit}, and {used_text} of "
            f"{budget_text} are used{holding}; {resets}"
        )
    return LimitExceeded(limit, message, int(retry_after.total_seconds()))


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
