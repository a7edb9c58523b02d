"""Every error the API answers with, and the one place that turns them into responses."""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp
import httpx2
import openai
from django.conf import settings
from django.http import JsonResponse

# OpenAI echoes a masked key in its 401 message ("Incorrect API key provided: sk-abc***xyz");
# even a fragment of the key stays on the server.
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]+")


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str
    code: str | None = None
    retry_after: int | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def as_dict(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


def invalid_request(message: str, code: str = "invalid_request", status: int = 400) -> ApiError:
    return ApiError(status=status, message=message, type="invalid_request_error", code=code)


def upstream_busy() -> ApiError:
    return ApiError(
        503, "All connections to the upstream are busy; try again shortly.", "upstream_error", "upstream_busy",
        retry_after=1,
    )


def first_token_timeout() -> ApiError:
    return ApiError(504, "The upstream model did not start answering in time.", "upstream_error", "upstream_timeout")


def idle_timeout() -> ApiError:
    return ApiError(504, "The upstream model stopped sending mid-answer.", "upstream_error", "upstream_timeout")


def redact_secrets(text: str) -> str:
    key = settings.OPENAI_API_KEY
    if key:
        text = text.replace(key, "[redacted]")
    return _KEY_LIKE.sub("sk-[redacted]", text)


def _upstream_message(exc: openai.APIError) -> str:
    message = exc.message
    if isinstance(exc.body, dict):
        inner = exc.body.get("error", exc.body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = inner["message"]
    return redact_secrets(f"Upstream: {message}")


def upstream_error(exc: BaseException) -> ApiError:
    """Map a failure of the upstream call (before or during the stream) to the API's error."""
    if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)) and not _refused(exc):
        return ApiError(504, "The upstream model server did not answer in time.", "upstream_error", "upstream_timeout")
    if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
        return ApiError(502, "The upstream model server could not be reached.", "upstream_error", "upstream_unreachable")
    if isinstance(exc, openai.APIStatusError):
        message = _upstream_message(exc)
        status = exc.status_code
        if status == 429:
            return ApiError(503, message, "upstream_error", "upstream_rate_limited", retry_after=_retry_after(exc))
        if status in (503, 529):
            return ApiError(503, message, "upstream_error", "upstream_overloaded", retry_after=_retry_after(exc))
        if status in (400, 413, 422):
            return ApiError(400, message, "invalid_request_error", "upstream_rejected_request")
        if status in (401, 403):
            return ApiError(502, message, "upstream_error", "upstream_authentication_failed")
        return ApiError(502, message, "upstream_error", f"upstream_status_{status}")
    if isinstance(exc, openai.APIError):
        return ApiError(502, _upstream_message(exc), "upstream_error", "upstream_stream_error")
    return ApiError(502, "The upstream model server failed.", "upstream_error", "upstream_error")


def _refused(exc: BaseException) -> bool:
    """A refused or failed connection, which the aiohttp transport reports as a connect timeout."""
    cause: BaseException | None = exc
    for _ in range(5):
        if cause is None:
            return False
        if isinstance(cause, (aiohttp.ClientConnectorError, ConnectionRefusedError)) and not isinstance(
            cause, TimeoutError
        ):
            return True
        cause = cause.__cause__
    return False


def _retry_after(exc: openai.APIStatusError) -> int | None:
    value = exc.response.headers.get("retry-after")
    try:
        return max(1, int(float(value))) if value else None
    except ValueError:
        return None


def error_response(error: ApiError) -> JsonResponse:
    response = JsonResponse(error.as_dict(), status=error.status)
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    return response
