from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, Sum
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path

from .limits import LIMIT_FIELDS, period_starts, resolve_limits
from .models import LimitRefusal, UsageLimit, UsageLog


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the application: staff may browse them, never add or edit them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(UsageLog)
class UsageLogAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "user",
        "model",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "tokens_estimated",
        "time_to_first_token_ms",
        "duration_ms",
    )
    list_filter = ("status", "model", ("created_at", admin.DateFieldListFilter), "tokens_estimated")
    search_fields = ("user__username",)
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    ordering = ("-created_at",)

    def get_urls(self):
        totals = path(
            "per-user-totals/",
            self.admin_site.admin_view(self.per_user_totals_view),
            name="streaming_usagelog_per_user_totals",
        )
        return [totals, *super().get_urls()]

    def per_user_totals_view(self, request: HttpRequest) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Usage per user",
            "opts": self.model._meta,
            "rows": per_user_totals(),
        }
        return TemplateResponse(request, "admin/streaming/usagelog/per_user_totals.html", context)


def per_user_totals() -> list:
    """Each user who has made or been refused a request: request counts by status, token sums overall,
    today and this month, refusals today, and the limits that apply to them."""
    today, month = period_starts()
    users = list(
        get_user_model()
        .objects.filter(Q(usage_logs__isnull=False) | Q(limit_refusals__isnull=False))
        .distinct()
        .annotate(
            requests=Count("usage_logs", distinct=True),
            completed=Count("usage_logs", filter=Q(usage_logs__status=UsageLog.Status.COMPLETED), distinct=True),
            errors=Count("usage_logs", filter=Q(usage_logs__status=UsageLog.Status.ERROR), distinct=True),
            cancelled=Count("usage_logs", filter=Q(usage_logs__status=UsageLog.Status.CANCELLED), distinct=True),
        )
        .order_by("username")
    )
    token_sums = {
        row["user"]: row
        for row in UsageLog.objects.values("user").annotate(
            prompt_sum=Sum("prompt_tokens"),
            completion_sum=Sum("completion_tokens"),
            total_sum=Sum("total_tokens"),
            today_sum=Sum("total_tokens", filter=Q(created_at__gte=today)),
            month_sum=Sum("total_tokens", filter=Q(created_at__gte=month)),
        )
    }
    refusals_today = dict(
        LimitRefusal.objects.filter(day=today.date()).values("user").annotate(n=Sum("count")).values_list("user", "n")
    )
    overrides = list(UsageLimit.objects.values("user_id", "group_id", *LIMIT_FIELDS))
    own = {row["user_id"]: row for row in overrides if row["user_id"]}
    by_group = {row["group_id"]: row for row in overrides if row["group_id"]}
    memberships: dict[int, list[int]] = {}
    for user_id, group_id in get_user_model().groups.through.objects.values_list("user_id", "group_id"):
        memberships.setdefault(user_id, []).append(group_id)
    for user in users:
        sums = token_sums.get(user.pk, {})
        user.prompt_tokens = sums.get("prompt_sum") or 0
        user.completion_tokens = sums.get("completion_sum") or 0
        user.total_tokens = sums.get("total_sum") or 0
        user.tokens_today = sums.get("today_sum") or 0
        user.tokens_this_month = sums.get("month_sum") or 0
        user.refusals_today = refusals_today.get(user.pk, 0)
        groups = [by_group[g] for g in memberships.get(user.pk, []) if g in by_group]
        user.limits = resolve_limits(own.get(user.pk), groups)
    return sorted(users, key=lambda user: -user.total_tokens)


@admin.register(UsageLimit)
class UsageLimitAdmin(admin.ModelAdmin):
    list_display = ("__str__", "requests_per_minute", "concurrent_streams", "daily_token_budget", "monthly_token_budget")
    raw_id_fields = ("user",)
    search_fields = ("user__username", "group__name")
    fieldsets = (
        ("Applies to (one of)", {"fields": ("user", "group")}),
        (
            "Limits (empty: the site default; 0: no limit)",
            {"fields": ("requests_per_minute", "concurrent_streams", "daily_token_budget", "monthly_token_budget")},
        ),
    )


@admin.register(LimitRefusal)
class LimitRefusalAdmin(ReadOnlyAdmin):
    list_display = ("day", "user", "limit", "count")
    list_filter = ("limit", "day")
    search_fields = ("user__username",)
    list_select_related = ("user",)
