"""Django's standard session, common, auth and messages middleware, run on the event loop.

Under ASGI, Django runs each hook of a `MiddlewareMixin` middleware (`process_request`,
`process_view`, `process_response`) through `sync_to_async`: a thread hop each, a dozen per request
with the standard stack, measured here as the largest per-request cost of the relay. These hooks
do not block, so they run inline; the ones that can reach the database (saving a modified session,
storing messages that may fall back to the session) still go to a thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponseBase
from django.middleware import common
from django.utils.deprecation import MiddlewareMixin

RequestHook = Callable[[HttpRequest], HttpResponseBase | None]
ResponseHook = Callable[[HttpRequest, HttpResponseBase], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class InlineHooksMixin(MiddlewareMixin):
    """Call the middleware's hooks directly: only for hooks that never do blocking I/O."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        process_request: RequestHook | None = getattr(self, "process_request", None)
        response = process_request(request) if process_request else None
        if response is None:
            response = await cast(AsyncGetResponse, self.get_response)(request)
        if hasattr(self, "process_response"):
            response = await self._process_response(request, response)
        return response

    async def _process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return self.response_hook(request, response)

    @property
    def response_hook(self) -> ResponseHook:
        """`process_response`, which takes any response (django-stubs narrow it to HttpResponse)."""
        hook: ResponseHook = getattr(self, "process_response")  # noqa: B009
        return hook


class CommonMiddleware(InlineHooksMixin, common.CommonMiddleware):
    pass


class AuthenticationMiddleware(InlineHooksMixin, auth.AuthenticationMiddleware):
    """Sets the lazy `request.user`; the user is loaded when first used (`await request.auser()`)."""


class MessageMiddleware(InlineHooksMixin, messages.MessageMiddleware):
    async def _process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        storage = getattr(request, "_messages", None)
        if storage is not None and (storage.used or storage.added_new):
            # Storing may fall back to the session, which may have to be loaded first.
            return await sync_to_async(self.response_hook)(request, response)
        return self.response_hook(request, response)


class SessionMiddleware(InlineHooksMixin, sessions.SessionMiddleware):
    async def _process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        session = request.session
        if session.modified or (settings.SESSION_SAVE_EVERY_REQUEST and not session.is_empty()):
            return await sync_to_async(self.response_hook)(request, response)
        return self.response_hook(request, response)
