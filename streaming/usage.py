"""Usage accounting: what one relayed request cost, and its row in the usage log."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone

from .chat_request import ChatRequest
from .models import UsageLog

# Per-message overhead of the chat format, as OpenAI counts it.
TOKENS_PER_MESSAGE = 4


def estimate_tokens(chars: int) -> int:
    """About four characters a token for English text; used only where the upstream reports no usage."""
    return math.ceil(chars / 4)


@dataclass
class StreamAccount:
    """What one request has cost so far; filled in as chunks pass and written once at the end."""

    user: AbstractBaseUser
    chat: ChatRequest
    started: float = field(default_factory=time.monotonic)
    created_at: datetime = field(default_factory=timezone.now)
    status: str = UsageLog.Status.ERROR
    usage: dict | None = None
    content_chars: int = 0
    first_token_at: float | None = None
    finished: bool = False
    request_id: str = ""
    error_message: str = ""

    def observe(self, chunk: dict) -> None:
        """Account for one chat-completion chunk from the upstream."""
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        if not self.request_id and isinstance(chunk.get("id"), str):
            self.request_id = chunk["id"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("reasoning_content")
            if text:
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                self.content_chars += len(text)
            if choice.get("finish_reason"):
                self.finished = True

    def fail(self, message: str) -> None:
        self.status = UsageLog.Status.ERROR
        self.error_message = message[: UsageLog.ERROR_MESSAGE_MAX_LENGTH]

    def as_usage_log(self) -> UsageLog:
        reported = self.usage or {}
        estimated = not all(isinstance(reported.get(k), int) for k in ("prompt_tokens", "completion_tokens"))
        if estimated:
            prompt = estimate_tokens(self.chat.input_chars) + TOKENS_PER_MESSAGE * len(self.chat.messages)
            completion = estimate_tokens(self.content_chars)
            total = prompt + completion
        else:
            prompt, completion = reported["prompt_tokens"], reported["completion_tokens"]
            total = reported.get("total_tokens") or prompt + completion
        ended = time.monotonic()
        return UsageLog(
            user=self.user,
            created_at=self.created_at,
            model=self.chat.model,
            status=self.status,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            tokens_estimated=estimated,
            time_to_first_token_ms=_ms(self.first_token_at - self.started) if self.first_token_at else None,
            duration_ms=_ms(ended - self.started),
            upstream_request_id=self.request_id[:200],
            error_message=self.error_message,
        )


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def save_usage_log(account: StreamAccount) -> UsageLog:
    row = account.as_usage_log()
    row.save(force_insert=True)
    return row
