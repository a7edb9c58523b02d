"""The upstream client: one `AsyncOpenAI` per event loop, pointed at the configured server.

With no API key configured, the client points at the built-in demo model, a loopback
OpenAI-compatible server, so the demo runs through exactly the code production runs.

The SDK speaks HTTP through aiohttp (`openai[aiohttp]`, the SDK's own alternative transport):
measured here it costs under half the CPU per relayed chunk of the default httpx2 transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx2
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from openai import AsyncOpenAI, DefaultAioHttpClient

from . import demo_model
from .conf import app_settings
from .errors import upstream_busy


@dataclass
class Upstream:
    client: AsyncOpenAI
    # One slot per upstream connection: a stream holds one from its request to its end.
    connections: asyncio.Semaphore

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        """Hold one of the upstream connections; wait up to the connect timeout for one, else 503."""
        try:
            async with asyncio.timeout(app_settings.OPENAI_CONNECT_TIMEOUT):
                await self.connections.acquire()
        except TimeoutError:
            raise upstream_busy() from None
        try:
            yield
        finally:
            self.connections.release()


_upstreams: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Upstream] = weakref.WeakKeyDictionary()


def get_upstream() -> Upstream:
    """The shared upstream of the running event loop (its connection pool is bound to the loop)."""
    loop = asyncio.get_running_loop()
    upstream = _upstreams.get(loop)
    if upstream is None:
        upstream = _upstreams[loop] = Upstream(_make_client(), asyncio.Semaphore(app_settings.OPENAI_MAX_CONNECTIONS))
    return upstream


def _make_client() -> AsyncOpenAI:
    if app_settings.CHAT_DEMO_MODE:
        server = demo_model.ensure_demo_server()
        api_key, base_url = server.api_key, server.base_url
    else:
        api_key, base_url = app_settings.OPENAI_API_KEY, app_settings.OPENAI_BASE_URL
    # The relay enforces the first-token and idle timeouts itself, with clearer errors; the
    # transport's read timeout is only a backstop behind them.
    silence = max(app_settings.OPENAI_FIRST_TOKEN_TIMEOUT, app_settings.OPENAI_IDLE_TIMEOUT) + 10
    timeout = httpx2.Timeout(
        connect=app_settings.OPENAI_CONNECT_TIMEOUT,
        read=silence,
        write=silence,
        pool=app_settings.OPENAI_CONNECT_TIMEOUT,
    )
    connections = app_settings.OPENAI_MAX_CONNECTIONS
    http_client = DefaultAioHttpClient(
        timeout=timeout,
        limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
    )
    return AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=app_settings.OPENAI_MAX_RETRIES,
        http_client=http_client,
    )


def upstream_user_id(user: AbstractBaseUser) -> str:
    """A stable identifier for the upstream's abuse monitoring that does not reveal who the user is."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"chatproxy-user:{user.pk}".encode(), hashlib.sha256)
    return f"user-{digest.hexdigest()[:32]}"
