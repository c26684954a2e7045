"""A small HTTP/1.1 client for load generation: one keep-alive connection over asyncio.

httpx costs a few ms of CPU per request here (2.5-8 ms measured), so on 2 shared cores
a benchmark's own client took a quarter to two thirds of the CPU and its event loop
added its queueing to every latency it measured. This one parses only what our API
sends (status line, headers, a Content-Length or chunked body) and costs tens of µs
per request. Loopback, plain HTTP, no redirects, no proxies: a load generator, not a
general client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive connection to ``base`` (``http://host:port``), reopened when closed."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"http_lite speaks plain http://host:port only, got {base!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        fixed = {"Host": f"{self.host}:{self.port}", **(headers or {})}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, object] | None = None,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send one request and read its answer; a reused connection the server closed
        meanwhile is reopened and the request sent once more."""
        target = f"{path}?{urlencode(params)}" if params else path
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (
            f"{method} {target} HTTP/1.1\r\n{self._fixed}{extra}Content-Length: {len(body)}\r\n\r\n"
        )
        data = head.encode("latin-1") + body
        reused = self._writer is not None
        try:
            return await self._exchange(data)
        except (ConnectionError, asyncio.IncompleteReadError):
            await self.close()
            if not reused:
                raise
            return await self._exchange(data)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _exchange(self, data: bytes) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            sock = self._writer.get_extra_info("socket")
            # Without it, a body written after its headers can wait for a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._reader is not None
        self._writer.write(data)
        await self._writer.drain()
        response = await _read_response(self._reader)
        if response.headers.get("connection", "").lower() == "close":
            await self.close()
        return response


async def _read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return Response(status, headers, await _read_chunked(reader))
    length = int(headers.get("content-length", "0"))
    return Response(status, headers, await reader.readexactly(length) if length else b"")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers from our servers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
