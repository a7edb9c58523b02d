"""Every error the API answers with, built by the named constructors here, and their responses.

The body is OpenAI's error shape, `{"error": {"message", "type", "code"}}`, so the official SDKs
raise their usual exception classes for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import openai
from django.http import JsonResponse

from .conf import app_settings

# OpenAI echoes a masked key in its 401 message ("Incorrect API key provided: sk-abc***xyz");
# even a fragment of the key stays on the server.
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]+")
# This site's own personal API keys (streaming.api_keys), should one ever reach an error message.
_OWN_KEY_LIKE = re.compile(r"\bchp_[0-9a-f]{8}_[A-Za-z0-9_\-]+")

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
UPSTREAM = "upstream_error"


@dataclass(kw_only=True)
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


def error_response(error: ApiError) -> JsonResponse:
    response = JsonResponse(error.as_dict(), status=error.status)
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    return response


# --- The client's request --------------------------------------------------------------------


def invalid_request(message: str, *, code: str, status: int = 400) -> ApiError:
    """A request the client must change: the message names the offending field."""
    return ApiError(status=status, message=message, type=INVALID_REQUEST, code=code)


def method_not_allowed(*, allowed: str) -> ApiError:
    return invalid_request(f"Use {allowed}.", code="method_not_allowed", status=405)


def body_too_large(*, limit: int) -> ApiError:
    return invalid_request(f"The request body is over {limit} bytes.", code="body_too_large", status=413)


def input_too_long(*, field: str, size: int, limit: int) -> ApiError:
    return invalid_request(
        f"'{field}' hold {size} characters; at most {limit} are allowed.", code="input_too_long", status=413
    )


def too_many(*, field: str, count: int, limit: int, code: str, what: str = "entries") -> ApiError:
    """A list over one of the request's bounds (messages, tools, images): 400 naming where it went over."""
    return invalid_request(f"'{field}' makes {count} {what}; at most {limit} are allowed.", code=code)


def too_large(*, field: str, size: int, limit: int, code: str) -> ApiError:
    """A field over its size bound in bytes (an image's data URL, the tool schemas): 413."""
    return invalid_request(f"'{field}' is {size} bytes; at most {limit} are allowed.", code=code, status=413)


def parameter_not_allowed(*, field: str, setting: str) -> ApiError:
    """A parameter this site does not let through (its setting decides)."""
    return invalid_request(
        f"'{field}' is not allowed on this site (see its {setting} setting).", code="parameter_not_allowed"
    )


def unsupported(*, field: str, what: str, instead: str, code: str) -> ApiError:
    """A shape OpenAI knows but this relay does not take (audio or file parts, the legacy function role)."""
    return invalid_request(f"'{field}': {what} are not supported here; {instead}.", code=code)


def not_found(*, path: str) -> ApiError:
    return invalid_request(f"No API endpoint at {path}.", code="not_found", status=404)


def internal_error() -> ApiError:
    return ApiError(status=500, message="Internal server error.", type="server_error", code="internal_error")


# --- Who is asking -----------------------------------------------------------------------------


def not_authenticated() -> ApiError:
    return ApiError(status=401, message="Log in to use the chat API.", type=AUTHENTICATION, code="not_authenticated")


def api_key_missing() -> ApiError:
    return ApiError(
        status=401,
        message="Send an API key as 'Authorization: Bearer <key>'; create one on the site's API keys page.",
        type=AUTHENTICATION,
        code="missing_api_key",
    )


def api_key_invalid() -> ApiError:
    """A malformed or unknown key; the message never repeats it."""
    return ApiError(status=401, message="Incorrect API key provided.", type=AUTHENTICATION, code="invalid_api_key")


def api_key_refused(*, reason: str, code: str) -> ApiError:
    """A key that matched but may not be used (revoked, expired, its account inactive)."""
    return ApiError(status=401, message=reason, type=AUTHENTICATION, code=code)


def api_key_not_permitted() -> ApiError:
    return ApiError(
        status=403,
        message="This account may not use API keys on this site.",
        type="permission_error",
        code="api_keys_not_permitted",
    )


def metrics_token_required() -> ApiError:
    return ApiError(
        status=401,
        message="Send the metrics token as 'Authorization: Bearer <token>' (the site's CHAT_METRICS_TOKEN).",
        type=AUTHENTICATION,
        code="metrics_token_required",
    )


def metrics_not_permitted() -> ApiError:
    return ApiError(
        status=403, message="Only staff may read the metrics.", type="permission_error", code="metrics_not_permitted"
    )


