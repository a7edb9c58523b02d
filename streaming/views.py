import logging
import secrets

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, close_old_connections, connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import render, resolve_url
from django.views import defaults
from django.views.csrf import csrf_failure as default_csrf_failure
from django.views.decorators.csrf import csrf_exempt

from .chat_request import ChatRequest, parse_chat_request
from .errors import ApiError, error_response, invalid_request
from .limits import Admission, admit
from .relay import open_chat_stream
from .request_log import log_request
from .wire import framing_for

logger = logging.getLogger(__name__)


class LogoutView(auth_views.LogoutView):
    """Logging out is a POST (Django 5); a GET, from a typed or bookmarked URL, asks to confirm."""

    http_method_names = ["get", "post", "options"]

    def get(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return render(request, "registration/logout_confirm.html")


@login_required
def chat_page(request: HttpRequest) -> HttpResponse:
    context = {
        "demo_mode": settings.CHAT_DEMO_MODE,
        "models": settings.CHAT_ALLOWED_MODELS,
        "default_model": settings.CHAT_DEFAULT_MODEL,
        "login_url": resolve_url(settings.LOGIN_URL),
    }
    return render(request, "streaming/chat.html", context)


# Checked in the view, after authentication, so an anonymous caller learns it must log in (401)
# rather than that its CSRF token is missing (403).
_csrf = CsrfViewMiddleware(lambda request: HttpResponse())


@csrf_exempt
async def chat_stream(request: HttpRequest) -> HttpResponse:
    """Relay one streaming chat completion to a logged-in user."""
    if request.method != "POST":
        response = error_response(ApiError(405, "Use POST.", "invalid_request_error", "method_not_allowed"))
        response["Allow"] = "POST"
        return response
    accepted = await sync_to_async(_accept)(request)
    if isinstance(accepted, HttpResponse):
        return accepted
    user, chat, admission = accepted
    try:
        stream = await open_chat_stream(chat, user, framing_for(request.headers.get("Accept", "")), admission)
    except ApiError as error:  # logged with its usage row
        return error_response(error)
    response = StreamingHttpResponse(stream, content_type=stream.content_type)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _accept(request: HttpRequest) -> tuple[AbstractBaseUser, ChatRequest, Admission] | HttpResponse:
    """Log-in, body size, CSRF, validation and admission, or the response refusing the request.

    All of the request's database work before streaming, in one thread hop; then its database
    connection goes back, since a stream may stay open for minutes and 500 open streams must not
    hold 500 connections. The usage row at the end takes one briefly.
    """
    try:
        user = request.user
        if not user.is_authenticated:
            return error_response(ApiError(401, "Log in to use the chat API.", "authentication_error", "not_authenticated"))
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            body = request.body
        except RequestDataTooBig:
            body = None
        if body is None or len(body) > limit:
            return error_response(invalid_request(f"The request body is over {limit} bytes.", "body_too_large", 413))
        csrf_refusal = _csrf.process_view(request, None, (), {})
        if csrf_refusal is not None:
            return csrf_refusal
        try:
            chat = parse_chat_request(body)
            return user, chat, admit(user)
        except ApiError as error:
            log_request(user_id=user.pk, status="refused", http_status=error.status, code=error.code)
            return error_response(error)
    finally:
        close_old_connections()


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


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if _is_api(request):
        message = f"CSRF verification failed: {reason} Send the csrftoken cookie's value in the X-CSRFToken header."
        return error_response(ApiError(403, message, "permission_error", "csrf_failed"))
    return default_csrf_failure(request, reason)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return error_response(ApiError(404, f"No API endpoint at {request.path}.", "invalid_request_error", "not_found"))
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return error_response(ApiError(500, "Internal server error.", "server_error", "internal_error"))
    return defaults.server_error(request)
