from datetime import timedelta
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponseBadRequest, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from .api_keys import KEY_PREFIX, KeyState, key_state, keys_in_state, revoke_api_keys
from .conf import app_settings
from .dashboard import DashboardForm, build_dashboard, csv_chunks, csv_chunks_async, csv_rows, default_filters
from .models import ApiKey, Conversation, ConversationMessage, LimitRefusal, ModelPrice, UsageLimit, UsageLog
from .reports import per_user_totals


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by the application: staff may browse them, never add or edit them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class FinishReasonFilter(admin.SimpleListFilter):
    """The finish reasons the rows hold (providers add their own), and "none" for answers that did not end."""

    title = "finish reason"
    parameter_name = "finish_reason"
    NONE = "none"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        reasons = model_admin.get_queryset(request).order_by("finish_reason").values_list("finish_reason", flat=True)
        return [(reason or self.NONE, reason or "none (did not end)") for reason in reasons.distinct()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageLog]) -> QuerySet[UsageLog]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(finish_reason="" if value == self.NONE else value)


class ToolCallsFilter(admin.SimpleListFilter):
    title = "tool calls"
    parameter_name = "made_tool_calls"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "made tool calls"), ("no", "made none")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageLog]) -> QuerySet[UsageLog]:
        if self.value() == "yes":
            return queryset.filter(tool_calls__gt=0)
        if self.value() == "no":
            return queryset.filter(tool_calls=0)
        return queryset


class MadeByFilter(admin.SimpleListFilter):
    title = "made by"
    parameter_name = "made_by"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("page", "the page"), ("api_key", "an API key")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageLog]) -> QuerySet[UsageLog]:
        if self.value() == "page":
            return queryset.filter(api_key__isnull=True)
        if self.value() == "api_key":
            return queryset.filter(api_key__isnull=False)
        return queryset


