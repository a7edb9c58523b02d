"""A small HTTP/1.1 server on a loopback port, for answering the openai SDK like a real upstream.

It serves the built-in demo model (`streaming.demo_model`) and the test suite's fake upstream
(`tests/fake_upstream.py`), both of which subclass `LoopbackHTTPServer` and implement `handle`.
It speaks real sockets, so the SDK's own transport is exercised, and it has no Django import:
it is plain transport, usable without configured settings or an app registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Self

import orjson

MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass
class UpstreamRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class ResponseWriter:
    """Writes one HTTP/1.1 response; streams use chunked transfer encoding on a kept-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.keep_alive = True
        self.client_closed = asyncio.Event()
        self.client_closed_at: float | None = None
        self._watcher: asyncio.Task | None = None

    async def json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = orjson.dumps(payload)
        head = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
        self._writer.write(_head(status, head) + body)
        await self._writer.drain()

    async def start_stream(self, headers: dict[str, str] | None = None) -> None:
        head = {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked", **(headers or {})}
        self._writer.write(_head(200, head))
        await self._writer.drain()
        self._watcher = asyncio.ensure_future(self._watch_for_close())

    async def send(self, data: bytes) -> bool:
        """Send part of the body; False once the client has gone away."""
        if self.client_closed.is_set():
            return False
        try:
            self._writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await self._writer.drain()
        except ConnectionError:
            self._mark_closed()
            return False
        return True

    async def end_stream(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if not self.client_closed.is_set():
            self._writer.write(b"0\r\n\r\n")
            try:
                await self._writer.drain()
            except ConnectionError:
                self.keep_alive = False

    def abort(self) -> None:
        """Drop the connection without finishing the response."""
        self.keep_alive = False
        self._writer.transport.abort()

    async def _watch_for_close(self) -> None:
        # The client sends nothing while a response streams, so EOF here means it hung up.
        with contextlib.suppress(ConnectionError):
            await self._reader.read(1)
        self._mark_closed()

    def _mark_closed(self) -> None:
        if not self.client_closed.is_set():
            self.client_closed_at = time.monotonic()
            self.client_closed.set()
        self.keep_alive = False


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_request(reader: asyncio.StreamReader) -> UpstreamRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = min(int(headers.get("content-length", "0")), MAX_REQUEST_BYTES)
    body = await reader.readexactly(length) if length else b""
    return UpstreamRequest(method, path, headers, body)


class LoopbackHTTPServer:
    """A small HTTP/1.1 server on 127.0.0.1, in a daemon thread with its own event loop."""

    def __init__(self) -> None:
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self) -> None:
        self._loop = loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(self._serve_connection, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            # Dropping the connections lets their handlers end on their own: cancelling a handler
            # task makes asyncio log an error from inside its streams machinery.
            for writer in self._writers:
                writer.transport.abort()
            pending = asyncio.all_tasks(loop)
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=2))
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                response = ResponseWriter(reader, writer)
                await self.handle(request, response)
                if not response.keep_alive:
                    break
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def handle(self, request: UpstreamRequest, response: ResponseWriter) -> None:
        raise NotImplementedError
