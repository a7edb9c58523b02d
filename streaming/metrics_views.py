"""`GET /metrics`: the Prometheus text exposition of `streaming.metrics`, for staff or a scraper's token.

CHAT_METRICS chooses who may read it: "staff" (a staff user's session, the default), "token"
(`Authorization: Bearer <CHAT_METRICS_TOKEN>`, for Prometheus), or "off" (404).
"""

from __future__ import annotations

import hmac
import logging

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from .conf import app_settings
from .errors import (
    ApiError,
    error_response,
    metrics_not_permitted,
    metrics_token_required,
    not_authenticated,
    not_found,
)
from .metrics import MULTIPROCESS_DIR
from .views import method_not_allowed_response

logger = logging.getLogger(__name__)

MODES = ("staff", "token", "off")


async def metrics(request: HttpRequest) -> HttpResponseBase:
    """The metrics of every process sharing PROMETHEUS_MULTIPROC_DIR, or of this one without it."""
    mode = app_settings.CHAT_METRICS
    if mode not in MODES:
        logger.error("CHAT_METRICS is %r; it must be one of %s: /metrics is off", mode, ", ".join(MODES))
        mode = "off"
    if mode == "off":
        return error_response(not_found(path=request.path))
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed_response("GET")
    refusal = _token_refusal(request) if mode == "token" else await _staff_refusal(request)
    if refusal is not None:
        return error_response(refusal)
    body = await sync_to_async(_exposition, thread_sensitive=False)()
    response = HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


def _token_refusal(request: HttpRequest) -> ApiError | None:
    expected = app_settings.CHAT_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not expected:
        logger.error("CHAT_METRICS is 'token' but CHAT_METRICS_TOKEN is empty: every scrape is refused")
    # Compared in constant time; an empty token never matches.
    if expected and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode()):
        return None
    return metrics_token_required()


async def _staff_refusal(request: HttpRequest) -> ApiError | None:
    user = await request.auser()
    if not user.is_authenticated:
        return not_authenticated()
    if not (user.is_active and user.is_staff):
        return metrics_not_permitted()
    return None


def _exposition() -> bytes:
    if MULTIPROCESS_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, MULTIPROCESS_DIR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
