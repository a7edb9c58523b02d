from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet, Sum
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from .models import UsageLog


@admin.register(UsageLog)
class UsageLogAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageLog | None = None) -> bool:
        return False

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


def per_user_totals() -> QuerySet:
    """Each user who has made a request: request counts by status, token sums overall, today and this month."""
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    month = today.replace(day=1)
    return (
        get_user_model()
        .objects.filter(usage_logs__isnull=False)
        .annotate(
            requests=Count("usage_logs"),
            completed=Count("usage_logs", filter=Q(usage_logs__status=UsageLog.Status.COMPLETED)),
            errors=Count("usage_logs", filter=Q(usage_logs__status=UsageLog.Status.ERROR)),
            cancelled=Count("usage_logs", filter=Q(usage_logs__status=UsageLog.Status.CANCELLED)),
            prompt_tokens=Sum("usage_logs__prompt_tokens"),
            completion_tokens=Sum("usage_logs__completion_tokens"),
            total_tokens=Sum("usage_logs__total_tokens"),
            tokens_today=Sum("usage_logs__total_tokens", filter=Q(usage_logs__created_at__gte=today), default=0),
            tokens_this_month=Sum("usage_logs__total_tokens", filter=Q(usage_logs__created_at__gte=month), default=0),
        )
        .order_by("-total_tokens")
    )
