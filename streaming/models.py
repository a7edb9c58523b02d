import uuid
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiKey(models.Model):
    """A user's personal key to the OpenAI-compatible `/v1` API; the secret itself is never stored.

    The key reads `chp_<prefix>_<secret>`: the prefix is public (shown in lists, used to find the
    row), the secret is 256 random bits kept only as a salted SHA-256 (see `streaming.api_keys`).
    """

    PREFIX_LENGTH = 8

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=PREFIX_LENGTH, unique=True, editable=False)
    secret_hash = models.CharField(max_length=128, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Updated at most about once a minute."
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: the key does not expire.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        permissions = [("use_api_keys", "Can create and use personal API keys (when CHAT_API_KEYS_REQUIRE_PERMISSION)")]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"

    @property
    def public_id(self) -> str:
        """What identifies the key in lists and logs without revealing it: `chp_<prefix>`."""
        return f"chp_{self.prefix}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


class ModelPrice(models.Model):
    """What the provider charges for one model (or a family of models) from a date on.

    A price never changes in place: a new price is a new row with a later `valid_from`, so rows
    written before it keep the cost they had. Prices are per million tokens, in CHAT_CURRENCY.
    """

    class Match(models.TextChoices):
        EXACT = "exact", "Exactly this model"
        PREFIX = "prefix", "Every model starting with this (a family of dated snapshots)"

    model = models.CharField(max_length=200, help_text="A model name, or the start of one (see Match).")
    match = models.CharField(max_length=8, choices=Match.choices, default=Match.EXACT)
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="Empty: cached input costs as much as input."
    )
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6, help_text="Reasoning tokens included.")
    currency = models.CharField(max_length=3, default="USD", help_text="Must be the site's currency, CHAT_CURRENCY.")
    valid_from = models.DateTimeField(default=timezone.now)
    note = models.CharField(max_length=200, blank=True, help_text="Where the price comes from, or what to check.")
    # When the row was last written: with the count of rows, it tells each process that its copy
    # of the prices is out of date (see `streaming.pricing.current_prices`).
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "-valid_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "match", "valid_from"], name="one_price_per_model_and_start")
        ]

    def __str__(self) -> str:
        family = "*" if self.match == self.Match.PREFIX else ""
        return f"{self.model}{family} from {self.valid_from:%Y-%m-%d}"

    def cost(self, *, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> Decimal:
        """The cost of a request's tokens at this price (cached tokens are part of the prompt's)."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = (
            self.input_per_million if self.cached_input_per_million is None else self.cached_input_per_million
        )
        total = (
            (prompt_tokens - cached) * self.input_per_million
            + cached * cached_price
            + completion_tokens * self.output_per_million
        )
        return (total / 1_000_000).quantize(Decimal("0.00000001"))


class UsageLog(models.Model):
    """One row per request admitted for the upstream, whatever became of it.

    The row is written `in_progress` at admission, holding the request's reservation against the
    user's budgets, and settled exactly once at the end; a row whose process died is swept to
    `interrupted` (see `streaming.usage`).
    """

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"
        ERROR = "error", "Error"
        CANCELLED = "cancelled", "Cancelled"
        INTERRUPTED = "interrupted", "Interrupted (its server process died)"

    class Endpoint(models.TextChoices):
        """The upstream API a request went to, named as OpenAI names it."""

        CHAT_COMPLETIONS = "chat.completions", "Chat completions"
        RESPONSES = "responses", "Responses"

    ERROR_MESSAGE_MAX_LENGTH = 500
    FINISH_REASON_MAX_LENGTH = 32

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_logs")
    created_at = models.DateTimeField(db_index=True)
    endpoint = models.CharField(max_length=32, choices=Endpoint.choices, default=Endpoint.CHAT_COMPLETIONS)
    model = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(
        default=False,
        help_text="The upstream sent no usage (the stream was interrupted, or it does not report usage); "
        "the counts are estimated from the text.",
    )
    cached_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Of the prompt tokens, those served from the provider's cache, where reported."
    )
    reasoning_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Of the completion tokens, those spent reasoning, where reported."
    )
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    upstream_request_id = models.CharField(max_length=200, blank=True)
    upstream_response_id = models.CharField(
        max_length=200, blank=True, help_text="The upstream's id of the answer (chatcmpl-…, resp_…)."
    )
    error_message = models.CharField(max_length=ERROR_MESSAGE_MAX_LENGTH, blank=True)
    finish_reason = models.CharField(
        max_length=FINISH_REASON_MAX_LENGTH,
        blank=True,
        help_text="Why the answer ended, as the upstream said: chat completions' finish_reason (stop, length, "
        "tool_calls, content_filter), a response's status or incomplete reason (completed, max_output_tokens, "
        "failed); empty when it did not end (an error, a cancellation).",
    )
    tool_calls = models.PositiveIntegerField(default=0, help_text="How many tool calls the answer made.")
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="usage_logs",
        help_text="The personal API key that made the request; empty for the chat page.",
    )
    cost = models.DecimalField(
        max_digits=16,
        decimal_places=8,
        null=True,
        blank=True,
        help_text="In CHAT_CURRENCY, from the price valid when the request was made; empty when no price was known.",
    )
    price = models.ForeignKey(
        ModelPrice, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_logs", editable=False
    )
    price_missing = models.BooleanField(
        default=False, help_text="No price was known for the model at the time: the cost is unknown, not zero."
    )
    reserved_tokens = models.PositiveIntegerField(
        default=0,
        help_text="The worst case held against the user's token budgets while the request ran: the prompt "
        "estimate plus the most output it may ask for.",
    )
    reserved_cost = models.DecimalField(
        max_digits=16,
        decimal_places=8,
        null=True,
        blank=True,
        help_text="The worst case held against the user's money budgets while the request ran.",
    )
    last_seen_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="While in progress: when its server process last reported the stream alive (about every 30 s).",
    )
    concurrency_slot = models.CharField(
        max_length=120,
        blank=True,
        editable=False,
        help_text="While in progress: the concurrency slot it holds (cache key and token), freed if it is swept.",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "created_at"]),
            models.Index(fields=["created_at", "model"]),
            models.Index(fields=["api_key", "created_at"]),
            models.Index(
                fields=["last_seen_at"], condition=models.Q(status="in_progress"), name="usagelog_in_progress"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} · {self.model} · {self.status} · {self.total_tokens} tokens"


class UsageLimit(models.Model):
    """Limits for one user or one group that replace the site-wide defaults from settings.

    An empty field keeps the default; 0 means no limit. A user's own row wins; otherwise the most
    generous value among the user's groups applies.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="usage_limit"
    )
    group = models.OneToOneField(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="usage_limit"
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    concurrent_streams = models.PositiveIntegerField(null=True, blank=True)
    daily_token_budget = models.PositiveBigIntegerField(null=True, blank=True)
    monthly_token_budget = models.PositiveBigIntegerField(null=True, blank=True)
    daily_cost_budget = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="In CHAT_CURRENCY."
    )
    monthly_cost_budget = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="In CHAT_CURRENCY."
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, group__isnull=True)
                | models.Q(user__isnull=True, group__isnull=False),
                name="usage_limit_for_one_user_or_one_group",
                violation_error_message="Choose either a user or a group.",
            )
        ]

    def __str__(self) -> str:
        return f"Limits for {self.user or self.group}"


