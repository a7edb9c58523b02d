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

import aiohttp
import openai
import orjson
from django.contrib.auth.base_user import AbstractBaseUser

from . import metrics
from .conf import app_settings
from .database import in_database_thread
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
from .timings import RequestTimings
from .upstream import AiohttpBody, Upstream, UpstreamRequest, get_upstream, upstream_user_id
from .usage import StreamAccount, Transcript, keep_alive, record_usage
from .wire import DONE, Framing, NDJSONFraming, SSEDecoder, SSEEvent

logger = logging.getLogger(__name__)

# After the end of the answer, how long to wait for the upstream to end its body so its connection can be reused.
DRAIN_SECONDS = 0.1


class ApiRequest(Protocol):
    """A validated request to one upstream API (see `streaming.schemas`)."""

    @property
    def model(self) -> str: ...

    def upstream_params(self) -> dict[str, Any]: ...

    def estimated_input_tokens(self) -> int: ...

    def output_token_limit(self) -> int:
        """The most output tokens the request may cost (what its reservation holds)."""
        ...


class UpstreamApi(UpstreamRequest, Protocol):
    """One upstream API's part in the relay: its request, and the meaning of its stream events."""

    @property
    def endpoint(self) -> str:
        """The usage row's name for it (`UsageLog.Endpoint`)."""
        ...

    # What ends this API's stream in SSE framing (chat completions: `data: [DONE]`; Responses: nothing).
    sse_terminator: bytes

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
    timings: RequestTimings | None = None,
) -> RelayStream:
    """Start the upstream request and the stream that relays it.

    A failure before the upstream answers is recorded and raised as its ApiError (an HTTP error
    status), unless the upstream has not answered within the keepalive interval: then the stream
    starts anyway (200, keepalives) and such a failure arrives as its error line instead.

    `row` is the request's usage row, written in progress at admission, which the end settles
    (without one, the end writes it); a `transcript` gets the answer's events once it is settled.
    `timings` gets the marks of the upstream's call and answer.
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
        timings=timings or RequestTimings(),
    )
    if row is not None:
        account.row_id, account.created_at = row.pk, row.created_at
    upstream = get_upstream()
    # Unwound in reverse when the request ends, however it ends: the response, its connection, the usage row.
    cleanup = AsyncExitStack()
    cleanup.push_async_callback(record_usage, account, admission)
    first_token_deadline = account.started + app_settings.OPENAI_FIRST_TOKEN_TIMEOUT
    opening: asyncio.Task[AiohttpBody] | None = None
    try:
        await cleanup.enter_async_context(upstream.connection())
        account.timings.upstream_called = time.monotonic()
        opening = asyncio.create_task(
            _open_upstream(api, upstream, _upstream_params(request, user), account, cleanup, first_token_deadline)
        )
        await asyncio.wait({opening}, timeout=app_settings.CHAT_KEEPALIVE_SECONDS or None)
        if opening.done():
            opening.result()  # a failure to answer raises here, before the stream commits
        else:  # not answered yet: commit to the stream, which waits for the opening behind keepalives
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
    upstream: Upstream,
    params: dict[str, Any],
    account: StreamAccount,
    cleanup: AsyncExitStack,
    deadline: float,
) -> AiohttpBody:
    """The upstream's answer (its status and headers), noted on the account, its closing owned by `cleanup`."""
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            body, account.request_id = await upstream.open_stream(api, params, cleanup)
    finally:
        account.timings.upstream_answered = time.monotonic()
    return body


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

    The relay reads the upstream's body itself, in the response's own task: one task wake-up per
    upstream read, and no timer per chunk. While it waits, one timer per stream, re-armed only when
    it fires (at most once a keepalive interval while chunks flow), wakes it for what falls due: a
    keepalive to the client, the usage row's refresh, the first-token or idle timeout. Waking means
    cancelling the read, which loses nothing (see `AiohttpBody.read`), as `asyncio.timeout` does.
    Everything that arrived while the client was being written to goes out as one write.

    `opening` is the upstream's answer; when the stream was committed before the upstream
    answered, it is still pending, and the relay sends keepalives while it waits for it.
    """

    def __init__(
        self,
        *,
        opening: asyncio.Task[AiohttpBody],
        api: UpstreamApi,
        request: ApiRequest,
        framing: Framing,
        account: StreamAccount,
        admission: Admission,
        first_token_deadline: float,
        cleanup: AsyncExitStack,
    ) -> None:
        self._opening = opening
        self._api = api
        self._request = request
        self._framing = framing
        self._account = account
        self._admission = admission
        self._first_token_deadline = first_token_deadline
        self._cleanup = cleanup
        self._decoder = SSEDecoder()
        self._kept = account.transcript.events if account.transcript is not None else None
        self._done = False
        self._failure: ApiError | None = None
        self._keepalive = app_settings.CHAT_KEEPALIVE_SECONDS
        self._idle_limit = app_settings.OPENAI_IDLE_TIMEOUT
        self._last_write = self._last_data = self._last_refresh = time.monotonic()
        # The wake-up timer and what it knows of the relay's task.
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._reading = False
        self._due = False
        self._interrupted = False

    @property
    def content_type(self) -> str:
        return self._framing.content_type

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The stream's output: the relay loop itself, one generator between the upstream and the
        server (it is what Django's handler iterates, see `streaming.views.RelayResponse`)."""
        account = self._account
        metrics.OPEN_STREAMS.inc()
        body: AiohttpBody | None = None
        try:
            # daphne sends the response headers with the first body message; send them now (with
            # a keepalive if the upstream has kept the client waiting a keepalive interval already).
            yield b"" if self._opening.done() else self._framing.keepalive
            while not self._opening.done():
                if await self._wait_for_answer():
                    yield self._framing.keepalive
            body = self._answer()
            if body is not None:
                self._task = asyncio.current_task()
                first_data_at = 0.0
                self._arm()
            while body is not None:
                try:
                    data = await self._read(body)
                    if data is None:  # woken: something fell due
                        data = await self._on_due(body)
                except Exception as exc:
                    self._failure = self._read_failure(exc)
                    break
                if data is None:
                    if self._failure is not None:
                        break
                    if self._keepalive_due(time.monotonic()):
                        yield self._framing.keepalive
                    self._arm()
                    continue
                if not data:
                    break  # the upstream ended its body
                self._last_data = time.monotonic()
                out = self._frame_events(self._decoder.feed(data))
                if out:
                    if not first_data_at:
                        first_data_at = self._last_data
                        metrics.first_byte_relayed(first_data_at)
                    yield out
                    self._last_write = time.monotonic()
                if self._failure is not None or self._done:
                    break
                self._arm()
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
                if body is not None:
                    await _drain(body)
        except (asyncio.CancelledError, GeneratorExit):
            if account.status != UsageLog.Status.COMPLETED:  # not a client leaving once the answer was whole
                account.status = UsageLog.Status.CANCELLED
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
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

    async def _wait_for_answer(self) -> bool:
        """Wait for the upstream's answer until a keepalive or the row's refresh falls due: whether a
        keepalive is due. (The first-token timeout ends the opening itself.)"""
        now = time.monotonic()
        wake_at = self._last_refresh + SLOT_REFRESH_SECONDS
        if self._keepalive:
            wake_at = min(wake_at, self._last_write + self._keepalive)
        await asyncio.wait({self._opening}, timeout=max(0.0, wake_at - now))
        now = time.monotonic()
        await self._refresh_if_due(now)
        return not self._opening.done() and self._keepalive_due(now)

    def _keepalive_due(self, now: float) -> bool:
        """Whether the client has waited a keepalive interval since the last write (the keepalive
        the caller then sends counts as that write)."""
        if not self._keepalive or now - self._last_write < self._keepalive:
            return False
        self._last_write = now
        return True

    def _answer(self) -> AiohttpBody | None:
        """The upstream's answer; None, with the failure noted, if the opening failed after the stream began."""
        try:
            return self._opening.result()
        except Exception as exc:
            self._failure = _opening_failure(exc, self._account)
            return None

    async def _read(self, body: AiohttpBody) -> bytes | None:
        """The next data (b"" at the end); None when the timer woke the relay, or had while it was away."""
        if self._due:
            self._due = False
            return None
        self._reading = True
        try:
            return await body.read()
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            self._interrupted = False
            assert self._task is not None
            if self._task.uncancel() > 0:  # cancelled from outside too: the client left
                raise
            return None
        finally:
            self._reading = False

    async def _on_due(self, body: AiohttpBody) -> bytes | None:
        """Do what fell due: the row's refresh; then, unless data is waiting (returned), note a timeout."""
        now = time.monotonic()
        await self._refresh_if_due(now)
        data = body.read_nowait()
        if data or body.at_eof():
            return data
        deadline, timeout_error = self._silence_deadline()
        if now >= deadline:
            self._failure = timeout_error()
        return None

    async def _refresh_if_due(self, now: float) -> None:
        """The row's and slot's sign of life, every SLOT_REFRESH_SECONDS."""
        if now - self._last_refresh >= SLOT_REFRESH_SECONDS:
            await in_database_thread(keep_alive, self._account, self._admission)
            self._last_refresh = now

    def _silence_deadline(self) -> tuple[float, Callable[[], ApiError]]:
        """When the upstream's silence ends the stream, and with which error: the first-token
        timeout until the answer's first output, then the idle timeout after its last data."""
        if self._account.first_output_at is None:
            return self._first_token_deadline, first_token_timeout
        return self._last_data + self._idle_limit, idle_timeout

    def _wake_at(self) -> float:
        wake_at = min(self._silence_deadline()[0], self._last_refresh + SLOT_REFRESH_SECONDS)
        if self._keepalive:
            wake_at = min(wake_at, self._last_write + self._keepalive)
        return wake_at

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(self._wake_at(), self._on_timer)

    def _on_timer(self) -> None:
        """The timer fired: re-armed if what it was set for moved on (chunks arrived meanwhile), else
        the relay is woken, now if it waits for the upstream, or at its next read."""
        self._timer = None
        wake_at = self._wake_at()
        if time.monotonic() < wake_at:
            self._timer = asyncio.get_running_loop().call_at(wake_at, self._on_timer)
            return
        self._due = True
        if self._reading and self._task is not None:
            self._interrupted = True
            self._task.cancel()

    def _read_failure(self, exc: Exception) -> ApiError:
        """A failure reading the answer: aiohttp's for a connection that broke off (the relay's own
        timeouts end silences; aiohttp has no read timeout here), else unexpected."""
        if isinstance(exc, aiohttp.ClientError):
            return upstream_connection_lost()
        logger.error("Unexpected failure reading the upstream stream", exc_info=exc)
        return upstream_error(exc)

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


async def _drain(body: AiohttpBody) -> None:
    """After the end of the answer, wait briefly for the end of the body, so its connection can be reused."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_SECONDS):
            while await body.read():
                pass


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
