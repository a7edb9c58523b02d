"""The relay core: one upstream stream, relayed to one client, accounted for once.

admission (the caller's) → the upstream call (through the openai SDK) → the upstream's SSE events
→ the upstream API's own event accounting → framing for the client (NDJSON or SSE) → exactly one
usage row. An upstream API plugs in as an `UpstreamApi` and a request that follows `ApiRequest`;
the relay itself knows nothing of chat completions.

The upstream's events are relayed as their own bytes, reframed but never re-serialized; each is
parsed once, for the accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any, Protocol

import anyio
import httpx2
import openai
import orjson
from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from openai import AsyncOpenAI
from openai._response import AsyncAPIResponse, AsyncResponseContextManager

from . import metrics
from .conf import app_settings
from .errors import (
    ApiError,
    first_token_timeout,
    idle_timeout,
    upstream_connection_lost,
    upstream_error,
    upstream_incomplete,
    upstream_malformed,
)
from .fronts import Caller
from .limits import SLOT_REFRESH_SECONDS, Admission
from .models import UsageLog
from .upstream import get_upstream, upstream_user_id
from .usage import StreamAccount, Transcript, keep_alive, record_usage
from .wire import DONE, Framing, NDJSONFraming, SSEDecoder, SSEEvent

logger = logging.getLogger(__name__)

# After the end of the answer, how long to wait for the upstream to end its body so its connection can be reused.
DRAIN_SECONDS = 0.1
UPSTREAM_READ_ERRORS = (httpx2.TransportError, anyio.EndOfStream)


class ApiRequest(Protocol):
    """A validated request to one upstream API (see `streaming.schemas`)."""

    @property
    def model(self) -> str: ...

    def upstream_params(self) -> dict[str, Any]: ...

    def estimated_input_tokens(self) -> int: ...

    def output_token_limit(self) -> int:
        """The most output tokens the request may cost (what its reservation holds)."""
        ...


class UpstreamApi(Protocol):
    """One upstream API's part in the relay: its call, and the meaning of its stream events."""

    @property
    def endpoint(self) -> str:
        """The usage row's name for it (`UsageLog.Endpoint`)."""
        ...

    # What ends this API's stream in SSE framing (chat completions: `data: [DONE]`; Responses: nothing).
    sse_terminator: bytes

    def open(self, client: AsyncOpenAI, params: dict[str, Any]) -> AsyncResponseContextManager[AsyncAPIResponse]: ...

    def observe(self, event: str | None, payload: dict[str, Any], account: StreamAccount) -> ApiError | None:
        """Account for one event (usage, output, the end of the answer); the error it reports, if any
        (then the relay ends the stream with `error_event` instead of this event)."""
        ...

    def error_event(self, error: ApiError, account: StreamAccount) -> dict[str, Any]:
        """A failure after the stream began, as an event in this API's shape."""
        ...

    def forwards(self, payload: dict[str, Any], request: Any) -> bool:
        """Whether the client gets this (accounted-for) event: all but what it did not ask for."""
        ...


async def open_relay(
    *,
    api: UpstreamApi,
    request: ApiRequest,
    caller: Caller,
    framing: Framing,
    admission: Admission,
    row: UsageLog | None = None,
    transcript: Transcript | None = None,
) -> RelayStream:
    """Start the upstream request and the stream that relays it.

    A failure before the upstream answers is recorded and raised as its ApiError (an HTTP error
    status), unless the upstream has not answered within the keepalive interval: then the stream
    starts anyway (200, keepalives) and such a failure arrives as its error line instead.

    `row` is the request's usage row, written in progress at admission, which the end settles
    (without one, the end writes it); a `transcript` gets the answer's events once it is settled.
    """
    user = caller.user
    account = StreamAccount(
        user=user,
        api_key=caller.api_key,
        endpoint=api.endpoint,
        model=request.model,
        # Estimated once, at admission, when the request has its row.
        estimated_input_tokens=request.estimated_input_tokens() if row is None else row.prompt_tokens,
        reserved=admission.reserved,
        transcript=transcript,
    )
    if row is not None:
        account.row_id, account.created_at = row.pk, row.created_at
    upstream = get_upstream()
    # Unwound in reverse when the request ends, however it ends: the response, its connection, the usage row.
    cleanup = AsyncExitStack()
    cleanup.push_async_callback(record_usage, account, admission)
    first_token_deadline = account.started + app_settings.OPENAI_FIRST_TOKEN_TIMEOUT
    opening: asyncio.Task[AsyncAPIResponse] | None = None
    try:
        await cleanup.enter_async_context(upstream.connection())
        metrics.upstream_call()
        opening = asyncio.create_task(
            _open_upstream(
                api, upstream.client, _upstream_params(request, user), account, cleanup, first_token_deadline
            )
        )
        await asyncio.wait({opening}, timeout=app_settings.CHAT_KEEPALIVE_SECONDS or None)
        if opening.done():
            opening.result()  # a failure to answer raises here, before the stream commits
        else:  # not answered yet: commit to the stream, whose pump takes over the opening
            cleanup.push_async_callback(_stop, opening)
    except BaseException as exc:
        if opening is not None:
            await _stop(opening)
        if not isinstance(exc, Exception):
            account.status = UsageLog.Status.CANCELLED
            await close_despite_cancellation(cleanup)
            raise
        failure = _opening_failure(exc, account)
        metrics.upstream_error(failure.code)
        await close_despite_cancellation(cleanup)
        raise failure from exc
    return RelayStream(
        opening=opening,
        api=api,
        request=request,
        framing=framing,
        account=account,
        admission=admission,
        first_token_deadline=first_token_deadline,
        cleanup=cleanup,
    )


