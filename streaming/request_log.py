"""One structured log line per API request, for log pipelines: no prompt text, no key."""

from __future__ import annotations

import logging

import orjson

from .errors import ApiError
from .models import UsageLog
from .timings import RequestTimings

NO_TIMINGS = RequestTimings(entered=0.0)

logger = logging.getLogger("streaming.requests")


def log_usage(row: UsageLog, timings: RequestTimings | None = None) -> None:
    """The line of a request that reached the upstream, from its usage row, with where its time went
    before its stream began (none for a row a sweep settled)."""
    _log(
        user_id=row.user_id,
        api_key_id=row.api_key_id,
        endpoint=row.endpoint,
        model=row.model,
        status=row.status,
        finish_reason=row.finish_reason,
        tool_calls=row.tool_calls,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.total_tokens,
        tokens_estimated=row.tokens_estimated,
        cached_tokens=row.cached_tokens,
        reasoning_tokens=row.reasoning_tokens,
        # A string, as stored (a Decimal in CHAT_CURRENCY); null when no price was known.
        cost=None if row.cost is None else str(row.cost),
        ttft_ms=row.time_to_first_token_ms,
        duration_ms=row.duration_ms,
        upstream_request_id=row.upstream_request_id,
        upstream_response_id=row.upstream_response_id,
        **(timings or NO_TIMINGS).milliseconds(),
    )


def log_refusal(
    *, user_id: int, error: ApiError, api_key_id: int | None = None, timings: RequestTimings | None = None
) -> None:
    """The line of a request refused before it reached the upstream."""
    _log(
        user_id=user_id,
        api_key_id=api_key_id,
        status="refused",
        http_status=error.status,
        code=error.code,
        **(timings or NO_TIMINGS).milliseconds(),
    )


def _log(**fields: object) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info(orjson.dumps({"event": "chat_request", **fields}).decode())
