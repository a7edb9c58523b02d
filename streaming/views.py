from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import DatabaseError, close_old_connections, connection
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.shortcuts import render, resolve_url
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from . import metrics
from .chat_completions import CHAT_COMPLETIONS
from .conf import app_settings
from .errors import ApiError, error_response, internal_error, method_not_allowed, not_found, stream_required
from .fronts import Caller, request_body, session_front
from .limits import Admission, admit
from .relay import ApiRequest, RelayStream, UpstreamApi, open_relay
from .request_log import log_refusal
from .responses import RESPONSES
from .schemas.chat_completions import parse_chat_completion_request
from .schemas.responses import parse_responses_request
from .wire import Framing, framing_for

RequestT = TypeVar("RequestT")
ApiRequestT = TypeVar("ApiRequestT", bound=ApiRequest)

logger = logging.getLogger(__name__)


class LogoutView(auth_views.LogoutView):
    """Logging out is a POST (Django 5); a GET, from a typed or bookmarked URL, asks to confirm."""

    http_method_names = ["get", "post", "options"]

    def get(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return render(request, "registration/logout_confirm.html")


@login_required
def chat_page(request: HttpRequest) -> HttpResponse:
    context = {
        "demo_mode": app_settings.CHAT_DEMO_MODE,
        "models": app_settings.CHAT_ALLOWED_MODELS,
        "default_model": app_settings.CHAT_DEFAULT_MODEL,
        "login_url": resolve_url(settings.LOGIN_URL),
    }
    return render(request, "streaming/chat.html", context)


@csrf_exempt  # the session front checks CSRF itself, after authentication
async def chat_stream(request: HttpRequest) -> HttpResponseBase:
    """Relay one streaming chat completion to a logged-in user of the page."""
    return await page_stream(
        request,
        parse=streamed_only(parse_chat_completion_request, instead="/v1/chat/completions"),
        api=CHAT_COMPLETIONS,
    )


@csrf_exempt
async def responses_stream(request: HttpRequest) -> HttpResponseBase:
    """Relay one streaming response (the Responses API) to a logged-in user of the site."""
    return await page_stream(
        request, parse=streamed_only(parse_responses_request, instead="/v1/responses"), api=RESPONSES
    )


async def page_stream(
    request: HttpRequest, *, parse: Callable[[bytes], ApiRequest], api: UpstreamApi
) -> HttpResponseBase:
    """The session front's stream: NDJSON, or OpenAI's SSE for `Accept: text/event-stream`."""
    if request.method != "POST":
        return method_not_allowed_response("POST")
    opened = await accept_and_open(
        request,
        front=session_front,
        parse=parse,
        api=api,
        framing=lambda _: framing_for(request.headers.get("Accept", "")),
    )
    if isinstance(opened, ApiError):
        return error_response(opened)
    return streaming_response(opened[1])


class StreamedRequest(ApiRequest, Protocol):
    @property
    def stream(self) -> bool: ...


StreamedRequestT = TypeVar("StreamedRequestT", bound=StreamedRequest)


def streamed_only(parse: Callable[[bytes], StreamedRequestT], *, instead: str) -> Callable[[bytes], StreamedRequestT]:
    """`parse`, refusing `stream: false`: the page's API only streams (`/v1` answers in one object)."""

    def parse_streamed(body: bytes) -> StreamedRequestT:
        parsed = parse(body)
        if not parsed.stream:
            raise stream_required(instead=instead)
        return parsed

    return parse_streamed


@dataclass(frozen=True)
class Accepted(Generic[RequestT]):
    """A request let through to the upstream: who asks, what, and the admission it holds."""

    caller: Caller
    request: RequestT
    admission: Admission


async def accept_and_open(
    request: HttpRequest,
    *,
    front: Callable[[HttpRequest], Caller],
    parse: Callable[[bytes], ApiRequestT],
    api: UpstreamApi,
    framing: Callable[[ApiRequestT], Framing],
) -> tuple[ApiRequestT, RelayStream] | ApiError:
    """Who asks and what (the front, validation and admission), then the upstream's stream opened
    for it; or the error refusing the request (logged, with its usage row if it reached the upstream)."""
    metrics.request_entered()
    accepted = await sync_to_async(accept_request)(request, front=front, parse=parse)
    if isinstance(accepted, ApiError):
        metrics.request_refused(api.endpoint, accepted)
        return accepted
    try:
        stream = await open_relay(
            api=api,
            request=accepted.request,
            caller=accepted.caller,
            framing=framing(accepted.request),
            admission=accepted.admission,
        )
    except ApiError as error:
        return error
    return accepted.request, stream


def accept_request(
    request: HttpRequest, *, front: Callable[[HttpRequest], Caller], parse: Callable[[bytes], RequestT]
) -> Accepted[RequestT] | ApiError:
    """The front, the body's validation and admission, or the error refusing the request.

    All of the request's database work before streaming, in one thread hop; then its database
    connection goes back, since a stream may stay open for minutes and 500 open streams must not
    hold 500 connections. The usage row at the end takes one briefly.
    """
    try:
        caller = front(request)
        try:
            return Accepted(caller=caller, request=parse(request_body(request)), admission=admit(caller.user))
        except ApiError as error:
            log_refusal(user_id=caller.user.pk, api_key_id=caller.api_key.pk if caller.api_key else None, error=error)
            return error
    except ApiError as error:
        return error
    finally:
        close_old_connections()


def streaming_response(stream: RelayStream) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type=stream.content_type)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def method_not_allowed_response(allowed: str) -> JsonResponse:
    response = error_response(method_not_allowed(allowed=allowed))
    response["Allow"] = allowed
    return response


async def healthz(request: HttpRequest) -> JsonResponse:
    """Database and cache reachability, for load balancers: 200 when both answer, else 503."""
    checks = await sync_to_async(_check_services)()
    healthy = all(state == "ok" for state in checks.values())
    return JsonResponse({"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503)


def _check_services() -> dict[str, str]:
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except DatabaseError:
        logger.exception("Health check: the database is unreachable")
        checks["database"] = "unreachable"
    finally:
        close_old_connections()
    try:
        token = secrets.token_hex(8)
        cache.set("chatproxy:healthz", token, timeout=10)
        checks["cache"] = "ok" if cache.get("chatproxy:healthz") == token else "not storing values"
    except Exception:
        logger.exception("Health check: the cache is unreachable")
        checks["cache"] = "unreachable"
    return checks


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return error_response(not_found(path=request.path))
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return error_response(internal_error())
    return defaults.server_error(request)
