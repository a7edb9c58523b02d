"""The logged-in user's own usage page: what they used today and this month against their limits,
their recent requests, and this month per API key (and the chat page).

The view is thin; the selectors below are keyword-only functions that take the user explicitly, so
no query here can read another user's rows. Budgets and spending come from `streaming.limits`, the
same numbers admission refuses by.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from .conf import app_settings
from .key_views import signed_in_user
from .limits import EffectiveLimits, Spending, limits_for, period_starts, spending
from .models import UsageLog

RECENT_REQUESTS = 50
# Share of a budget from which its meter shows as nearly used up.
NEARLY_USED_UP = Decimal("0.8")


def format_cost(amount: Decimal | None, currency: str) -> str:
    """A cost for people: "—" when unknown; 2 decimals from 1 up (12.35 USD); below 1, 4 decimals
    with trailing zeros dropped down to 2 (0.50, 0.0345, 0.0001 USD); a cost that would round to
    zero at 4 decimals reads "< 0.0001", so a request that cost something never shows as free."""
    if amount is None:
        return "—"
    if amount == 0:
        return f"0.00 {currency}"
    if abs(amount) >= 1:
        return f"{amount.quantize(Decimal('0.01'), ROUND_HALF_UP):,} {currency}"
    shown = amount.quantize(Decimal("0.0001"), ROUND_HALF_UP)
    if shown == 0:
        return f"< 0.0001 {currency}"
    text = f"{shown:f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')} {currency}"


def format_tokens(count: int) -> str:
    return f"{count:,}"


@dataclass(frozen=True)
class Budget:
    """One budget as the page shows it: what was used of how much (a limit of 0: no limit)."""

    key: str
    label: str
    used: int | Decimal
    limit: int | Decimal
    used_text: str
    limit_text: str

    @property
    def unlimited(self) -> bool:
        return not self.limit

    @property
    def used_up(self) -> bool:
        return bool(self.limit) and self.used >= self.limit

    @property
    def percent(self) -> str:
        """The share used, in whole percent; "<1%" rather than "0%" once anything was used."""
        if self.unlimited:
            return ""
        share = min(100, int(Decimal(self.used) * 100 / Decimal(self.limit)))
        return "<1%" if share == 0 and self.used else f"{share}%"

    # <meter> attributes, never localized.
    @property
    def value_attr(self) -> str:
        return str(min(self.used, self.limit)) if self.limit else "0"

    @property
    def max_attr(self) -> str:
        return str(self.limit)

    @property
    def high_attr(self) -> str:
        return str(Decimal(self.limit) * NEARLY_USED_UP)


@dataclass(frozen=True)
class RequestLine:
    row: UsageLog
    tokens: str
    cost: str

    @property
    def source(self) -> str:
        return self.row.api_key.public_id if self.row.api_key else "chat page"


@dataclass(frozen=True)
class SourceSummary:
    """This month's requests from one API key, or from the chat page (`public_id` empty)."""

    name: str
    public_id: str
    revoked: bool
    requests: int
    tokens: str
    cost: str
    unpriced: int


def budgets(*, limits: EffectiveLimits, spent: Spending, currency: str) -> list[Budget]:
    def cost(amount: Decimal) -> str:
        return format_cost(amount, currency)

    def tokens(count: int) -> str:
        return f"{format_tokens(count)} tokens"

    return [
        Budget(
            "tokens-today",
            "Tokens today",
            spent.tokens_today,
            limits.daily_token_budget,
            tokens(spent.tokens_today),
            tokens(limits.daily_token_budget),
        ),
        Budget(
            "cost-today",
            "Cost today",
            spent.cost_today,
            limits.daily_cost_budget,
            cost(spent.cost_today),
            cost(limits.daily_cost_budget),
        ),
        Budget(
            "tokens-month",
            "Tokens this month",
            spent.tokens_this_month,
            limits.monthly_token_budget,
            tokens(spent.tokens_this_month),
            tokens(limits.monthly_token_budget),
        ),
        Budget(
            "cost-month",
            "Cost this month",
            spent.cost_this_month,
            limits.monthly_cost_budget,
            cost(spent.cost_this_month),
            cost(limits.monthly_cost_budget),
        ),
    ]


def recent_requests(*, user: AbstractBaseUser, currency: str, limit: int = RECENT_REQUESTS) -> list[RequestLine]:
    """The user's last `limit` requests, newest first."""
    rows = UsageLog.objects.filter(user_id=user.pk).select_related("api_key").order_by("-created_at", "-pk")[:limit]
    return [RequestLine(row, format_tokens(row.total_tokens), format_cost(row.cost, currency)) for row in rows]


def month_by_source(*, user: AbstractBaseUser, currency: str, now: datetime | None = None) -> list[SourceSummary]:
    """This month's requests, tokens and cost per API key and for the chat page, most tokens first.

    `unpriced` counts the requests whose model had no price: their cost is unknown, not counted."""
    month = period_starts(now)[1]
    groups = (
        UsageLog.objects.filter(user_id=user.pk, created_at__gte=month)
        .values("api_key", "api_key__name", "api_key__prefix", "api_key__revoked_at")
        .annotate(
            requests=Count("pk"),
            tokens_sum=Sum("total_tokens", default=0),
            cost_sum=Sum("cost"),
            unpriced=Count("pk", filter=Q(cost__isnull=True)),
        )
        .order_by("-tokens_sum", "api_key")
    )
    return [
        SourceSummary(
            name=group["api_key__name"] or "Chat page",
            public_id=f"chp_{group['api_key__prefix']}" if group["api_key"] else "",
            revoked=group["api_key__revoked_at"] is not None,
            requests=group["requests"],
            tokens=format_tokens(group["tokens_sum"]),
            cost=format_cost(group["cost_sum"], currency),
            unpriced=group["unpriced"],
        )
        for group in groups
    ]


def rate_limit_text(value: int) -> str:
    return f"{value:,}" if value else "no limit"


@never_cache  # one person's usage: no shared cache may keep it
@login_required
@require_safe
def usage_page(request: HttpRequest) -> HttpResponse:
    user = signed_in_user(request)
    currency = app_settings.CHAT_CURRENCY
    now = timezone.localtime()
    limits = limits_for(user)
    by_source = month_by_source(user=user, currency=currency, now=now)
    context = {
        "budgets": budgets(limits=limits, spent=spending(user.pk, now), currency=currency),
        "requests_per_minute": rate_limit_text(limits.requests_per_minute),
        "concurrent_streams": rate_limit_text(limits.concurrent_streams),
        "recent": recent_requests(user=user, currency=currency),
        "recent_limit": RECENT_REQUESTS,
        "by_source": by_source,
        "unpriced_this_month": sum(source.unpriced for source in by_source),
        "currency": currency,
        "time_zone": timezone.get_current_timezone_name(),
    }
    return render(request, "streaming/usage.html", context)
