"""A TCP proxy a fault test controls: clients talk to a server through it, and the test
takes the server away, partitions the link, slows it or resets its connections.

- :meth:`TcpProxy.down`: as if the server had crashed: every open connection is reset
  and new ones are reset as soon as they arrive;
- :meth:`TcpProxy.partition`: as if a cable were cut: open connections stay open but
  nothing crosses, new ones connect and hear nothing (packets dropped, no reset);
  :meth:`TcpProxy.up` delivers what waited, as TCP does after a short partition;
- ``delay_s``: each chunk waits that long before it is passed on (a slow link);
- :meth:`TcpProxy.reset_connections`: resets what is open now and lets new ones through.

Threads, one pair per connection: enough for the few connections of a fault test.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Literal

State = Literal["up", "down", "partition"]


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN, as a crashed peer's kernel answers.

    A thread blocked in ``recv`` on the socket holds it open past ``close()``; shutting
    its reading down first wakes that thread, and the last close then sends the RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Listens on 127.0.0.1:``port`` and forwards to ``host``:``target_port``."""

    def __init__(self, target_port: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (host, target_port)
        self.delay_s = 0.0
        self.connections_made = 0
        self._state: State = "up"
        self._resume = threading.Condition()
        self._open: set[socket.socket] = set()
        self._closed = False
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- what the test does ----------------------------------------------------------

    def down(self) -> None:
        self._set("down")
        self.reset_connections()

    def partition(self) -> None:
        self._set("partition")

    def up(self) -> None:
        self._set("up")

    def reset_connections(self) -> int:
        with self._resume:
            doomed, self._open = self._open, set()
        for sock in doomed:
            _reset(sock)
        return len(doomed)

    def close(self) -> None:
        self._closed = True
        self._set("up")
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset_connections()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the forwarding --------------------------------------------------------------

    def _set(self, state: State) -> None:
        with self._resume:
            self._state = state
            self._resume.notify_all()

    def _passable(self) -> bool:
        """Wait out a partition; False when the link is down (or the proxy closed)."""
        with self._resume:
            self._resume.wait_for(lambda: self._state != "partition" or self._closed)
            return self._state == "up" and not self._closed

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._passable():
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            self.connections_made += 1
            with self._resume:
                self._open.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            for chunk in _chunks(src):
                if self.delay_s:
                    time.sleep(self.delay_s)
                if not self._passable():
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with self._resume:
                    self._open.discard(sock)
                if self._state == "down":
                    _reset(sock)
                else:
                    sock.close()


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while chunk := sock.recv(65536):
        yield chunk
