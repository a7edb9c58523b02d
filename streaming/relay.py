"""The relay: open a streaming chat completion upstream and pass its chunks on to the client.

The upstream's SSE events are relayed as their own bytes, reframed (NDJSON or SSE) but never
re-serialized; each event is parsed once, only to account for usage and to spot errors.
Whatever happens, the request ends with exactly one usage row and its concurrency slot released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import anyio
import httpx2
import openai
import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from openai import AsyncOpenAI
from openai._response import AsyncAPIResponse, AsyncResponseContextManager

from .chat_request import ChatRequest
from .errors import (
    ApiError,
    first_token_timeout,
    idle_timeout,
    upstream_busy,
    upstream_error,
)
from .limits import SLOT_REFRESH_SECONDS, Admission, count_tokens, upstream_user_id
from .models import UsageLog
from .request_log import log_request
from .upstream import get_upstream
from .usage import StreamAccount, save_usage_log
from .wire import DONE, Framing, SSEDecoder, SSEEvent

logger = logging.getLogger(__name__)

# After [DONE], how long to wait for the upstream to end its body so its connection can be reused.
DRAIN_SECONDS = 0.1
UPSTREAM_READ_ERRORS = (httpx2.TransportError, anyio.EndOfStream)


async def _finish(account: StreamAccount, admission: Admission) -> None:
    """Write the usage row, count its tokens and free the concurrency slot: one thread hop for all."""

    def finish() -> UsageLog:
        try:
            row = save_usage_log(account)
            count_tokens(row.user_id, row.total_tokens, row.created_at)
            return row
        finally:
            admission.release()

    row = await sync_to_async(finish)()
    log_request(
        user_id=row.user_id,
        model=row.model,
        status=row.status,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.total_tokens,
        tokens_estimated=row.tokens_estimated,
        ttft_ms=row.time_to_first_token_ms,
        duration_ms=row.duration_ms,
        upstream_request_id=row.upstream_request_id,
    )


async def open_chat_stream(
    chat: ChatRequest, user: AbstractBaseUser, framing: Framing, admission: Admission | None = None
) -> ChatStream:
    """Start the upstream request; raise ApiError (after logging usage) if it fails before streaming."""
    admission = admission or Admission()
    account = StreamAccount(user=user, chat=chat)
    upstream = get_upstream()
    try:
        async with asyncio.timeout(settings.OPENAI_CONNECT_TIMEOUT):
            await upstream.connections.acquire()
    except asyncio.CancelledError:
        account.status = UsageLog.Status.CANCELLED
        await _finish(account, admission)
        raise
    except TimeoutError:
        busy = upstream_busy()
        account.fail(busy.message)
        await _finish(account, admission)
        raise busy from None
    first_token_deadline = account.started + settings.OPENAI_FIRST_TOKEN_TIMEOUT
    try:
        async with asyncio.timeout(first_token_deadline - time.monotonic()):
            response = await _request(upstream.client, chat, user).__aenter__()
    except asyncio.CancelledError:
        upstream.connections.release()
        account.status = UsageLog.Status.CANCELLED
        await _finish(account, admission)
        raise
    except Exception as exc:
        upstream.connections.release()
        if isinstance(exc, TimeoutError):
            failure = first_token_timeout()
        else:
            if not isinstance(exc, openai.APIError):
                logger.exception("Unexpected failure opening the upstream stream")
            failure = upstream_error(exc)
        account.request_id = getattr(exc, "request_id", None) or ""
        account.fail(failure.message)
        await _finish(account, admission)
        raise failure from exc
    account.request_id = response.request_id or ""
    return ChatStream(response, framing, account, admission, first_token_deadline, upstream.connections.release)


def _request(
    client: AsyncOpenAI, chat: ChatRequest, user: AbstractBaseUser
) -> AsyncResponseContextManager[AsyncAPIResponse]:
    """The SDK's raw streaming request for this chat."""
    params = chat.upstream_params()
    if settings.OPENAI_USER_FIELD:
        params[settings.OPENAI_USER_FIELD] = upstream_user_id(user)
    # The SDK walks every message of typed params to transform them (about 0.25 ms a message here);
    # these are validated plain dicts already, so they travel untouched in the body.
    messages = params.pop("messages")
    return client.chat.completions.with_streaming_response.create(
        **params,
        messages=[],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"messages": messages},
        # Compressing small SSE events costs both sides CPU and buys nothing.
        extra_headers={"Accept-Encoding": "identity"},
    )


