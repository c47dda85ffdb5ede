"""sim.proxy.TcpProxy against a plain TCP echo server."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from sim.proxy import TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, name="echo", daemon=True)
    t.start()
    try:
        yield "127.0.0.1", int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=5)


def test_forward_blackhole_cut(echo: tuple[str, int]) -> None:
    with TcpProxy(*echo) as proxy:
        a = connect(proxy)
        assert roundtrip(a, b"x" * 200_000) == b"x" * 200_000
        proxy.blackhole()
        a.settimeout(0.5)
        a.sendall(b"lost")
        with pytest.raises(TimeoutError):
            a.recv(10)  # silent, yet not closed: recv would return b"" on close
        proxy.forward()
        with pytest.raises(TimeoutError):
            a.recv(10)  # a blackholed connection stays dead
        b = connect(proxy)
        assert roundtrip(b, b"hello") == b"hello"  # new connections work again
        proxy.cut()
        b.settimeout(5)
        assert b.recv(10) == b""
        a.close()
        b.close()


def test_delay_adds_latency_both_ways(echo: tuple[str, int]) -> None:
    with TcpProxy(*echo) as proxy:
        proxy.delay(100)
        s = connect(proxy)
        t0 = time.monotonic()
        assert roundtrip(s, b"ping") == b"ping"
        assert time.monotonic() - t0 >= 0.2  # lower bound: 100 ms each way
        s.close()
