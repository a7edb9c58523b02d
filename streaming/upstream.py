"""The upstream: one `AsyncOpenAI` client per event loop, pointed at the configured server, and the
request that opens a stream there.

With no API key configured, the client points at the built-in demo model, a loopback
OpenAI-compatible server, so the demo runs through exactly the code production runs.

A streaming request is the SDK's: its headers and authentication, its retries with backoff before
the body starts (`OPENAI_MAX_RETRIES`, `Retry-After`) and its typed errors, which
`streaming.errors.upstream_error` maps to the API's. Building a request through the SDK and httpx2
costs about 0.7 ms of CPU here, so the relay sends the SDK's first attempt itself, straight through
aiohttp, with the headers the SDK sends (read from the client's public `default_headers` and
`auth_headers` once): a 200 is streamed from there. Anything else (another status, or no answer)
is handed to the SDK as the answer to its own first attempt: its transport (`AiohttpTransport`)
replays it instead of sending, so the SDK raises the error it would have raised, or retries it
exactly as it would have, sending the retries itself. The upstream sees the same requests as from
the SDK alone.

Either way the answer's body is aiohttp's own buffer (`AiohttpBody`), which the relay reads with no
iterator layers, and no read timer re-armed on every chunk: the relay's own timeouts apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import hmac
import urllib.request
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx2
import orjson
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from openai import AsyncOpenAI, Omit

from . import demo_model
from .conf import app_settings
from .errors import upstream_busy

# The key of an `AiohttpTransport` answer's `AiohttpBody` in its response's extensions.
BODY_EXTENSION = "chatproxy_aiohttp_body"
# Compressing small SSE events costs both sides CPU and buys nothing.
NO_COMPRESSION = {"Accept-Encoding": "identity"}


class UpstreamRequest(Protocol):
    """What an upstream API sends to open a stream (see `streaming.relay.UpstreamApi`)."""

    @property
    def path(self) -> str:
        """Its path under the base URL, e.g. `/chat/completions`."""
        ...

    def request_body(self, params: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of the streaming request."""
        ...


