from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from . import metrics
from .chat_completions import CHAT_COMPLETIONS, AnswerTranscript
from .conversations import ConversationTurn, open_turn
from .database import in_database_thread
from .errors import ApiError, error_response, internal_error, method_not_allowed, not_found, stream_required
from .fronts import Caller, request_body, session_front
from .limits import Admission, admit
from .models import UsageLog
from .relay import ApiRequest, RelayStream, UpstreamApi, open_relay
from .request_log import log_refusal
from .responses import RESPONSES
from .schemas.chat_completions import parse_chat_completion_request
from .schemas.fields import Body, load_body
from .schemas.responses import parse_responses_request
from .timings import RequestTimings
from .usage import open_usage_row, sweep_interrupted, sweep_once_at_start, withdraw_usage_row
from .wire import Framing, framing_for

RequestT = TypeVar("RequestT")
ApiRequestT = TypeVar("ApiRequestT", bound=ApiRequest)

logger = logging.getLogger(__name__)


class LogoutView(auth_views.LogoutView):
    """Logging out is a POST (Django 5); a GET, from a typed or bookmarked URL, asks to confirm."""

    http_method_names = ["get", "post", "options"]

    def get(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return render(request, "registration/logout_confirm.html")


@csrf_exempt  # the session front checks CSRF itself, after authentication
async def chat_stream(request: HttpRequest) -> HttpResponseBase:
    """Relay one streaming chat completion to a logged-in user of the page, in a saved conversation
    when the body names one (`conversation`: an id, or "new")."""
    return await page_stream(
        request,
        parse=streamed_only(parse_chat_completion_request, instead="/v1/chat/completions"),
        api=CHAT_COMPLETIONS,
        conversation=open_turn,
    )


@csrf_exempt
async def responses_stream(request: HttpRequest) -> HttpResponseBase:
    """Relay one streaming response (the Responses API) to a logged-in user of the site."""
    return await page_stream(
        request, parse=streamed_only(parse_responses_request, instead="/v1/responses"), api=RESPONSES
    )


async def page_stream(
    request: HttpRequest,
    *,
    parse: Callable[[Body], ApiRequest],
    api: UpstreamApi,
    conversation: OpenTurn | None = None,
) -> HttpResponseBase:
    """The session front's stream: NDJSON, or OpenAI's SSE for `Accept: text/event-stream`.

    With `conversation`, a body may name a saved conversation: its history goes before the body's
    new messages, and the stream's headers say which conversation it is and how many of its oldest
    messages were left out to fit the input limits.
    """
    if request.method != "POST":
        return method_not_allowed_response("POST")
    opened = await accept_and_open(
        request,
        front=session_front,
        parse=parse,
        api=api,
        framing=lambda _: framing_for(request.headers.get("Accept", "")),
        conversation=conversation,
    )
    if isinstance(opened, ApiError):
        return error_response(opened)
    response = streaming_response(opened.stream, opened.timings)
    if opened.turn is not None:
        response["Chatproxy-Conversation"] = str(opened.turn.conversation.pk)
        response["Chatproxy-History-Omitted"] = str(opened.turn.omitted)
    return response


class StreamedRequest(ApiRequest, Protocol):
    @property
    def stream(self) -> bool: ...


StreamedRequestT = TypeVar("StreamedRequestT", bound=StreamedRequest)


def streamed_only(parse: Callable[[Body], StreamedRequestT], *, instead: str) -> Callable[[Body], StreamedRequestT]:
    """`parse`, refusing `stream: false`: the page's API only streams (`/v1` answers in one object)."""

    def parse_streamed(body: Body) -> StreamedRequestT:
        parsed = parse(body)
        if not parsed.stream:
            raise stream_required(instead=instead)
        return parsed

    return parse_streamed


# Given the caller and a body, the body with a saved conversation's history, and the turn to save.
OpenTurn = Callable[..., tuple[dict[str, Any], ConversationTurn | None]]


@dataclass(frozen=True)
class Accepted(Generic[ApiRequestT]):
    """A request let through to the upstream: who asks, what, the admission it holds, its usage
    row (in progress) and the conversation turn it saves, if any."""

    caller: Caller
    request: ApiRequestT
    admission: Admission
    row: UsageLog
    turn: ConversationTurn | None = None


@dataclass(frozen=True)
class Opened(Generic[ApiRequestT]):
    request: ApiRequestT
    stream: RelayStream
    turn: ConversationTurn | None
    timings: RequestTimings


async def accept_and_open(
    request: HttpRequest,
    *,
    front: Callable[[HttpRequest], Caller],
    parse: Callable[[Body], ApiRequestT],
    api: UpstreamApi,
    framing: Callable[[ApiRequestT], Framing],
    conversation: OpenTurn | None = None,
) -> Opened[ApiRequestT] | ApiError:
    """Who asks and what (the front, validation and admission), then the upstream's stream opened
    for it; or the error refusing the request (logged, with its usage row if it reached the upstream)."""
    timings = RequestTimings()
    accepted = await in_database_thread(
        accept_request,
        request,
        front=front,
        parse=parse,
        endpoint=api.endpoint,
        conversation=conversation,
        timings=timings,
    )
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
            row=accepted.row,
            transcript=AnswerTranscript(accepted.turn.save_answer) if accepted.turn is not None else None,
            timings=timings,
        )
    except ApiError as error:
        return error
    finally:
        timings.opened = time.monotonic()
        metrics.request_timed(timings)
    return Opened(request=accepted.request, stream=stream, turn=accepted.turn, timings=timings)