async def _open_upstream(
    api: UpstreamApi,
    client: AsyncOpenAI,
    params: dict[str, Any],
    account: StreamAccount,
    cleanup: AsyncExitStack,
    deadline: float,
) -> AsyncAPIResponse:
    """The upstream's answer (its status and headers), noted on the account, its closing owned by `cleanup`."""
    async with asyncio.timeout(deadline - time.monotonic()):
        response = await cleanup.enter_async_context(api.open(client, params))
    account.request_id = response.request_id or ""
    return response


def _upstream_params(request: ApiRequest, user: AbstractBaseUser) -> dict[str, Any]:
    params = request.upstream_params()
    if app_settings.OPENAI_USER_FIELD:
        params[app_settings.OPENAI_USER_FIELD] = upstream_user_id(user)
    return params


def _opening_failure(exc: Exception, account: StreamAccount) -> ApiError:
    """The error that ends a request before the upstream answered, noted on its account."""
    if isinstance(exc, ApiError):
        failure = exc
    elif isinstance(exc, TimeoutError):
        failure = first_token_timeout()
    else:
        if not isinstance(exc, openai.APIError):
            logger.error("Unexpected failure opening the upstream stream", exc_info=exc)
        failure = upstream_error(exc)
        account.request_id = getattr(exc, "request_id", None) or ""
    account.fail(failure.message)
    return failure


