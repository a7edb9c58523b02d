"""Authentication fronts: one function per way into the API, each answering who is asking.

A front returns the `Caller` or raises the `ApiError` that refuses the request. It runs in the
request's one thread hop (it may touch the session and the database).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware

from .api_keys import authenticate_api_key
from .conf import app_settings
from .errors import api_key_missing, body_too_large, csrf_failed, not_authenticated
from .models import ApiKey


@dataclass(frozen=True)
class Caller:
    """Who a request acts for: its limits, budgets and usage rows are this user's."""

    user: AbstractBaseUser
    # The personal API key the request presented; None for the page's session.
    api_key: ApiKey | None = None


class _CsrfCheck(CsrfViewMiddleware):
    """Django's CSRF check, refusing in the API's error shape whatever the site's CSRF_FAILURE_VIEW.

    Overriding `_reject` is how Django's own `requires_csrf_token` changes the refusal.
    """

    def _reject(self, request: HttpRequest, reason: str) -> HttpResponse:
        raise csrf_failed(reason=reason)


def _unused_view(request: HttpRequest) -> HttpResponse:
    raise AssertionError("the CSRF check only decides; it never calls the view")


_csrf = _CsrfCheck(_unused_view)


def session_front(request: HttpRequest) -> Caller:
    """The page's API: a logged-in session, and the CSRF token a page of this site sends.

    Authentication comes first, so an anonymous caller learns it must log in (401) rather than
    that its token is missing (403). The body is bounded before the CSRF check, which may parse a
    form-encoded body.
    """
    user = request.user
    if not user.is_authenticated:
        raise not_authenticated()
    request_body(request)
    _csrf.process_view(request, _unused_view, (), {})
    return Caller(user=user)


def request_body(request: HttpRequest) -> bytes:
    """The request body, or 413 past CHAT_MAX_REQUEST_BYTES (or Django's own upload cap)."""
    limit = app_settings.CHAT_MAX_REQUEST_BYTES
    try:
        body = request.body
    except RequestDataTooBig:
        raise body_too_large(limit=limit) from None
    if len(body) > limit:
        raise body_too_large(limit=limit)
    return body


def bearer_key_front(request: HttpRequest) -> Caller:
    """`/v1`: a personal API key as `Authorization: Bearer <key>`, and nothing else.

    A session cookie counts for nothing here, so no other site's page can drive `/v1` with a
    visitor's cookies, and `/v1` needs no CSRF token.
    """
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise api_key_missing()
    key = authenticate_api_key(presented.strip())
    return Caller(user=key.user, api_key=key)
