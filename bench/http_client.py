"""A minimal HTTP/1.1 client for the load generator: asyncio protocol callbacks, keep-alive, chunked bodies.

A general-purpose client (httpx) costs far more CPU per received chunk than the relay under test
can afford to have next to it, so this one does only what the benchmark needs: write a request,
timestamp every piece of the response as it arrives, de-chunk it, and store the pieces for
analysis after the run (no JSON parsing while streams are being measured).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

CONNECT_TIMEOUT = 10.0


@dataclass
class Exchange:
    """One request and its response, with `time.monotonic()` timestamps."""

    sent_at: float = 0.0
    first_byte_at: float | None = None
    ended_at: float | None = None
    # Set when the client hung up on purpose mid-response.
    aborted_at: float | None = None
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    # The de-chunked body as it arrived: (time the piece was complete, bytes).
    pieces: list[tuple[float, bytes]] = field(default_factory=list)
    error: str | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    @property
    def body(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)


def build_request(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time."""

    _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE = range(6)

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._exchange: Exchange | None = None
        self._done: asyncio.Future[Exchange] | None = None
        self._state = self._HEAD
        self._remaining = 0
        self._reusable = True
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> HttpConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, connection = await loop.create_connection(cls, host, port)
        return connection

    @property
    def reusable(self) -> bool:
        return self._reusable and not self.closed and self._exchange is None

    def send(self, request: bytes) -> tuple[Exchange, asyncio.Future[Exchange]]:
        """Write a request; the future resolves (never raises) when its response has ended or failed."""
        if not self.reusable or self._transport is None:
            raise RuntimeError("connection is busy or closed")
        exchange = Exchange()
        self._exchange = exchange
        self._done = asyncio.get_running_loop().create_future()
        self._state = self._HEAD
        exchange.sent_at = time.monotonic()
        self._transport.write(request)
        return exchange, self._done

    def abort_exchange(self) -> None:
        """Hang up mid-response, as a browser's Stop button does."""
        if self._exchange is not None:
            self._exchange.aborted_at = time.monotonic()
        self._finish()
        self.close()

    def close(self) -> None:
        self._reusable = False
        if self._transport is not None and not self.closed:
            self._transport.close()
        self.closed = True

    # --- protocol callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._reusable = False
        exchange = self._exchange
        if exchange is not None:
            if self._state == self._UNTIL_CLOSE:
                pass  # a body delimited by the end of the connection: complete
            elif exchange.error is None:
                exchange.error = f"connection closed mid-response ({exc or 'EOF'})"
            self._finish()

    def eof_received(self) -> bool:
        return False

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            return  # the server talks out of turn; ignore it
        now = time.monotonic()
        if exchange.first_byte_at is None:
            exchange.first_byte_at = now
        self._buffer += data
        try:
            self._parse(exchange, now)
        except (ValueError, IndexError) as exc:
            exchange.error = f"malformed HTTP response: {exc}"
            self._finish()
            self.close()

    # --- response parsing -------------------------------------------------------------------------

    def _parse(self, exchange: Exchange, now: float) -> None:
        buffer = self._buffer
        position = 0
        while self._exchange is exchange:
            state = self._state
            if state == self._HEAD:
                end = buffer.find(b"\r\n\r\n", position)
                if end < 0:
                    break
                self._read_head(exchange, bytes(buffer[position:end]))
                position = end + 4
            elif state == self._CHUNK_SIZE:
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    break
                size = int(bytes(buffer[position:end]).split(b";", 1)[0], 16)
                position = end + 2
                if size == 0:
                    self._state = self._TRAILER
                else:
                    self._remaining = size
                    self._state = self._CHUNK_DATA
            elif state == self._CHUNK_DATA:
                # Wait for the whole chunk: servers write one chunk per body message, and a piece
                # must be timestamped when it is complete.
                if len(buffer) - position < self._remaining + 2:
                    break
                end = position + self._remaining
                if buffer[end : end + 2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                exchange.pieces.append((now, bytes(buffer[position:end])))
                position = end + 2
                self._state = self._CHUNK_SIZE
            elif state == self._TRAILER:
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    break
                empty = end == position
                position = end + 2
                if empty:
                    exchange.ended_at = now
                    self._finish()
            elif state == self._LENGTH:
                take = min(self._remaining, len(buffer) - position)
                if take:
                    exchange.pieces.append((now, bytes(buffer[position : position + take])))
                    position += take
                    self._remaining -= take
                if self._remaining == 0:
                    exchange.ended_at = now
                    self._finish()
                else:
                    break
            else:  # _UNTIL_CLOSE
                if position < len(buffer):
                    exchange.pieces.append((now, bytes(buffer[position:])))
                    position = len(buffer)
                exchange.ended_at = now
                break
        del buffer[:position]

    def _read_head(self, exchange: Exchange, head: bytes) -> None:
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        exchange.status = int(status)
        for line in header_lines:
            name, _, value = line.partition(":")
            exchange.headers.append((name.strip().lower(), value.strip()))
        connection = (exchange.header("connection") or "").lower()
        if connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive"):
            self._reusable = False
        if "chunked" in (exchange.header("transfer-encoding") or "").lower():
            self._state = self._CHUNK_SIZE
        elif exchange.header("content-length") is not None:
            self._remaining = int(exchange.header("content-length") or 0)
            self._state = self._LENGTH
        else:
            self._reusable = False
            self._state = self._UNTIL_CLOSE

    def _finish(self) -> None:
        done, self._done = self._done, None
        exchange, self._exchange = self._exchange, None
        self._state = self._HEAD
        if (
            exchange is not None
            and exchange.ended_at is None
            and exchange.error is None
            and exchange.aborted_at is None
        ):
            exchange.ended_at = time.monotonic()
        if done is not None and not done.done():
            done.set_result(exchange)


class ConnectionSlot:
    """A virtual user's connection to one server: reused while the server keeps it alive."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.connection: HttpConnection | None = None

    async def connect(self) -> None:
        if self.connection is None or not self.connection.reusable:
            if self.connection is not None:
                self.connection.close()
            self.connection = await HttpConnection.open(self.host, self.port)

    async def exchange(self, request: bytes, timeout: float) -> Exchange:
        """Send a request and wait for the whole response (at most `timeout` seconds)."""
        try:
            await self.connect()
        except (OSError, TimeoutError) as exc:
            return Exchange(sent_at=time.monotonic(), error=f"connect failed: {exc!r}")
        assert self.connection is not None
        exchange, done = self.connection.send(request)
        try:
            async with asyncio.timeout(timeout):
                await done
        except TimeoutError:
            exchange.error = f"no complete response within {timeout:g} s"
            self.close()
        return exchange

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