class RelayStream:
    """An open upstream stream, relayed by iterating over it (once).

    A pump task reads the upstream while the relay loop writes to the client, so the relay can
    wake up while the upstream is silent: to send a keepalive, or to give up after a timeout.
    Everything that arrived while the client was being written to goes out as one write.

    `opening` is the upstream's answer; when the stream was committed before the upstream
    answered, it is still pending, and the pump awaits it while the relay sends keepalives.
    """

    def __init__(
        self,
        *,
        opening: asyncio.Task[AsyncAPIResponse],
        api: UpstreamApi,
        request: ApiRequest,
        framing: Framing,
        account: StreamAccount,
        admission: Admission,
        first_token_deadline: float,
        cleanup: AsyncExitStack,
    ) -> None:
        self._opening = opening
        self._answered = opening.done()
        self._api = api
        self._request = request
        self._framing = framing
        self._account = account
        self._admission = admission
        self._first_token_deadline = first_token_deadline
        self._cleanup = cleanup
        self._decoder = SSEDecoder()
        self._kept = account.transcript.events if account.transcript is not None else None
        self._inbox: list[bytes] = []
        self._upstream_ended = False
        self._upstream_error: Exception | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._done = False
        self._failure: ApiError | None = None
        # The first data from the upstream and the first framed output of it are timed by a
        # wrapper that then steps aside, so the chunk and relay loops pay nothing for it.
        self._first_data_at = 0.0
        self._wake: Callable[[], None] = self._wake_on_first_data
        self._relay_events: Callable[[list[SSEEvent]], bytes] = self._relay_first_events

    @property
    def content_type(self) -> str:
        return self._framing.content_type

    async def __aiter__(self) -> AsyncIterator[bytes]:
        account = self._account
        pump = asyncio.create_task(self._pump())
        self._cleanup.push_async_callback(_stop, pump)
        metrics.OPEN_STREAMS.inc()
        try:
            # daphne sends the response headers with the first body message; send them now (with
            # a keepalive if the upstream has kept the client waiting a keepalive interval already).
            yield b"" if self._answered else self._framing.keepalive
            async for out in self._relay():
                yield out
            if self._failure is None and not (self._done or account.finished):
                self._failure = upstream_incomplete()
            if self._failure is not None:
                account.fail(self._failure.message)
                metrics.upstream_error(self._failure.code)
                yield self._framing.error(self._api.error_event(self._failure, account))
            else:
                account.end()
                metrics.stream_ended(account.status)
                end = self._framing.end(self._api.sse_terminator)
                if end:
                    yield end
                await asyncio.wait({pump}, timeout=DRAIN_SECONDS)
        except (asyncio.CancelledError, GeneratorExit):
            if account.status != UsageLog.Status.COMPLETED:  # not a client leaving once the answer was whole
                account.status = UsageLog.Status.CANCELLED
            raise
        finally:
            metrics.OPEN_STREAMS.dec()
            await close_despite_cancellation(self._cleanup)

    async def collect(self) -> list[dict[str, Any]]:
        """The whole answer's events, for a client that wants it as one object; or the ApiError that
        ended it. The stream must have been opened with NDJSON framing (one event a line)."""
        assert self._framing is NDJSONFraming
        lines = [out async for out in self]
        if self._failure is not None:
            raise self._failure
        return [orjson.loads(line) for line in b"".join(lines).split(b"\n") if line]

    async def _pump(self) -> None:
        try:
            response = await self._opening
            self._answered = True
            async for data in response.http_response.aiter_bytes():
                self._inbox.append(data)
                self._wake()
        except Exception as exc:
            self._upstream_error = exc
        finally:
            self._upstream_ended = True
            self._wake()

    def _wake_on_first_data(self) -> None:
        self._first_data_at = time.monotonic()
        self._wake = self._wake_relay
        self._wake_relay()

    def _wake_relay(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _relay(self) -> AsyncIterator[bytes]:
        """Framed output as the upstream delivers it; keepalives while it is silent."""
        keepalive = app_settings.CHAT_KEEPALIVE_SECONDS
        idle_limit = app_settings.OPENAI_IDLE_TIMEOUT
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
                await sync_to_async(keep_alive)(self._account, self._admission)
                last_refresh = now
            if self._account.first_output_at is None:
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
        if not self._answered:  # the stream began before the upstream answered, with this failure
            return _opening_failure(exc, self._account)
        if not isinstance(exc, UPSTREAM_READ_ERRORS):
            logger.error("Unexpected failure reading the upstream stream", exc_info=exc)
        elif not isinstance(exc, httpx2.TimeoutException):
            return upstream_connection_lost()
        return upstream_error(exc)

    def _relay_first_events(self, events: list[SSEEvent]) -> bytes:
        out = self._frame_events(events)
        if out:
            metrics.first_byte_relayed(self._first_data_at)
            self._relay_events = self._frame_events
        return out

    def _frame_events(self, events: list[SSEEvent]) -> bytes:
        framed = []
        for event in events:
            if event.data == DONE:
                self._done = True
                break
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                payload = None
            if not isinstance(payload, dict):
                self._failure = upstream_malformed()
                break
            self._failure = self._api.observe(event.event, payload, self._account)
            if self._failure is not None:
                break
            self._account.events += 1
            if self._kept is not None:
                self._kept.append(payload)
            if not self._api.forwards(payload, self._request):
                continue
            data = event.data if b"\n" not in event.data else orjson.dumps(payload)
            framed.append(self._framing.chunk(data, event.event))
        return b"".join(framed)


_closing: set[asyncio.Future[None]] = set()


async def close_despite_cancellation(cleanup: AsyncExitStack) -> None:
    """Unwind `cleanup` to the end even if the request is cancelled meanwhile.

    A client that closes the connection the moment it has read `[DONE]` (the openai SDKs do) makes
    Django cancel the response task while it may be unwinding here; cut short, the request would
    keep its concurrency slot and leave no usage row. The cancellation is raised once it is done.
    """
    closing = asyncio.ensure_future(cleanup.aclose())
    _closing.add(closing)  # the loop holds tasks weakly: keep it to the end even if this waiter goes
    closing.add_done_callback(_closing.discard)
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await asyncio.shield(closing)
        raise


async def _stop(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
