"""Usage accounting: what one relayed request cost, and the one place that records it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone

from . import metrics
from .api_keys import note_key_used
from .limits import Admission, count_spending
from .models import ApiKey, UsageLog
from .pricing import apply_cost, cost_of
from .request_log import log_usage

# Per-message overhead of the chat format, as OpenAI counts it.
TOKENS_PER_MESSAGE = 4


def estimate_tokens(chars: int) -> int:
    """About four characters a token for English text; used only where the upstream reports no usage."""
    return math.ceil(chars / 4)


@dataclass(frozen=True)
class ReportedUsage:
    """Token counts as the upstream reported them, in chat-completions terms (a response's input
    tokens are prompt tokens, its output tokens completion tokens); details None where not given."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


def reported_usage(usage: dict[str, Any], *, prompt: str, completion: str) -> ReportedUsage | None:
    """The counts of an upstream's usage object whose fields are named `prompt` and `completion`
    (chat: `prompt_tokens`; Responses: `input_tokens`), with their `<name>_details`; None if it has none."""
    prompt_tokens, completion_tokens = usage.get(prompt), usage.get(completion)
    if not (isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)):
        return None
    return ReportedUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=usage.get("total_tokens") or prompt_tokens + completion_tokens,
        cached_tokens=_token_detail(usage, f"{prompt}_details", "cached_tokens"),
        reasoning_tokens=_token_detail(usage, f"{completion}_details", "reasoning_tokens"),
    )


def _token_detail(usage: dict[str, Any], details: str, name: str) -> int | None:
    value = (usage.get(details) or {}).get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass
class StreamAccount:
    """What one request has cost so far: filled in as events pass, recorded once at the end.

    The upstream API's event accounting fills in usage, output, tool calls and finish; the relay
    core fills in the outcome.
    """

    user: AbstractBaseUser
    model: str
    estimated_input_tokens: int
    endpoint: str = UsageLog.Endpoint.CHAT_COMPLETIONS
    api_key: ApiKey | None = None
    started: float = field(default_factory=time.monotonic)
    created_at: datetime = field(default_factory=timezone.now)
    status: str = UsageLog.Status.ERROR
    usage: ReportedUsage | None = None
    output_chars: int = 0
    first_output_at: float | None = None
    # The answer's finish_reason (of its first choice, where there are several); "" until one arrives.
    finish_reason: str = ""
    # The tool calls made, each as (choice index, tool-call index).
    tool_calls: set[tuple[int, int]] = field(default_factory=set)
    request_id: str = ""
    # The upstream's id of the answer (a chunk's or a response's `id`).
    response_id: str = ""
    # Events accounted for so far; an error event that ends the stream is not one of them.
    events: int = 0
    error_message: str = ""

    def output(self, text: str) -> None:
        """Count generated text (the answer, reasoning, tool-call arguments) toward the estimate."""
        if self.first_output_at is None:
            self.first_output_at = time.monotonic()
        self.output_chars += len(text)

    @property
    def finished(self) -> bool:
        return bool(self.finish_reason)

    def finish(self, reason: str, *, choice: int = 0) -> None:
        """A choice ended with `reason`; the first choice's reason is the answer's."""
        if not self.finish_reason or choice == 0:
            self.finish_reason = reason[: UsageLog.FINISH_REASON_MAX_LENGTH]

    def tool_call(self, key: tuple[int, int]) -> None:
        """A tool-call delta arrived; calls are counted once each, however many deltas they take."""
        self.tool_calls.add(key)

    def fail(self, message: str) -> None:
        self.status = UsageLog.Status.ERROR
        self.error_message = message[: UsageLog.ERROR_MESSAGE_MAX_LENGTH]

    def end(self) -> None:
        """The stream ran to its end: completed, unless the upstream's own last event said it failed
        (a Responses `response.failed`, relayed to the client as it came)."""
        self.status = UsageLog.Status.ERROR if self.error_message else UsageLog.Status.COMPLETED

    def as_usage_log(self) -> UsageLog:
        if self.usage is None:
            prompt = self.estimated_input_tokens
            completion = estimate_tokens(self.output_chars)
            total = prompt + completion
        else:
            prompt, completion, total = self.usage.prompt_tokens, self.usage.completion_tokens, self.usage.total_tokens
        ended = time.monotonic()
        return UsageLog(
            user_id=self.user.pk,
            api_key=self.api_key,
            created_at=self.created_at,
            endpoint=self.endpoint,
            model=self.model,
            status=self.status,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            tokens_estimated=self.usage is None,
            cached_tokens=self.usage.cached_tokens if self.usage else None,
            reasoning_tokens=self.usage.reasoning_tokens if self.usage else None,
            time_to_first_token_ms=_ms(self.first_output_at - self.started) if self.first_output_at else None,
            duration_ms=_ms(ended - self.started),
            upstream_request_id=self.request_id[:200],
            upstream_response_id=self.response_id[:200],
            error_message=self.error_message,
            finish_reason=self.finish_reason,
            tool_calls=len(self.tool_calls),
        )


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def save_usage(account: StreamAccount, admission: Admission) -> UsageLog:
    """Write the usage row with its cost, count its tokens and cost, note the key's use, and free
    the concurrency slot (which is freed whatever happens)."""
    try:
        row = account.as_usage_log()
        apply_cost(row, cost_of(row))
        row.save(force_insert=True)
        count_spending(row.user_id, row.total_tokens, row.cost, row.created_at)
        if account.api_key is not None:
            note_key_used(account.api_key, now=row.created_at)
        return row
    finally:
        admission.release()


async def record_usage(account: StreamAccount, admission: Admission) -> UsageLog:
    """The end of every request that reached for the upstream: its row, counters, slot and log line.

    The database and cache work is one thread hop.
    """
    row = await sync_to_async(save_usage)(account, admission)
    log_usage(row)
    metrics.count_usage(row, account)
    return row
