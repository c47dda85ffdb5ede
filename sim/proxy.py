"""A TCP proxy on loopback under test control: forward, blackhole, delay, cut.

It runs its own asyncio loop in one background thread, so sync tests, async tests and
benchmarks can all drive it through plain method calls:

- :meth:`TcpProxy.forward`: pass bytes both ways (the default).
- :meth:`TcpProxy.blackhole`: a half-open link. Every connection open now, and every
  one accepted until :meth:`forward`, goes silent: bytes are read and discarded in both
  directions and nothing is closed, like a cellular link whose NAT mapping vanished.
  Those connections stay dead after :meth:`forward`; new ones work.
- :meth:`TcpProxy.delay`: add ``ms`` of latency in each direction (RTT + 2 x ms)
  without limiting throughput (chunks are timestamped and released in order).
- :meth:`TcpProxy.cut`: close every open connection (new ones are still accepted).
- ``record=True``: keep what each client sent, one ``bytearray`` per connection in
  :attr:`TcpProxy.sent` (to look at the packets a client put on the wire).

Run stand-alone for manual chaos: ``python -m sim.proxy --target 127.0.0.1:1883``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from types import TracebackType

from config.errors import SimError

log = logging.getLogger(__name__)

CHUNK = 65536


class _Pipe:
    """One direction of one connection."""

    def __init__(self, proxy: TcpProxy, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, conn: _Conn,
                 record: bytearray | None = None) -> None:
        self.proxy = proxy
        self.record = record
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.queue: deque[tuple[float, bytes]] = deque()
        self.ready = asyncio.Event()

    async def pump_in(self) -> None:
        while True:
            data = await self.reader.read(CHUNK)
            if not data:
                self.queue.append((0.0, b""))
                self.ready.set()
                return
            if self.conn.dead:
                continue  # blackholed: swallow
            self.proxy.bytes_forwarded += len(data)
            if self.record is not None:
                self.record += data
            self.queue.append((time.monotonic() + self.proxy.delay_s, data))
            self.ready.set()

    async def pump_out(self) -> None:
        while True:
            while not self.queue:
                self.ready.clear()
                await self.ready.wait()
            due, data = self.queue.popleft()
            if not data:
                with contextlib.suppress(OSError):
                    self.writer.write_eof()
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.conn.dead:
                continue
            self.writer.write(data)
            await self.writer.drain()


class _Conn:
    def __init__(self) -> None:
        self.dead = False
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for w in self.writers:
            w.close()


class TcpProxy:
    """Listens on ``listen_host:port`` (port 0 = free) and forwards to ``target``."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0, record: bool = False) -> None:
        self.target = (target_host, target_port)
        self.record = record
        #: with ``record``: the bytes each client sent, one entry per connection
        self.sent: list[bytearray] = []
        self.host = listen_host
        self.port = listen_port
        self.delay_s = 0.0
        self.mode = "forward"
        self.bytes_forwarded = 0
        self.accepted = 0
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------- control (any thread)

    def start(self) -> TcpProxy:
        """Start the proxy thread and wait until it listens."""
        self._thread = threading.Thread(target=self._main, name="truckgw-tcp-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise SimError(f"proxy did not start: {self._error!r}")
        return self

    def close(self) -> None:
        """Close every connection and the listener; join the thread."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._thread = None

    def forward(self) -> None:
        """Forward new connections normally (connections blackholed earlier stay dead)."""
        self._call(self._set_mode, "forward")

    def blackhole(self) -> None:
        """Silently swallow all traffic of open and new connections; close nothing."""
        self._call(self._set_mode, "blackhole")

    def delay(self, ms: float) -> None:
        """Add ``ms`` milliseconds of latency in each direction (0 removes it)."""
        self.delay_s = ms / 1000.0

    def cut(self) -> None:
        """Close every open connection now."""
        self._call(self._cut)

    @property
    def connections(self) -> int:
        """Connections currently open through the proxy."""
        return len(self._conns)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<TcpProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} "
                f"{self.mode} delay={self.delay_s * 1000:.0f}ms conns={len(self._conns)}>")

    # ------------------------------------------------------------- loop side

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None:
            raise SimError("proxy is not running")
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        done.wait(5)

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "blackhole":
            for c in self._conns:
                c.dead = True

    def _cut(self) -> None:
        for c in list(self._conns):
            c.close()
        self._conns.clear()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            self._server.close()
            self._cut()
            await asyncio.sleep(0)
            await self._server.wait_closed()

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.accepted += 1
        conn = _Conn()
        conn.dead = self.mode == "blackhole"
        conn.writers.append(cwriter)
        self._conns.add(conn)
        try:
            if conn.dead:
                # never reach the target: swallow what the client sends until it gives up
                while await creader.read(CHUNK):
                    pass
                return
            try:
                sreader, swriter = await asyncio.open_connection(*self.target)
            except OSError:
                return
            conn.writers.append(swriter)
            rec = None
            if self.record:
                rec = bytearray()
                self.sent.append(rec)
            up = _Pipe(self, creader, swriter, conn, rec)
            down = _Pipe(self, sreader, cwriter, conn)
            conn.tasks = [asyncio.ensure_future(_guard(p, conn)) for p in
                          (up.pump_in(), up.pump_out(), down.pump_in(), down.pump_out())]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(conn)
            conn.close()


async def _guard(pump: Coroutine[None, None, None], conn: _Conn) -> None:
    """A pump that fails (reset, broken pipe) takes its whole connection down."""
    try:
        await pump
    except OSError:
        conn.close()


def main() -> None:
    """``python -m sim.proxy --target HOST:PORT [--listen HOST:PORT] [--delay-ms N]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    th, tp = args.target.rsplit(":", 1)
    lh, lp = args.listen.rsplit(":", 1)
    proxy = TcpProxy(th, int(tp), listen_host=lh, listen_port=int(lp))
    proxy.delay(args.delay_ms)
    with proxy:
        print(f"proxy {proxy.host}:{proxy.port} -> {args.target}; Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
