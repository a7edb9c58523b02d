"""The project's ASGI application: each request's synchronous code on a thread of its own while it
runs, taken from earlier requests instead of made for it."""

from __future__ import annotations

import asyncio
import threading

from asgiref.sync import ThreadSensitiveContext, sync_to_async

from chatproxy.request_threads import RequestThreads


class RecordingApplication:
    """An ASGI app that runs thread-sensitive code twice per request, in a thread-sensitive context
    of the request's own, as Django's handler does."""

    def __init__(self) -> None:
        self.threads: list[tuple[str, int]] = []
        self.both_running = asyncio.Event()
        self.running = 0

    async def __call__(self, scope, receive, send) -> None:
        async with ThreadSensitiveContext():
            await self.handle(scope)

    async def handle(self, scope) -> None:
        name = scope["path"]
        await sync_to_async(self._note)(name)
        self.running += 1
        if self.running == 2:
            self.both_running.set()
        if scope.get("concurrent"):
            await asyncio.wait_for(self.both_running.wait(), 5)
        await sync_to_async(self._note)(name)
        self.running -= 1

    def _note(self, name: str) -> None:
        self.threads.append((name, threading.get_ident()))


async def call(application, path: str, *, concurrent: bool = False) -> None:
    await application({"type": "http", "path": path, "concurrent": concurrent}, None, None)


async def test_a_request_keeps_one_thread_and_the_next_request_reuses_it():
    recording = RecordingApplication()
    application = RequestThreads(recording)
    await call(application, "/first")
    await call(application, "/second")
    first = {thread for path, thread in recording.threads if path == "/first"}
    second = {thread for path, thread in recording.threads if path == "/second"}
    assert len(first) == 1 and first == second
    assert threading.get_ident() not in first


async def test_requests_at_the_same_time_never_share_a_thread():
    recording = RecordingApplication()
    application = RequestThreads(recording)
    await asyncio.gather(call(application, "/a", concurrent=True), call(application, "/b", concurrent=True))
    a = {thread for path, thread in recording.threads if path == "/a"}
    b = {thread for path, thread in recording.threads if path == "/b"}
    assert len(a) == len(b) == 1 and a != b
