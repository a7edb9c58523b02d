"""The usage dashboard in the admin: what the usage log says, per day, per model, per user and key.

Every chart is one aggregate query, counted and summed in the database over the indexed
`created_at` range (the outcomes chart adds one for the refusals, another table), and drawn on
the server as inline SVG by pygal, with no script and no external file, so the admin works
offline. Each chart's numbers also come as a table.
"""

from __future__ import annotations

import csv
import re
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pygal  # type: ignore[import-untyped]
from asgiref.sync import sync_to_async
from django import forms
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import (
    Aggregate,
    Count,
    DateField,
    Expression,
    ExpressionWrapper,
    F,
    FloatField,
    Func,
    IntegerField,
    Q,
    QuerySet,
    Sum,
    Value,
)
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from pygal.style import Style  # type: ignore[import-untyped]

from .api_keys import KEY_PREFIX
from .conf import app_settings
from .models import ApiKey, LimitRefusal, UsageLog

DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP = 10
PERCENTILES = (0.5, 0.95)
CSV_CHUNK_ROWS = 2000

Status = UsageLog.Status


# -- Filters ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What every chart and the CSV export cover: days (inclusive, in TIME_ZONE), and optionally one
    model, one user (by username) and one key (by its public prefix)."""

    start: date
    end: date
    model: str = ""
    username: str = ""
    key_prefix: str = ""

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]

    def bounds(self) -> tuple[datetime, datetime]:
        """The range as aware datetimes: from the first day's midnight to the midnight after the last."""
        zone = timezone.get_current_timezone()
        return (
            timezone.make_aware(datetime.combine(self.start, time()), zone),
            timezone.make_aware(datetime.combine(self.end + timedelta(days=1), time()), zone),
        )

    def usage(self) -> QuerySet[UsageLog]:
        since, until = self.bounds()
        rows = UsageLog.objects.filter(created_at__gte=since, created_at__lt=until)
        if self.model:
            rows = rows.filter(model=self.model)
        if self.username:
            rows = rows.filter(**{f"user__{get_user_model().USERNAME_FIELD}": self.username})
        if self.key_prefix:
            rows = rows.filter(api_key__prefix=self.key_prefix)
        return rows

    @property
    def refusals_apply(self) -> bool:
        """Refusals are counted per user and day, not per model or key: a model or key filter leaves none."""
        return not (self.model or self.key_prefix)

    def refusals(self) -> QuerySet[LimitRefusal]:
        rows = LimitRefusal.objects.filter(day__gte=self.start, day__lte=self.end)
        if self.username:
            rows = rows.filter(**{f"user__{get_user_model().USERNAME_FIELD}": self.username})
        return rows


def default_filters(today: date | None = None) -> Filters:
    today = today or timezone.localdate()
    return Filters(start=today - timedelta(days=DEFAULT_DAYS - 1), end=today)


class DashboardForm(forms.Form):
    """The filters as GET parameters: `start`, `end` (YYYY-MM-DD), `model`, `user`, `key`."""

    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    model = forms.CharField(required=False, max_length=200, widget=forms.TextInput(attrs={"list": "dashboard-models"}))
    user = forms.CharField(required=False, max_length=150, help_text="A username.")
    key = forms.CharField(required=False, max_length=40, help_text=f"An API key's public id, {KEY_PREFIX}….")

    def clean_key(self) -> str:
        return self.cleaned_data["key"].strip().removeprefix(KEY_PREFIX).removesuffix("…")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        default = default_filters()
        end = cleaned.get("end") or default.end
        start = cleaned.get("start") or (end - timedelta(days=DEFAULT_DAYS - 1))
        if start > end:
            raise forms.ValidationError("The start is after the end.")
        if (end - start).days + 1 > MAX_DAYS:
            raise forms.ValidationError(f"Choose at most {MAX_DAYS} days.")
        cleaned["start"], cleaned["end"] = start, end
        return cleaned

    def filters(self) -> Filters:
        data = self.cleaned_data
        return Filters(
            start=data["start"],
            end=data["end"],
            model=data.get("model", "").strip(),
            username=data.get("user", "").strip(),
            key_prefix=data.get("key", ""),
        )


# -- Queries: one aggregate per chart --------------------------------------------------------------