@admin.register(UsageLog)
class UsageLogAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "user",
        "made_with_key",
        "endpoint",
        "model",
        "status",
        "finish_reason",
        "tool_calls",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "tokens_estimated",
        "cost",
        "time_to_first_token_ms",
        "duration_ms",
    )
    list_filter = (
        "status",
        "endpoint",
        "price_missing",
        MadeByFilter,
        FinishReasonFilter,
        ToolCallsFilter,
        "model",
        ("created_at", admin.DateFieldListFilter),
        "tokens_estimated",
    )
    search_fields = ("user__username", "=upstream_response_id", "=upstream_request_id")
    date_hierarchy = "created_at"
    list_select_related = ("user", "api_key")
    ordering = ("-created_at",)
    actions = ["export_csv"]

    @admin.display(description="API key", ordering="api_key__prefix", empty_value="")
    def made_with_key(self, row: UsageLog) -> str | None:
        return row.api_key.public_id if row.api_key else None

    def get_urls(self):
        totals = path(
            "per-user-totals/",
            self.admin_site.admin_view(self.per_user_totals_view),
            name="streaming_usagelog_per_user_totals",
        )
        dashboard = path(
            "dashboard/",
            self.admin_site.admin_view(self.dashboard_view),
            name="streaming_usagelog_dashboard",
        )
        export = path(
            "dashboard/usage.csv",
            self.admin_site.admin_view(self.export_view),
            name="streaming_usagelog_export",
        )
        return [totals, dashboard, export, *super().get_urls()]

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

    def dashboard_view(self, request: HttpRequest) -> TemplateResponse:
        """Cost, tokens, outcomes and time to first token over a range of days, filtered by GET parameters."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = DashboardForm(request.GET)
        dashboard = build_dashboard(form.filters()) if form.is_valid() else None
        filters = dashboard.filters if dashboard else default_filters()
        today = default_filters().end
        month = today.replace(day=1)
        last_month = (month - timedelta(days=1)).replace(day=1)
        kept = {name: request.GET[name] for name in ("model", "user", "key") if request.GET.get(name)}
        ranges = [
            ("Last 30 days", default_filters().start, today),
            ("This month", month, today),
            ("Last month", last_month, month - timedelta(days=1)),
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Usage dashboard",
            "opts": self.model._meta,
            "form": form,
            "dashboard": dashboard,
            "filters": filters,
            "charts": dashboard.charts() if dashboard else {},
            "query": request.GET.urlencode(),
            "without_user": "".join(
                f"{urlencode({name: value})}&" for name, value in request.GET.items() if name != "user"
            ),
            "ranges": [
                (label, urlencode({**kept, "start": start.isoformat(), "end": end.isoformat()}))
                for label, start, end in ranges
            ],
            "allowed_models": sorted(
                set(app_settings.CHAT_ALLOWED_MODELS) | set(dashboard.models if dashboard else ())
            ),
        }
        return TemplateResponse(request, "admin/streaming/usagelog/dashboard.html", context)

    def export_view(self, request: HttpRequest) -> StreamingHttpResponse | HttpResponseBadRequest:
        """The usage rows the dashboard's filters select, as CSV, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = DashboardForm(request.GET)
        if not form.is_valid():
            return HttpResponseBadRequest(
                " ".join(str(error) for error in form.non_field_errors()) or "Invalid filters."
            )
        filters = form.filters()
        return self._csv_response(request, filters.usage(), f"usage-{filters.start}-to-{filters.end}.csv")

    @admin.action(description="Export selected rows as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[UsageLog]) -> StreamingHttpResponse:
        return self._csv_response(request, queryset, "usage.csv")

    def _csv_response(self, request: HttpRequest, rows: QuerySet[UsageLog], filename: str) -> StreamingHttpResponse:
        # Under ASGI a sync iterator would be read whole before the first byte is sent.
        chunks = csv_chunks_async(rows) if isinstance(request, ASGIRequest) else csv_chunks(csv_rows(rows))
        return StreamingHttpResponse(
            chunks,
            content_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )


@admin.register(UsageLimit)
class UsageLimitAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "requests_per_minute",
        "concurrent_streams",
        "daily_token_budget",
        "monthly_token_budget",
        "daily_cost_budget",
        "monthly_cost_budget",
    )
    raw_id_fields = ("user",)
    search_fields = ("user__username", "group__name")
    fieldsets = (
        ("Applies to (one of)", {"fields": ("user", "group")}),
        (
            "Limits (empty: the site default; 0: no limit)",
            {
                "fields": (
                    "requests_per_minute",
                    "concurrent_streams",
                    "daily_token_budget",
                    "monthly_token_budget",
                    "daily_cost_budget",
                    "monthly_cost_budget",
                )
            },
        ),
    )


class ModelPriceForm(forms.ModelForm):
    class Meta:
        model = ModelPrice
        fields = (
            "model",
            "match",
            "input_per_million",
            "cached_input_per_million",
            "output_per_million",
            "currency",
            "valid_from",
            "note",
        )

    def clean_currency(self) -> str:
        currency = self.cleaned_data["currency"].upper()
        if currency != app_settings.CHAT_CURRENCY:
            raise forms.ValidationError(
                f"Prices are in the site's currency, {app_settings.CHAT_CURRENCY} (CHAT_CURRENCY), so costs add up."
            )
        return currency


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """A price change is a new price with a later "valid from", so past rows keep their cost; editing a
    price changes no stored cost until `manage.py recompute_costs` is run for the days it covers."""

    form = ModelPriceForm
    list_display = ModelPriceForm.Meta.fields
    list_filter = ("match", "currency")
    search_fields = ("model", "note")
    ordering = ("model", "-valid_from")

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, str | list[str]]:
        return {**super().get_changeform_initial_data(request), "currency": app_settings.CHAT_CURRENCY}


@admin.register(LimitRefusal)
class LimitRefusalAdmin(ReadOnlyAdmin):
    list_display = ("day", "user", "limit", "count")
    list_filter = ("limit", "day")
    search_fields = ("user__username",)
    list_select_related = ("user",)


