from django.conf import settings
from django.db import models


class UsageLog(models.Model):
    """One row per chat request that passed validation, whatever became of it."""

    class Status(models.TextChoices):
        COMPLETED = "completed", "Completed"
        ERROR = "error", "Error"
        CANCELLED = "cancelled", "Cancelled"

    ERROR_MESSAGE_MAX_LENGTH = 500

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_logs")
    created_at = models.DateTimeField(db_index=True)
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
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField()
    upstream_request_id = models.CharField(max_length=200, blank=True)
    error_message = models.CharField(max_length=ERROR_MESSAGE_MAX_LENGTH, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "created_at"])]

    def __str__(self) -> str:
        return f"{self.user} · {self.model} · {self.status} · {self.total_tokens} tokens"
