"""The upstream client: one `AsyncOpenAI` per event loop, pointed at the configured server.

With no API key configured, the client points at the built-in demo model, a loopback
OpenAI-compatible server, so the demo runs through exactly the code production runs.

The SDK speaks HTTP through aiohttp (`openai[aiohttp]`, the SDK's own alternative transport):
measured here it costs under half the CPU per relayed chunk of the default httpx2 transport.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass

import httpx2
from django.conf import settings
from openai import AsyncOpenAI, DefaultAioHttpClient

from . import demo_model


@dataclass
class Upstream:
    client: AsyncOpenAI
    # One slot per upstream connection: a stream holds one from its request to its end.
    connections: asyncio.Semaphore


_upstreams: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Upstream] = weakref.WeakKeyDictionary()


def get_upstream() -> Upstream:
    """The shared upstream of the running event loop (its connection pool is bound to the loop)."""
    loop = asyncio.get_running_loop()
    upstream = _upstreams.get(loop)
    if upstream is None:
        upstream = _upstreams[loop] = Upstream(_make_client(), asyncio.Semaphore(settings.OPENAI_MAX_CONNECTIONS))
    return upstream


def _make_client() -> AsyncOpenAI:
    if settings.CHAT_DEMO_MODE:
        server = demo_model.ensure_demo_server()
        api_key, base_url = server.api_key, server.base_url
    else:
        api_key, base_url = settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL
    # The relay enforces the first-token and idle timeouts itself, with clearer errors; the
    # transport's read timeout is only a backstop behind them.
    silence = max(settings.OPENAI_FIRST_TOKEN_TIMEOUT, settings.OPENAI_IDLE_TIMEOUT) + 10
    timeout = httpx2.Timeout(
        connect=settings.OPENAI_CONNECT_TIMEOUT,
        read=silence,
        write=silence,
        pool=settings.OPENAI_CONNECT_TIMEOUT,
    )
    connections = settings.OPENAI_MAX_CONNECTIONS
    http_client = DefaultAioHttpClient(
        timeout=timeout,
        limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
    )
    return AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=settings.OPENAI_MAX_RETRIES,
        http_client=http_client,
    )