def model_not_found(*, model: str) -> ApiError:
    return invalid_request(
        f"The model '{model}' does not exist or you do not have access to it.", code="model_not_found", status=404
    )


def stream_required(*, instead: str) -> ApiError:
    return invalid_request(
        f"This endpoint always streams: send 'stream': true or leave it out (for one JSON answer use {instead}).",
        code="stream_required",
    )


def csrf_failed(*, reason: str) -> ApiError:
    message = f"CSRF verification failed: {reason} Send the csrftoken cookie's value in the X-CSRFToken header."
    return ApiError(status=403, message=message, type="permission_error", code="csrf_failed")


def limit_exceeded(*, limit: str, message: str, retry_after: int) -> ApiError:
    """A per-user limit refused the request: the code names the limit."""
    return ApiError(status=429, message=message, type="rate_limit_error", code=limit, retry_after=max(1, retry_after))


# --- The upstream ------------------------------------------------------------------------------


def _upstream_failure(status: int, message: str, code: str, *, retry_after: int | None = None) -> ApiError:
    return ApiError(status=status, message=message, type=UPSTREAM, code=code, retry_after=retry_after)


def upstream_busy() -> ApiError:
    return _upstream_failure(
        503, "All connections to the upstream are busy; try again shortly.", "upstream_busy", retry_after=1
    )


def first_token_timeout() -> ApiError:
    return _upstream_failure(504, "The upstream model did not start answering in time.", "upstream_timeout")


def idle_timeout() -> ApiError:
    return _upstream_failure(504, "The upstream model stopped sending mid-answer.", "upstream_timeout")


def upstream_incomplete() -> ApiError:
    return _upstream_failure(502, "The upstream ended the stream before it was complete.", "upstream_incomplete")


def upstream_connection_lost() -> ApiError:
    return _upstream_failure(502, "The connection to the upstream was lost mid-answer.", "upstream_connection_lost")


def upstream_malformed() -> ApiError:
    return _upstream_failure(502, "The upstream sent an event that is not a JSON object.", "upstream_malformed")


def redact_secrets(text: str) -> str:
    key = app_settings.OPENAI_API_KEY
    if key:
        text = text.replace(key, "[redacted]")
    return _OWN_KEY_LIKE.sub("chp_[redacted]", _KEY_LIKE.sub("sk-[redacted]", text))


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
        return _upstream_failure(504, "The upstream model server did not answer in time.", "upstream_timeout")
    if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
        return _upstream_failure(502, "The upstream model server could not be reached.", "upstream_unreachable")
    if isinstance(exc, openai.APIStatusError):
        message = _upstream_message(exc)
        status = exc.status_code
        if status == 429:
            return _upstream_failure(503, message, "upstream_rate_limited", retry_after=_retry_after(exc))
        if status in (503, 529):
            return _upstream_failure(503, message, "upstream_overloaded", retry_after=_retry_after(exc))
        if status in (400, 413, 422):
            return invalid_request(message, code="upstream_rejected_request")
        if status in (401, 403):
            return _upstream_failure(502, message, "upstream_authentication_failed")
        return _upstream_failure(502, message, f"upstream_status_{status}")
    if isinstance(exc, openai.APIError):
        return _upstream_failure(502, _upstream_message(exc), "upstream_stream_error")
    return _upstream_failure(502, "The upstream model server failed.", "upstream_error")


def upstream_event_error(payload: dict[str, Any]) -> ApiError:
    """An error event in the upstream's stream (`{"error": {...}}`, or a flat Responses `error` event)."""
    inner = payload.get("error")
    error: dict[str, Any] = inner if isinstance(inner, dict) else payload
    message = error.get("message") if isinstance(error.get("message"), str) else "The upstream reported an error."
    return upstream_error(openai.APIError(message, request=None, body={"error": error}))  # type: ignore[arg-type]


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


# --- Saved conversations -----------------------------------------------------------------------


def conversation_not_found() -> ApiError:
    """No such conversation, or another user's: the two answer alike, so ids reveal nothing."""
    return invalid_request("No such conversation.", code="conversation_not_found", status=404)


def conversation_busy() -> ApiError:
    """An answer in the conversation is still streaming; the next turn must wait for it to end."""
    return ApiError(
        status=409,
        message="An answer in this conversation is still streaming; send again once it has ended.",
        type=INVALID_REQUEST,
        code="conversation_busy",
        retry_after=1,
    )


def conversations_disabled() -> ApiError:
    return invalid_request(
        "This site does not save conversations (its CHAT_SAVE_CONVERSATIONS setting): "
        "send the whole 'messages' and leave out 'conversation'.",
        code="conversations_disabled",
    )
