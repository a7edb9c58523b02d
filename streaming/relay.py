"""The relay: open a streaming chat completion upstream and pass its chunks on to the client.

The upstream's SSE events are relayed as their own bytes, reframed (NDJSON or SSE) but never
re-serialized; each event is parsed once, only to account for usage and to spot errors.
Whatever happens, the request ends with exactly one usage row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import anyio
import httpx2
import openai
import orjson
from django.contrib.auth.base_user import AbstractBaseUser
from openai._response import AsyncAPIResponse

from .chat_request import ChatRequest
from .errors import ApiError, upstream_error
from .models import UsageLog
from .upstream import get_upstream_client
from .usage import StreamAccount, record_usage
from .wire import DONE, Framing, SSEDecoder, SSEEvent

logger = logging.getLogger(__name__)

# After [DONE], how long to wait for the upstream to end its body so its connection can be reused.
DRAIN_SECONDS = 0.1
UPSTREAM_READ_ERRORS = (httpx2.TransportError, anyio.EndOfStream)


async def open_chat_stream(chat: ChatRequest, user: AbstractBaseUser, framing: Framing) -> ChatStream:
    """Start the upstream request; raise ApiError (after logging usage) if it fails before streaming."""
    account = StreamAccount(user=user, chat=chat)
    request = get_upstream_client().chat.completions.with_streaming_response.create(
        **chat.upstream_params(),
        stream=True,
        stream_options={"include_usage": True},
    )
    try:
        response = await request.__aenter__()
    except asyncio.CancelledError:
        account.status = UsageLog.Status.CANCELLED
        await record_usage(account)
        raise
    except Exception as exc:
        if not isinstance(exc, openai.APIError):
            logger.exception("Unexpected failure opening the upstream stream")
        failure = upstream_error(exc)
        account.request_id = getattr(exc, "request_id", None) or ""
        account.fail(failure.message)
        await record_usage(account)
        raise failure from exc
    account.request_id = response.request_id or ""
    return ChatStream(response, framing, account)


class ChatStream:
    """An open upstream stream, relayed by iterating over it (once)."""

    def __init__(self, response: AsyncAPIResponse, framing: Framing, account: StreamAccount) -> None:
        self._response = response
        self._framing = framing
        self._account = account
        self._decoder = SSEDecoder()
        self._done = False
        self._failure: ApiError | None = None

    @property
    def content_type(self) -> str:
        return self._framing.content_type

    async def __aiter__(self) -> AsyncIterator[bytes]:
        account = self._account
        try:
            # daphne sends the response headers with the first body message; send them now.
            yield b""
            try:
                async for out in self._relay_upstream():
                    yield out
            except UPSTREAM_READ_ERRORS as exc:
                self._failure = upstream_error(exc)
            except Exception as exc:
                logger.exception("Unexpected failure relaying the upstream stream")
                self._failure = upstream_error(exc)
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
        except (asyncio.CancelledError, GeneratorExit):
            account.status = UsageLog.Status.CANCELLED
            raise
        finally:
            await self._response.close()
            await record_usage(account)

    async def _relay_upstream(self) -> AsyncIterator[bytes]:
        """Everything one upstream read completed, framed, as one write; stops at [DONE] or an error."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as drain_deadline:
                async for data in self._response.http_response.aiter_bytes():
                    if self._done:
                        continue
                    out = self._relay_events(self._decoder.feed(data))
                    if out:
                        yield out
                    if self._failure is not None:
                        return
                    if self._done:
                        drain_deadline.reschedule(loop.time() + DRAIN_SECONDS)
        except TimeoutError:
            if not self._done:
                raise

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