def local_day(filters: Filters) -> Expression:
    """`created_at` as a day in TIME_ZONE, computed by the database.

    Django's `TruncDate` is native SQL on PostgreSQL; on SQLite it calls a Python function for every
    row. There, when the zone's offset is the same on every day of the range (always in UTC; in
    other zones, unless the range spans a daylight-saving change), SQLite's own `date()` with that
    offset gives the same days several times faster.
    """
    if connection.vendor == "sqlite":
        since, until = filters.bounds()
        offsets = {
            timezone.localtime(since + timedelta(days=n)).utcoffset() for n in range((until - since).days + 1)
        } | {timezone.localtime(until).utcoffset()}
        if len(offsets) == 1 and (offset := offsets.pop()) is not None:
            minutes = int(offset.total_seconds() // 60)
            return Func(F("created_at"), Value(f"{minutes:+d} minutes"), function="date", output_field=DateField())
    return TruncDate("created_at")


@dataclass
class DayModel:
    day: date
    model: str
    requests: int
    tokens: int
    cost: Decimal
    unpriced: int
    completed: int
    error: int
    cancelled: int


def per_day_and_model(filters: Filters) -> list[DayModel]:
    """Requests by outcome, tokens and cost per day and model, in one query: the cost, tokens and
    outcomes charts all read it. Unpriced rows add no cost, and are counted."""
    grouped = (
        filters.usage()
        .annotate(day=local_day(filters))
        .values("day", "model")
        .annotate(
            n=Count("pk"),
            tokens=Sum("total_tokens", default=0),
            cost_sum=Sum("cost", default=Decimal(0)),
            unpriced=Count("pk", filter=Q(price_missing=True)),
            completed=Count("pk", filter=Q(status=Status.COMPLETED)),
            error=Count("pk", filter=Q(status__in=(Status.ERROR, Status.INTERRUPTED))),
            cancelled=Count("pk", filter=Q(status=Status.CANCELLED)),
        )
        .order_by("day", "model")
    )
    return [
        DayModel(
            day=_as_date(row["day"]),
            model=row["model"],
            requests=row["n"],
            tokens=row["tokens"],
            cost=Decimal(row["cost_sum"]),
            unpriced=row["unpriced"],
            completed=row["completed"],
            error=row["error"],
            cancelled=row["cancelled"],
        )
        for row in grouped
    ]


@dataclass
class DayOutcomes:
    day: date
    completed: int = 0
    error: int = 0
    cancelled: int = 0
    refused: int | None = 0


def outcomes_per_day(filters: Filters, per_day: list[DayModel]) -> list[DayOutcomes]:
    """Requests per day by status (from `per_day_and_model`), and those the limits refused (one query).

    Every day of the range has a row; `refused` is None when a model or key filter is set.
    """
    days = {day: DayOutcomes(day=day, refused=0 if filters.refusals_apply else None) for day in filters.days}
    for row in per_day:
        outcome = days[row.day]
        outcome.completed += row.completed
        outcome.error += row.error
        outcome.cancelled += row.cancelled
    if filters.refusals_apply:
        for day, refused in filters.refusals().values("day").annotate(n=Sum("count")).values_list("day", "n"):
            days[day].refused = refused
    return list(days.values())


@dataclass
class Spender:
    label: str
    requests: int
    tokens: int
    cost: Decimal
    unpriced: int
    owner: str = ""
    key_id: int | None = None

    @property
    def cost_text(self) -> str:
        return money(self.cost)


def _spending() -> dict[str, Aggregate]:
    return {
        "n": Count("pk"),
        "tokens": Sum("total_tokens", default=0),
        "cost_sum": Sum("cost", default=Decimal(0)),
        "unpriced": Count("pk", filter=Q(price_missing=True)),
    }


def _grouping(column: F) -> F | ExpressionWrapper:
    """The column to group by. On SQLite, `column + 0`: grouping by the bare column makes SQLite walk the
    (user, created_at) index user by user, reading the table in random order (2.5 times slower over a
    million rows than reading the range in `created_at` order and grouping in a temporary b-tree)."""
    if connection.vendor == "sqlite":
        return ExpressionWrapper(column + 0, output_field=IntegerField())
    return column


def top_users(filters: Filters, limit: int = TOP) -> list[Spender]:
    """The users who cost most in the range, then those who used most tokens.

    One aggregate query grouped by the user's id alone (no join per row), and one for the names of
    the few users it returns.
    """
    grouped = list(
        filters.usage()
        .annotate(user_key=_grouping(F("user")))
        .values("user_key")
        .annotate(**_spending())
        .order_by(F("cost_sum").desc(), F("tokens").desc(), "user_key")[:limit]
    )
    user_model = get_user_model()
    names = dict(
        user_model.objects.filter(pk__in=[row["user_key"] for row in grouped]).values_list(
            "pk", user_model.USERNAME_FIELD
        )
    )
    return [
        Spender(
            label=names[row["user_key"]],
            requests=row["n"],
            tokens=row["tokens"],
            cost=Decimal(row["cost_sum"]),
            unpriced=row["unpriced"],
        )
        for row in grouped
    ]


def top_keys(filters: Filters, limit: int = TOP) -> list[Spender]:
    """The API keys that cost most in the range (the chat page's own requests have none).

    As for users: one aggregate query by key id, one for the few keys it returns.
    """
    grouped = list(
        filters.usage()
        .filter(api_key__isnull=False)
        .values("api_key")
        .annotate(**_spending())
        .order_by(F("cost_sum").desc(), F("tokens").desc(), "api_key")[:limit]
    )
    username = f"user__{get_user_model().USERNAME_FIELD}"
    keys = {
        pk: (prefix, name, owner)
        for pk, prefix, name, owner in ApiKey.objects.filter(pk__in=[row["api_key"] for row in grouped]).values_list(
            "pk", "prefix", "name", username
        )
    }
    return [
        Spender(
            label=f"{KEY_PREFIX}{keys[row['api_key']][0]} ({keys[row['api_key']][1]})",
            owner=keys[row["api_key"]][2],
            key_id=row["api_key"],
            requests=row["n"],
            tokens=row["tokens"],
            cost=Decimal(row["cost_sum"]),
            unpriced=row["unpriced"],
        )
        for row in grouped
    ]


class PercentileCont(Aggregate):
    """PostgreSQL's `percentile_cont(fraction) WITHIN GROUP (ORDER BY expression)`."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, fraction: float) -> None:
        super().__init__(expression, fraction=float(fraction))


@dataclass
class FirstToken:
    model: str
    requests: int
    p50: float
    p95: float


def first_token_percentiles(filters: Filters) -> list[FirstToken]:
    """Time to first token, median and 95th percentile per model, interpolated as `percentile_cont` does.

    PostgreSQL computes it (one query). SQLite has no percentile aggregate: one query counts each
    model's requests per distinct time (whole milliseconds, so a few thousand rows however many
    requests), and the same interpolation is made here from the running counts.
    """
    timed = filters.usage().filter(time_to_first_token_ms__isnull=False)
    if connection.vendor == "postgresql":
        grouped = (
            timed.values("model")
            .annotate(n=Count("pk"), p50=PercentileCont("time_to_first_token_ms", 0.5))
            .annotate(p95=PercentileCont("time_to_first_token_ms", 0.95))
            .order_by("model")
        )
        return [FirstToken(row["model"], row["n"], row["p50"], row["p95"]) for row in grouped]
    counted = (
        timed.values_list("model", "time_to_first_token_ms")
        .annotate(n=Count("pk"))
        .order_by("model", "time_to_first_token_ms")
    )
    histograms: dict[str, list[tuple[int, int]]] = {}
    for model, ttft, n in counted:
        histograms.setdefault(model, []).append((ttft, n))
    result = []
    for model, histogram in histograms.items():
        size = sum(n for _, n in histogram)
        p50, p95 = (_interpolate(histogram, size, fraction) for fraction in PERCENTILES)
        result.append(FirstToken(model, size, p50, p95))
    return result


def _interpolate(histogram: list[tuple[int, int]], size: int, fraction: float) -> float:
    """`percentile_cont` over sorted (value, count) pairs: linear interpolation between the values
    at 0-based positions ⌊f·(n−1)⌋ and the one after it."""
    exact = fraction * (size - 1)
    low = int(exact)
    below = above = None
    seen = 0
    for value, n in histogram:
        if below is None and low < seen + n:
            below = value
        if low + 1 < seen + n:
            above = value
            break
        seen += n
    assert below is not None
    return below + (exact - low) * ((below if above is None else above) - below)


def _as_date(value: date | datetime | str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, str):
        return date.fromisoformat(value)
    return value


# -- The page --------------------------------------------------------------------------------------


def money(value: Decimal) -> str:
    """A cost as the page shows it: to a hundredth of a cent."""
    return f"{value.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"


def count(value: int) -> str:
    return str(value)


@dataclass
class Dashboard:
    filters: Filters
    currency: str
    per_day: list[DayModel]
    outcomes: list[DayOutcomes]
    users: list[Spender]
    keys: list[Spender]
    first_token: list[FirstToken]
    models: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(row.requests for row in self.per_day)

    @property
    def tokens(self) -> int:
        return sum(row.tokens for row in self.per_day)

    @property
    def cost(self) -> Decimal:
        return sum((row.cost for row in self.per_day), Decimal(0))

    @property
    def cost_text(self) -> str:
        return money(self.cost)

    @property
    def unpriced(self) -> int:
        return sum(row.unpriced for row in self.per_day)

    @property
    def refused(self) -> int | None:
        if not self.filters.refusals_apply:
            return None
        return sum(row.refused or 0 for row in self.outcomes)

    def by_day(self, value: str) -> list[dict[str, Any]]:
        """Rows for a table of `value` ("cost" or "tokens") per day: the day, one cell per model, and the total."""
        cells: dict[date, dict[str, Any]] = {day: {} for day in self.filters.days}
        for row in self.per_day:
            cells[row.day][row.model] = getattr(row, value)
        zero: Any = Decimal(0) if value == "cost" else 0
        show = money if value == "cost" else count
        return [
            {
                "day": day,
                "cells": [show(by_model.get(model, zero)) for model in self.models],
                "total": show(sum(by_model.values(), zero)),
            }
            for day, by_model in cells.items()
        ]

    @property
    def cost_table(self) -> list[dict[str, Any]]:
        return self.by_day("cost")

    @property
    def tokens_table(self) -> list[dict[str, Any]]:
        return self.by_day("tokens")

    def charts(self) -> dict[str, SafeString]:
        labels = [f"{day:%d %b}" for day in self.filters.days]
        outcomes = _chart(pygal.StackedBar, labels)
        for name in ("completed", "error", "cancelled"):
            outcomes.add(name, [getattr(row, name) for row in self.outcomes])
        if self.filters.refusals_apply:
            outcomes.add("refused", [row.refused or 0 for row in self.outcomes])
        first = _chart(pygal.Bar, [row.model for row in self.first_token])
        first.add("p50", [row.p50 for row in self.first_token])
        first.add("p95", [row.p95 for row in self.first_token])
        return {
            "cost": _svg(_by_day_chart(self, "cost", labels), f"Cost per day by model ({self.currency})"),
            "tokens": _svg(_by_day_chart(self, "tokens", labels), "Tokens per day by model"),
            "outcomes": _svg(outcomes, "Requests per day by outcome"),
            "first_token": _svg(first, "Time to first token by model (ms)"),
            "users": _svg(_spender_chart(self.users), f"Top users by cost ({self.currency})"),
            "keys": _svg(_spender_chart(self.keys), f"Top API keys by cost ({self.currency})"),
        }


def build_dashboard(filters: Filters) -> Dashboard:
    per_day = per_day_and_model(filters)
    models = sorted({row.model for row in per_day})
    return Dashboard(
        filters=filters,
        currency=app_settings.CHAT_CURRENCY,
        per_day=per_day,
        outcomes=outcomes_per_day(filters, per_day),
        users=top_users(filters),
        keys=top_keys(filters),
        first_token=first_token_percentiles(filters),
        models=models,
    )


# Mid-tone colours that read on the admin's white and its dark (#121212) background alike; text
# and guides take the admin's own CSS variables, so they follow its light and dark themes.
CHART_STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="var(--body-fg, #333)",
    foreground_strong="var(--body-fg, #333)",
    foreground_subtle="var(--body-quiet-color, #666)",
    guide_stroke_color="var(--hairline-color, #ccc)",
    major_guide_stroke_color="var(--hairline-color, #ccc)",
    font_family="var(--font-family-primary, sans-serif)",
    label_font_size=12,
    major_label_font_size=12,
    legend_font_size=13,
    title_font_size=15,
    opacity=".9",
    opacity_hover="1",
    colors=("#3d8bfd", "#f59f00", "#20c997", "#e8590c", "#9775fa", "#e64980", "#74b816", "#15aabf", "#868e96"),
)


def _chart(kind: type, labels: list[str]) -> Any:
    chart = kind(
        style=CHART_STYLE,
        js=[],  # no pygal.js from its CDN: the admin works offline
        disable_xml_declaration=True,
        width=900,
        height=320,
        x_label_rotation=0,
        show_minor_x_labels=len(labels) <= 10,
        x_labels_major_every=max(1, len(labels) // 8),
        truncate_label=-1,
        truncate_legend=24,
        print_values=False,
        no_data_text="No requests",
        margin=8,
    )
    chart.x_labels = labels
    return chart


def _by_day_chart(dashboard: Dashboard, value: str, labels: list[str]) -> Any:
    chart = _chart(pygal.StackedBar, labels)
    index = {day: n for n, day in enumerate(dashboard.filters.days)}
    for model in dashboard.models:
        series: list[float | None] = [None] * len(labels)
        for row in dashboard.per_day:
            if row.model == model:
                series[index[row.day]] = float(getattr(row, value))
        chart.add(model, series)
    return chart


def _spender_chart(spenders: list[Spender]) -> Any:
    chart = _chart(pygal.HorizontalBar, [])
    chart.show_legend = False
    drawn = spenders[::-1]  # pygal draws the first bar at the bottom: the biggest goes on top
    chart.x_labels = [spender.label for spender in drawn]
    chart.add("cost", [float(spender.cost) for spender in drawn])
    return chart


_SCRIPT = re.compile(r"<script\b.*?</script>", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def _svg(chart: Any, label: str) -> SafeString:
    """The chart as inline SVG: no script (pygal always embeds its config for its JS), no comments."""
    svg = chart.render(is_unicode=True)
    svg = _COMMENT.sub("", _SCRIPT.sub("", svg))
    svg = svg.replace("<title>Pygal</title>", f"<title>{escape(label)}</title>", 1)
    svg = svg.replace("<svg ", f'<svg role="img" aria-label="{escape(label)}" ', 1)
    return mark_safe(svg)  # noqa: S308 (pygal escapes the labels and values it writes)


# -- CSV export ------------------------------------------------------------------------------------

CSV_HEADER = (
    "time",
    "user",
    "key",
    "endpoint",
    "model",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "tokens_estimated",
    "cost",
    "currency",
    "price_missing",
    "time_to_first_token_ms",
    "duration_ms",
    "finish_reason",
    "upstream_request_id",
    "upstream_response_id",
)


class _Echo:
    """A file-like object whose `write` hands back what it is given (Django's "Streaming large CSV files")."""

    def write(self, value: str) -> str:
        return value


def _text(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (OWASP's CSV injection advice)."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def csv_rows(rows: QuerySet[UsageLog]) -> Iterator[tuple[Any, ...]]:
    """The rows, oldest first, as CSV_HEADER's columns; read from the database in chunks."""
    currency = app_settings.CHAT_CURRENCY
    username = f"user__{get_user_model().USERNAME_FIELD}"
    columns = rows.order_by("created_at", "pk").values_list(
        "created_at",
        username,
        "api_key__prefix",
        "endpoint",
        "model",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "tokens_estimated",
        "cost",
        "price_missing",
        "time_to_first_token_ms",
        "duration_ms",
        "finish_reason",
        "upstream_request_id",
        "upstream_response_id",
    )
    for row in columns.iterator(chunk_size=CSV_CHUNK_ROWS):
        (created, user, prefix, endpoint, model, status, prompt, completion, total, cached, reasoning) = row[:11]
        (estimated, cost, missing, ttft, duration, finish, request_id, response_id) = row[11:]
        yield (
            created.astimezone(timezone.get_current_timezone()).isoformat(),
            _text(user),
            f"{KEY_PREFIX}{prefix}" if prefix else "",
            endpoint,
            _text(model),
            status,
            prompt,
            completion,
            total,
            "" if cached is None else cached,
            "" if reasoning is None else reasoning,
            "yes" if estimated else "no",
            "" if cost is None else f"{cost:f}",
            currency if cost is not None else "",
            "yes" if missing else "no",
            "" if ttft is None else ttft,
            duration,
            _text(finish),
            _text(request_id),
            _text(response_id),
        )


def csv_chunks(rows: Iterable[tuple[Any, ...]], batch: int = CSV_CHUNK_ROWS) -> Generator[str, None, None]:
    """The header, then the rows as CSV text, `batch` rows to a chunk."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_HEADER)
    lines: list[str] = []
    for row in rows:
        lines.append(writer.writerow(row))
        if len(lines) >= batch:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


async def csv_chunks_async(rows: QuerySet[UsageLog]) -> AsyncIterator[str]:
    """`csv_chunks` for an ASGI server, which would otherwise read a sync iterator whole before sending.

    Each chunk is read in the request's one sync thread, so the database cursor stays on its connection.
    """
    chunks = csv_chunks(csv_rows(rows))

    def pull() -> str | None:
        return next(chunks, None)

    try:
        while (chunk := await sync_to_async(pull)()) is not None:
            yield chunk
    finally:
        await sync_to_async(chunks.close)()