def accept_request(
    request: HttpRequest,
    *,
    front: Callable[[HttpRequest], Caller],
    parse: Callable[[Body], ApiRequestT],
    endpoint: str,
    timings: RequestTimings,
    conversation: OpenTurn | None = None,
) -> Accepted[ApiRequestT] | ApiError:
    """The front, the body's validation, admission and the request's usage row (in progress), or
    the error refusing the request.

    All of the request's database work before streaming, in one hop to a database thread, whose
    connection is not held while the request streams: a stream may stay open for minutes, and 500
    open streams must not hold 500 connections. The usage row's refreshes and its settling take one
    briefly.
    """
    try:
        caller = front(request)
        timings.authenticated = time.monotonic()
        try:
            body: Body = request_body(request)
            turn = None
            if conversation is not None:
                body, turn = conversation(user=caller.user, data=load_body(body))
            parsed = parse(body)
            input_tokens = parsed.estimated_input_tokens()
            sweep_once_at_start()
            admission = admit(
                caller.user,
                model=parsed.model,
                input_tokens=input_tokens,
                output_tokens=parsed.output_token_limit(),
                sweep_stale=sweep_user_interrupted,
            )
        except ApiError as error:
            log_refusal(
                user_id=caller.user.pk,
                api_key_id=caller.api_key.pk if caller.api_key else None,
                error=error,
                timings=timings,
            )
            return error
        row = None
        try:
            row = open_usage_row(
                user=caller.user,
                api_key=caller.api_key,
                endpoint=endpoint,
                model=parsed.model,
                input_tokens=input_tokens,
                admission=admission,
            )
            if turn is not None:
                turn.save_request(usage=row)
        except BaseException:
            withdraw_usage_row(user_id=caller.user.pk, row=row, admission=admission)
            raise
        timings.admitted = time.monotonic()
        return Accepted(caller=caller, request=parsed, admission=admission, row=row, turn=turn)
    except ApiError as error:
        return error


def sweep_user_interrupted(user_id: int) -> int:
    return sweep_interrupted(user_id=user_id)


class RelayResponse(StreamingHttpResponse):
    """A relay stream as Django's streaming response, which the ASGI handler iterates directly: the
    relay yields bytes already, so the two generators Django wraps around an async iterator (to turn
    each part into bytes) are left out of every chunk's way."""

    def __init__(self, stream: RelayStream) -> None:
        self._chunks = aiter(stream)
        super().__init__(self._chunks, content_type=stream.content_type)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks


def streaming_response(stream: RelayStream, timings: RequestTimings) -> StreamingHttpResponse:
    response = RelayResponse(stream)
    response["Server-Timing"] = timings.server_timing()
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def method_not_allowed_response(allowed: str) -> JsonResponse:
    response = error_response(method_not_allowed(allowed=allowed))
    response["Allow"] = allowed
    return response


async def healthz(request: HttpRequest) -> JsonResponse:
    """Database and cache reachability, for load balancers: 200 when both answer, else 503."""
    checks = await in_database_thread(_check_services)
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