class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(state.value, str(state.label)) for state in KeyState]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        value = self.value()
        if value not in KeyState.values:
            return queryset
        return keys_in_state(queryset, state=KeyState(value))


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    """Everyone's keys, never their secrets; staff revoke them here, their owners create them."""

    list_display = ("user", "name", "public_id", "created_at", "last_used_at", "expires_at", "state")
    list_filter = (KeyStateFilter, ("user", admin.RelatedOnlyFieldListFilter))
    search_fields = ("user__username", "name", "prefix")
    list_select_related = ("user",)
    ordering = ("-created_at",)
    fields = ("user", "name", "public_id", "state", "created_at", "last_used_at", "expires_at", "revoked_at")
    readonly_fields = fields
    actions = ["revoke_selected"]

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        """Revoked keys stay, so the usage rows they made keep saying which key made them."""
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{ApiKey._meta.app_label}.change_{ApiKey._meta.model_name}")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ApiKey], search_term: str
    ) -> tuple[QuerySet[ApiKey], bool]:
        """A public id as the lists show it (`chp_1a2b3c4d…`) finds its key."""
        term = search_term.strip().removeprefix(KEY_PREFIX).removesuffix("…")
        return super().get_search_results(request, queryset, term)

    @admin.display(description="key", ordering="prefix")
    def public_id(self, key: ApiKey) -> str:
        return key.public_id

    @admin.display(description="state")
    def state(self, key: ApiKey) -> str:
        return str(key_state(key).label)

    @admin.action(description="Revoke selected keys", permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = revoke_api_keys(keys=queryset)
        self.message_user(request, f"Revoked {revoked} key{'s' if revoked != 1 else ''}.", messages.SUCCESS)


class SuperuserReadOnly:
    """What users wrote to the model: superusers may read and delete it, no one may add or edit it,
    and other staff never see it (not even in the admin's index)."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ConversationMessageInline(SuperuserReadOnly, admin.TabularInline):
    model = ConversationMessage
    fields = ("created_at", "role", "status", "shown_content", "tool_calls", "tool_call_id", "usage_link")
    readonly_fields = fields
    extra = 0

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        """Messages go with their conversation, never one by one."""
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[ConversationMessage]:
        return super().get_queryset(request).select_related("usage")

    @admin.display(description="content")
    def shown_content(self, message: ConversationMessage) -> str:
        """The text, with each image as its size (a data URL would fill the page)."""
        content = message.content
        if not isinstance(content, list):
            return "" if content is None else str(content)
        shown = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = str((part.get("image_url") or {}).get("url", ""))
                shown.append(f"[image, {len(url):,} bytes]" if url.startswith("data:") else f"[image: {url}]")
            elif isinstance(part, dict):
                shown.append(str(part.get("text", "")))
        return "\n".join(shown)

    @admin.display(description="usage row")
    def usage_link(self, message: ConversationMessage) -> str:
        if message.usage is None:
            return "—"
        url = reverse("admin:streaming_usagelog_change", args=[message.usage.pk])
        return format_html('<a href="{}">{}</a>', url, message.usage)


@admin.register(Conversation)
class ConversationAdmin(SuperuserReadOnly, admin.ModelAdmin):
    """Users' saved conversations, for superusers only: they hold prompts, answers and images."""

    list_display = ("title", "user", "model", "message_count", "created_at", "updated_at")
    list_filter = (("updated_at", admin.DateFieldListFilter),)
    search_fields = ("user__username", "title")
    list_select_related = ("user",)
    ordering = ("-updated_at",)
    fields = ("id", "user", "title", "model", "created_at", "updated_at")
    readonly_fields = fields
    inlines = [ConversationMessageInline]

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).annotate(message_total=Count("messages"))

    @admin.display(description="messages", ordering="message_total")
    def message_count(self, conversation: Conversation) -> int:
        return conversation.message_total  # type: ignore[attr-defined]


# The admin index links to the usage dashboard. An app's `admin/index.html` would lose to the
# admin's own (listed first in INSTALLED_APPS), so the default site is pointed at one that extends
# it, unless the site already has its own index template.
if admin.site.index_template is None:
    admin.site.index_template = "admin/streaming/index.html"
