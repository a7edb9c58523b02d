"""Read-only reports over the usage log, as plain rows for the admin."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db.models import Aggregate, Count, Exists, OuterRef, Q, Sum

from .limits import LIMIT_FIELDS, EffectiveLimits, period_starts, resolve_limits
from .models import LimitRefusal, UsageLimit, UsageLog


@dataclass(frozen=True)
class UserTotals:
    """One user's requests by status, tokens overall, today and this month, refusals today, and limits."""

    user_id: int
    username: str
    requests: int
    completed: int
    errors: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    tokens_today: int
    tokens_this_month: int
    refusals_today: int
    limits: EffectiveLimits


def per_user_totals(*, now: datetime | None = None) -> list[UserTotals]:
    """Each user who has made or been refused a request, most tokens first, then by username.

    At most five queries however many users there are; the database does the counting and summing.
    """
    today, month = period_starts(now)
    user_model = get_user_model()
    users = list(
        user_model.objects.filter(
            Exists(UsageLog.objects.filter(user=OuterRef("pk")))
            | Exists(LimitRefusal.objects.filter(user=OuterRef("pk")))
        )
        .order_by(user_model.USERNAME_FIELD)
        .values_list("pk", user_model.USERNAME_FIELD)
    )
    aggregates = _usage_aggregates(today, month)
    # Aliased: an annotation may not take the name of a model field (`total_tokens`).
    grouped = UsageLog.objects.values("user").annotate(
        **{f"aggregate_{name}": value for name, value in aggregates.items()}
    )
    usage = {row["user"]: {name: row[f"aggregate_{name}"] for name in aggregates} for row in grouped}
    no_usage = dict.fromkeys(aggregates, 0)
    refusals_today = dict(
        LimitRefusal.objects.filter(day=today.date()).values("user").annotate(n=Sum("count")).values_list("user", "n")
    )
    limits = _limits_of([user_id for user_id, _ in users])
    rows = [
        UserTotals(
            user_id=user_id,
            username=username,
            **usage.get(user_id, no_usage),
            refusals_today=refusals_today.get(user_id, 0),
            limits=limits[user_id],
        )
        for user_id, username in users
    ]
    return sorted(rows, key=lambda row: -row.total_tokens)


def _usage_aggregates(today: datetime, month: datetime) -> dict[str, Aggregate]:
    status = UsageLog.Status
    return {
        "requests": Count("pk"),
        "completed": Count("pk", filter=Q(status=status.COMPLETED)),
        "errors": Count("pk", filter=Q(status__in=(status.ERROR, status.INTERRUPTED))),
        "cancelled": Count("pk", filter=Q(status=status.CANCELLED)),
        "prompt_tokens": Sum("prompt_tokens", default=0),
        "completion_tokens": Sum("completion_tokens", default=0),
        "total_tokens": Sum("total_tokens", default=0),
        "tokens_today": Sum("total_tokens", filter=Q(created_at__gte=today), default=0),
        "tokens_this_month": Sum("total_tokens", filter=Q(created_at__gte=month), default=0),
    }


def _limits_of(user_ids: Collection[int]) -> dict[int, EffectiveLimits]:
    """The users' effective limits, from two queries for all of them."""
    overrides = list(UsageLimit.objects.values("user_id", "group_id", *LIMIT_FIELDS))
    own = {row["user_id"]: row for row in overrides if row["user_id"]}
    by_group = {row["group_id"]: row for row in overrides if row["group_id"]}
    memberships: dict[int, list[dict]] = {}
    limited = get_user_model().groups.through.objects.filter(group_id__in=by_group)
    for user_id, group_id in limited.values_list("user_id", "group_id"):
        memberships.setdefault(user_id, []).append(by_group[group_id])
    return {user_id: resolve_limits(own.get(user_id), memberships.get(user_id, [])) for user_id in user_ids}
