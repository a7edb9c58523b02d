"""Usage accounting: what one relayed request cost, and the one place that records it.

A request's usage row is written when it is admitted for the upstream (`open_usage_row`, status
`in_progress`, holding its reservation against the budgets), kept alive while it streams
(`keep_alive`), and settled exactly once at the end (`save_usage`): a conditional update of a row
still in progress, so an end path that runs twice settles nothing the second time. A row whose
server process died (no sign of life for STALE_SECONDS) is settled as `interrupted` by
`sweep_interrupted`, which the `sweep_interrupted` command (a timer), each process's first
admission and a budget refusal run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone

from . import metrics
from .api_keys import note_key_used
from .database import in_database_thread
from .limits import (
    SLOT_REFRESH_SECONDS,
    Admission,
    Reservation,
    release_reservation,
    release_slot,
    settle_reservation,
)
from .models import ApiKey, UsageLog
from .pricing import apply_cost, cost_of
from .request_log import log_usage
from .timings import RequestTimings
from .usage_statements import update_usage_row

logger = logging.getLogger(__name__)

# A stream's row is refreshed every SLOT_REFRESH_SECONDS while it streams; one not refreshed for
# this long belongs to a process that died (four refreshes missed).
STALE_SECONDS = 4 * SLOT_REFRESH_SECONDS
# What a settled row's update writes (everything the end of a request knows).
SETTLED_FIELDS = (
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "tokens_estimated",
    "cached_tokens",
    "reasoning_tokens",
    "time_to_first_token_ms",
    "duration_ms",
    "upstream_request_id",
    "upstream_response_id",
    "error_message",
    "finish_reason",
    "tool_calls",
    "cost",
    "price",
    "price_missing",
)
INTERRUPTED_MESSAGE = (
    "The server process relaying this request stopped before it ended; its tokens are estimated "
    "from what the process had recorded."
)

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


class Transcript(Protocol):
    """Someone who wants the answer itself once it is settled (a saved conversation): the relay
    keeps the accounted-for events for it."""

    events: list[dict[str, Any]]

    def save_answer(self, *, row: UsageLog) -> None: ...


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
    # The request's row, written in progress at admission; None: the row is written at the end.
    row_id: int | None = None
    reserved: Reservation = field(default_factory=Reservation)
    transcript: Transcript | None = None
    # Where the request's time went before its stream began.
    timings: RequestTimings = field(default_factory=RequestTimings)
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
            pk=self.row_id,
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
            reserved_tokens=self.reserved.tokens,
            reserved_cost=self.reserved.cost,
        )


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def open_usage_row(
    *,
    user: AbstractBaseUser,
    api_key: ApiKey | None,
    endpoint: str,
    model: str,
    input_tokens: int,
    admission: Admission,
) -> UsageLog:
    """The row of a request admitted for the upstream, written before it is sent there: in progress,
    with its prompt estimate and what it holds against the budgets."""
    return UsageLog.objects.create(
        user_id=user.pk,
        api_key=api_key,
        created_at=admission.at,
        endpoint=endpoint,
        model=model,
        status=UsageLog.Status.IN_PROGRESS,
        prompt_tokens=input_tokens,
        tokens_estimated=True,
        reserved_tokens=admission.reserved.tokens,
        reserved_cost=admission.reserved.cost,
        last_seen_at=admission.at,
        concurrency_slot=admission.slot,
    )


def withdraw_usage_row(*, user_id: int, row: UsageLog | None, admission: Admission) -> None:
    """Undo an admission whose request failed before it was sent upstream: its row goes (the
    provider saw nothing to bill), its reservation and slot are given back, once (a row a sweep
    settled meanwhile has given them back already)."""
    if row is not None and not UsageLog.objects.filter(pk=row.pk, status=UsageLog.Status.IN_PROGRESS).delete()[0]:
        return
    release_reservation(user_id, admission.reserved, at=admission.at)
    admission.release()


def keep_alive(account: StreamAccount, admission: Admission) -> None:
    """A stream's sign of life (its slot, its row's time and output so far, for a sweep's estimate)."""
    admission.refresh()
    if account.row_id is not None:
        UsageLog.objects.filter(pk=account.row_id, status=UsageLog.Status.IN_PROGRESS).update(
            last_seen_at=timezone.now(), completion_tokens=estimate_tokens(account.output_chars)
        )