class AiohttpBody(httpx2.AsyncByteStream):
    """An upstream answer's body: aiohttp's buffer, read by the relay as it fills (a wait may be
    cancelled without losing data), and an httpx2 byte stream for the SDK, which reads error
    bodies through it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._content = response.content

    def read(self) -> Awaitable[bytes]:
        """Whatever arrived since the last read, waiting for something; b"" once the body has ended.
        (aiohttp's own coroutine, awaited by the caller: one frame less on every chunk.)"""
        return self._content.readany()

    def read_nowait(self) -> bytes:
        """Whatever arrived since the last read, without waiting (b"" if nothing has)."""
        return self._content.read_nowait()

    def at_eof(self) -> bool:
        return self._content.at_eof()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while data := await self._content.readany():
            yield data

    async def aclose(self) -> None:
        """The connection goes back to the pool if the body was read to its end; else it is closed,
        which the upstream sees at once."""
        self._response.release()


# The relay's own first attempt at a request, which `AiohttpTransport` gives the SDK as its first
# attempt's answer: a response, or the error the attempt failed with.
_first_attempt: contextvars.ContextVar[aiohttp.ClientResponse | BaseException | None] = contextvars.ContextVar(
    "chatproxy_first_attempt", default=None
)


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """httpx2's transport for the SDK, over one aiohttp session (also the relay's first attempts'):
    the request as the SDK built it, or the relay's first attempt replayed; the answer's body left
    in aiohttp's buffer. Connection failures become httpx2's, which the SDK retries and raises as
    `APIConnectionError` / `APITimeoutError`.

    Proxies from the environment (`HTTPS_PROXY`, `NO_PROXY`) apply, as with httpx2's own transport.
    """

    def __init__(self, *, max_connections: int, connect_timeout: float) -> None:
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=None
        )
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    async def send(self, url: str, *, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """POST `body` to `url` (no redirects followed): the answer, its body unread."""
        if self._session is None:
            # aiohttp's own trust_env would look for .netrc and proxies in a thread on every request.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=httpx2.create_ssl_context()),
                timeout=self._timeout,
                auto_decompress=False,
            )
        return await self._session.post(
            url, data=body, headers=headers, allow_redirects=False, proxy=self._proxy_for(url)
        )

    def _proxy_for(self, url: str) -> str | None:
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._proxies:
            bypass = urllib.request.proxy_bypass(key[1])
            self._proxies[key] = None if bypass else urllib.request.getproxies().get(key[0])
        return self._proxies[key]

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        first = _first_attempt.get()
        try:
            if first is not None:
                _first_attempt.set(None)
                if isinstance(first, BaseException):
                    raise first
                response = first
            else:
                response = await self.send(str(request.url), body=request.content, headers=dict(request.headers))
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise httpx2.ConnectTimeout(str(exc), request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx2.ConnectError(str(exc), request=request) from exc
        body = AiohttpBody(response)
        return httpx2.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=body,
            request=request,
            # httpx2 wraps the stream; the relay finds it here.
            extensions={"http_version": b"HTTP/1.1", BODY_EXTENSION: body},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass
class Upstream:
    client: AsyncOpenAI
    transport: AiohttpTransport
    # One slot per upstream connection: a stream holds one from its request to its end.
    connections: asyncio.Semaphore
    # The headers of the SDK's first attempt at a request (see `first_attempt_headers`).
    headers: dict[str, str]
    # Closes the client's connections when the event loop shuts down (see `_closed_with_the_loop`).
    closer: AsyncGenerator[None]

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

    async def open_stream(
        self, api: UpstreamRequest, params: dict[str, Any], cleanup: contextlib.AsyncExitStack
    ) -> tuple[AiohttpBody, str]:
        """The upstream's 200 answer to the streaming request and its request id, its closing owned by
        `cleanup`; or the SDK's error once its retries are spent."""
        body = api.request_body(params)
        first: aiohttp.ClientResponse | BaseException
        try:
            first = await self.transport.send(
                f"{self.client.base_url}{api.path.lstrip('/')}", body=orjson.dumps(body), headers=self.headers
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            first = exc
        if isinstance(first, aiohttp.ClientResponse):
            cleanup.callback(first.release)
            if first.status == 200:
                return AiohttpBody(first), first.headers.get("x-request-id", "")
        attempt = _first_attempt.set(first)
        try:
            response = await self.client.post(
                api.path,
                body=body,
                cast_to=httpx2.Response,
                stream=True,
                options={"headers": NO_COMPRESSION, "security": {"bearer_auth": True}},
            )
        finally:
            _first_attempt.reset(attempt)
        cleanup.push_async_callback(response.aclose)
        return response.extensions[BODY_EXTENSION], response.headers.get("x-request-id", "")


_upstreams: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Upstream] = weakref.WeakKeyDictionary()


def get_upstream() -> Upstream:
    """The shared upstream of the running event loop (its connection pools are bound to the loop)."""
    loop = asyncio.get_running_loop()
    upstream = _upstreams.get(loop)
    if upstream is None:
        client, transport = _make_client()
        upstream = _upstreams[loop] = Upstream(
            client=client,
            transport=transport,
            connections=asyncio.Semaphore(app_settings.OPENAI_MAX_CONNECTIONS),
            headers=first_attempt_headers(client),
            closer=_closed_with_the_loop(client),
        )
        asyncio.ensure_future(anext(upstream.closer))
    return upstream


async def _closed_with_the_loop(client: AsyncOpenAI) -> AsyncGenerator[None]:
    """An async generator left waiting: the loop closes it when it shuts down (`shutdown_asyncgens`,
    as `asyncio.run` and the test runner do), and with it the client and its connections."""
    try:
        yield
    finally:
        await client.close()


def _make_client() -> tuple[AsyncOpenAI, AiohttpTransport]:
    if app_settings.CHAT_DEMO_MODE:
        server = demo_model.ensure_demo_server()
        api_key, base_url = server.api_key, server.base_url
    else:
        api_key, base_url = app_settings.OPENAI_API_KEY, app_settings.OPENAI_BASE_URL
    transport = AiohttpTransport(
        max_connections=app_settings.OPENAI_MAX_CONNECTIONS, connect_timeout=app_settings.OPENAI_CONNECT_TIMEOUT
    )
    client = AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=_timeout(),
        max_retries=app_settings.OPENAI_MAX_RETRIES,
        # Proxies from the environment are the transport's to apply (httpx2 would route around it).
        http_client=httpx2.AsyncClient(transport=transport, timeout=_timeout(), follow_redirects=True, trust_env=False),
    )
    return client, transport


def _timeout() -> httpx2.Timeout:
    # The relay enforces the first-token and idle timeouts itself, with clearer errors; the read
    # timeout here only tells the upstream what the SDK would wait (its X-Stainless-Read-Timeout).
    silence = max(app_settings.OPENAI_FIRST_TOKEN_TIMEOUT, app_settings.OPENAI_IDLE_TIMEOUT) + 10
    return httpx2.Timeout(
        connect=app_settings.OPENAI_CONNECT_TIMEOUT,
        read=silence,
        write=silence,
        pool=app_settings.OPENAI_CONNECT_TIMEOUT,
    )


def first_attempt_headers(client: AsyncOpenAI) -> dict[str, str]:
    """The headers the SDK sends on its first attempt at a streaming request: its defaults (user
    agent, platform) and authentication, its retry count (0) and read timeout, and no compression."""
    headers = {**client.default_headers, **client.auth_headers, **NO_COMPRESSION}
    return {
        **{name: value for name, value in headers.items() if not isinstance(value, Omit)},
        "X-Stainless-Retry-Count": "0",
        "X-Stainless-Read-Timeout": str(_timeout().read),
    }


def upstream_user_id(user: AbstractBaseUser) -> str:
    """A stable identifier for the upstream's abuse monitoring that does not reveal who the user is."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"chatproxy-user:{user.pk}".encode(), hashlib.sha256)
    return f"user-{digest.hexdigest()[:32]}"