class LimitRefusal(models.Model):
    """How many requests a user had refused by each limit, per day."""

    class Limit(models.TextChoices):
        REQUESTS_PER_MINUTE = "requests_per_minute", "Requests per minute"
        CONCURRENT_STREAMS = "concurrent_streams", "Concurrent streams"
        DAILY_TOKEN_BUDGET = "daily_token_budget", "Daily token budget"
        MONTHLY_TOKEN_BUDGET = "monthly_token_budget", "Monthly token budget"
        DAILY_COST_BUDGET = "daily_cost_budget", "Daily cost budget"
        MONTHLY_COST_BUDGET = "monthly_cost_budget", "Monthly cost budget"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limit_refusals")
    day = models.DateField()
    limit = models.CharField(max_length=32, choices=Limit.choices)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "day", "limit"], name="one_refusal_count_per_user_day_limit")
        ]
        ordering = ["-day", "user"]

    def __str__(self) -> str:
        return f"{self.user} · {self.day} · {self.get_limit_display()} · {self.count}"


class Conversation(models.Model):
    """A chat kept on the server for its owner: the page's list of earlier chats (CHAT_SAVE_CONVERSATIONS)."""

    TITLE_MAX_LENGTH = 200

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=TITLE_MAX_LENGTH)
    model = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title


class ConversationMessage(models.Model):
    """One message of a conversation, as the chat-completions API carries it.

    A user's or a tool's message is saved when its request is accepted; the assistant's once,
    when the stream ends, with the usage row it produced (which outlives the message: billing).
    """

    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        TOOL = "tool", "Tool result"

    class Status(models.TextChoices):
        COMPLETE = "complete", "Complete"
        STOPPED = "stopped", "Stopped by the user (partial)"
        FAILED = "failed", "Failed (partial)"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    # A string, or content parts (text, image_url) as the API takes them; null for a tool-calls-only answer.
    content = models.JSONField(null=True, blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    usage = models.ForeignKey(
        UsageLog, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversation_messages"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.get_role_display()} · {self.conversation_id}"
