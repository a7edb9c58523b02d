"""The upstream client: one `AsyncOpenAI` per event loop, pointed at the configured server.

With no API key configured, the client points at the built-in demo model, a loopback
OpenAI-compatible server, so the demo runs through exactly the code production runs.
"""

from __future__ import annotations

import asyncio
import weakref

import httpx2
from django.conf import settings
from openai import AsyncOpenAI, DefaultAsyncHttpxClient

from . import demo_model

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI] = weakref.WeakKeyDictionary()


def get_upstream_client() -> AsyncOpenAI:
    """The shared client of the running event loop (its connection pool is bound to the loop)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = _make_client()
    return client


def _make_client() -> AsyncOpenAI:
    if settings.CHAT_DEMO_MODE:
        server = demo_model.ensure_demo_server()
        api_key, base_url = server.api_key, server.base_url
    else:
        api_key, base_url = settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL
    # The relay enforces the first-token and idle timeouts itself; the read timeout is a backstop.
    silence = max(settings.OPENAI_FIRST_TOKEN_TIMEOUT, settings.OPENAI_IDLE_TIMEOUT)
    timeout = httpx2.Timeout(
        connect=settings.OPENAI_CONNECT_TIMEOUT,
        read=silence,
        write=silence,
        pool=settings.OPENAI_CONNECT_TIMEOUT,
    )
    connections = settings.OPENAI_MAX_CONNECTIONS
    http_client = DefaultAsyncHttpxClient(
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