def save_usage(account: StreamAccount, admission: Admission) -> UsageLog:
    """Settle the usage row with its cost, replace its reservation by its tokens and cost, note the
    key's use, hand the answer to its transcript, and free the concurrency slot (which is freed
    whatever happens)."""
    try:
        row = account.as_usage_log()
        apply_cost(row, cost_of(row))
        if account.row_id is None:
            row.save(force_insert=True)
            settle_reservation(row.user_id, account.reserved, tokens=row.total_tokens, cost=row.cost, at=row.created_at)
        elif not _settle(row, account.reserved):
            return row
        if account.api_key is not None:
            note_key_used(account.api_key, now=row.created_at)
        if account.transcript is not None:
            account.transcript.save_answer(row=row)
        return row
    finally:
        admission.release()


def _settle(row: UsageLog, reserved: Reservation) -> bool:
    """Write the end of the request into its row, once: whether this call settled it.

    A row a sweep settled as interrupted while its stream still ran (its process stalled) gets the
    real figures after all; the budget counters then take the difference from the sweep's estimate.
    """
    if _write_settled(row, was=UsageLog.Status.IN_PROGRESS):
        held = reserved
    else:
        swept = (
            UsageLog.objects.filter(pk=row.pk, status=UsageLog.Status.INTERRUPTED)
            .values("total_tokens", "cost")
            .first()
        )
        if not (swept and _write_settled(row, was=UsageLog.Status.INTERRUPTED)):
            logger.warning("Usage row %s was settled already; this end of its request changes nothing", row.pk)
            return False
        held = Reservation(tokens=swept["total_tokens"], cost=swept["cost"])
    settle_reservation(row.user_id, held, tokens=row.total_tokens, cost=row.cost, at=row.created_at)
    return True


def _write_settled(row: UsageLog, *, was: str) -> bool:
    """Write the row's end into the database if it still has status `was`: whether it did."""
    return update_usage_row(row, SETTLED_FIELDS, was=was)


async def record_usage(account: StreamAccount, admission: Admission) -> UsageLog:
    """The end of every request that reached for the upstream: its row, counters, slot and log line.

    The database and cache work is one hop to a database thread.
    """
    row = await in_database_thread(save_usage, account, admission)
    log_usage(row, account.timings)
    metrics.count_usage(row, account)
    return row


def sweep_interrupted(*, user_id: int | None = None, stale_seconds: float = STALE_SECONDS, limit: int = 1000) -> int:
    """Settle as `interrupted` the rows in progress whose process shows no sign of life for
    `stale_seconds` (all users', or one's): tokens estimated from the row (the prompt estimate and
    the output its last refresh recorded), costed, their reservations released. How many it settled."""
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    stale = UsageLog.objects.filter(status=UsageLog.Status.IN_PROGRESS, last_seen_at__lt=cutoff)
    if user_id is not None:
        stale = stale.filter(user_id=user_id)
    settled = 0
    for row in stale.order_by("pk")[:limit]:
        row.status = UsageLog.Status.INTERRUPTED
        row.total_tokens = row.prompt_tokens + row.completion_tokens
        row.tokens_estimated = True
        row.duration_ms = _ms(((row.last_seen_at or row.created_at) - row.created_at).total_seconds())
        row.error_message = INTERRUPTED_MESSAGE
        apply_cost(row, cost_of(row))
        if not _write_settled(row, was=UsageLog.Status.IN_PROGRESS):
            continue  # it ended meanwhile
        reserved = Reservation(tokens=row.reserved_tokens, cost=row.reserved_cost)
        settle_reservation(row.user_id, reserved, tokens=row.total_tokens, cost=row.cost, at=row.created_at)
        release_slot(row.concurrency_slot)
        log_usage(row)
        metrics.count_usage(row)
        settled += 1
    return settled


_swept_at_start = False


def sweep_once_at_start() -> None:
    """On a process's first admission: settle what earlier processes left in progress when they died."""
    global _swept_at_start
    if not _swept_at_start:
        _swept_at_start = True
        if count := sweep_interrupted():
            logger.warning("Settled %d usage rows left in progress by a server process that stopped", count)