class ChatStream:
    """An open upstream stream, relayed by iterating over it (once).

    A pump task reads the upstream while the relay loop writes to the client, so the relay can
    wake up while the upstream is silent: to send a keepalive, or to give up after a timeout.
    Everything that arrived while the client was being written to goes out as one write.
    """

    def __init__(
        self,
        response: AsyncAPIResponse,
        framing: Framing,
        account: StreamAccount,
        admission: Admission,
        first_token_deadline: float,
        release_connection: Callable[[], None],
    ) -> None:
        self._response = response
        self._release_connection = release_connection
        self._framing = framing
        self._account = account
        self._admission = admission
        self._first_token_deadline = first_token_deadline
        self._decoder = SSEDecoder()
        self._inbox: list[bytes] = []
        self._upstream_ended = False
        self._upstream_error: Exception | None = None
        self._wakeup: asyncio.Future | None = None
        self._done = False
        self._failure: ApiError | None = None

    @property
    def content_type(self) -> str:
        return self._framing.content_type

    async def __aiter__(self) -> AsyncIterator[bytes]:
        account = self._account
        pump = asyncio.create_task(self._pump())
        try:
            # daphne sends the response headers with the first body message; send them now.
            yield b""
            async for out in self._relay():
                yield out
            if self._failure is None and not (self._done or account.finished):
                self._failure = ApiError(
                    502, "The upstream ended the stream before it was complete.", "upstream_error", "upstream_incomplete"
                )
            if self._failure is not None:
                account.fail(self._failure.message)
                yield self._framing.error(self._failure.as_dict())
            else:
                account.status = UsageLog.Status.COMPLETED
                end = self._framing.end()
                if end:
                    yield end
                await asyncio.wait({pump}, timeout=DRAIN_SECONDS)
        except (asyncio.CancelledError, GeneratorExit):
            account.status = UsageLog.Status.CANCELLED
            raise
        finally:
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            await self._response.close()
            self._release_connection()
            await _finish(account, self._admission)

    async def _pump(self) -> None:
        try:
            async for data in self._response.http_response.aiter_bytes():
                self._inbox.append(data)
                self._wake()
        except Exception as exc:
            self._upstream_error = exc
        finally:
            self._upstream_ended = True
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _relay(self) -> AsyncIterator[bytes]:
        """Framed output as the upstream delivers it; keepalives while it is silent."""
        keepalive = settings.CHAT_KEEPALIVE_SECONDS
        idle_limit = settings.OPENAI_IDLE_TIMEOUT
        loop = asyncio.get_running_loop()
        last_write = last_data = last_refresh = time.monotonic()
        while True:
            if self._inbox:
                data = b"".join(self._inbox)
                self._inbox.clear()
                last_data = time.monotonic()
                out = self._relay_events(self._decoder.feed(data))
                if out:
                    yield out
                    last_write = time.monotonic()
                if self._failure is not None or self._done:
                    return
                continue
            if self._upstream_ended:
                if self._upstream_error is not None:
                    self._failure = self._read_failure(self._upstream_error)
                return
            now = time.monotonic()
            if now - last_refresh > SLOT_REFRESH_SECONDS:
                await sync_to_async(self._admission.refresh)()
                last_refresh = now
            if self._account.first_token_at is None:
                deadline, timeout_error = self._first_token_deadline, first_token_timeout
            else:
                deadline, timeout_error = last_data + idle_limit, idle_timeout
            if now >= deadline:
                self._failure = timeout_error()
                return
            if keepalive and now - last_write >= keepalive:
                yield self._framing.keepalive
                last_write = now
            wake_at = min(deadline, last_write + keepalive) if keepalive else deadline
            self._wakeup = loop.create_future()
            if self._inbox or self._upstream_ended:  # the pump ran while this loop was away
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - time.monotonic())):
                    await self._wakeup

    def _read_failure(self, exc: Exception) -> ApiError:
        if not isinstance(exc, UPSTREAM_READ_ERRORS):
            logger.error("Unexpected failure reading the upstream stream", exc_info=exc)
        return upstream_error(exc)

    def _relay_events(self, events: list[SSEEvent]) -> bytes:
        framed = []
        for event in events:
            if event.data == DONE:
                self._done = True
                break
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                chunk = None
            if not isinstance(chunk, dict):
                self._failure = ApiError(
                    502, "The upstream sent an event that is not a JSON object.", "upstream_error", "upstream_malformed"
                )
                break
            if event.event == "error" or chunk.get("error") or chunk.get("object") == "error":
                self._failure = upstream_error(_stream_error(chunk))
                break
            self._account.observe(chunk)
            data = event.data if b"\n" not in event.data else orjson.dumps(chunk)
            framed.append(self._framing.chunk(data))
        return b"".join(framed)


def _stream_error(chunk: dict) -> openai.APIError:
    error = chunk.get("error") if isinstance(chunk.get("error"), dict) else chunk
    message = error.get("message") if isinstance(error.get("message"), str) else "The upstream reported an error."
    return openai.APIError(message, request=None, body={"error": error})  # type: ignore[arg-type]
