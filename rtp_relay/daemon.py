"""The relay daemon: binds the control socket, opens media sockets, sweeps once a second, exits 0.

How this works: `RelayDaemon.run()` builds the sans-IO `Relay` with a `SocketOpener` that binds
each RTP/RTCP port synchronously (so an `offer` is answered only with ports really held) and hands
its descriptor to the `Dispatcher`, one epoll set of all media sockets that the loop watches as a
single descriptor; a ready socket's `RelayPort.readable` forwards what waits there (forwarder.py).
The opener also gives RTP ports their connected twins, within a budget of file descriptors
(`twin_budget`) that always leaves room for every port of the range. The ng `ControlProtocol`
feeds requests to the relay, a one second loop timer runs `relay.tick()` (last activity, media
timeouts, expiry), and an optional aiohttp server answers `/metrics` and `/healthz`. An exception
escaping into the loop (from a media callback, say) is a bug: the loop's exception handler logs
and counts it in `escaped_exceptions`. The control socket is either bound here (`--control`) or
inherited already bound from a parent (`--control-fd`, see `inherited_control`). SIGTERM or
SIGINT, or with `--exit-with-parent` the parent's exit (parent.py), releases every call, checks
the port allocator for leaks, closes the sockets and returns 0.
"""

from __future__ import annotations

import asyncio
import random
import resource
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from b2bua.logs import get_logger

from .config import RelaySettings
from .control import ControlCore, ControlProtocol
from .forwarder import HAVE_MMSG, RelayPort
from .metrics import RelayCollector, make_registry, render
from .parent import ParentWatch
from .ports import PortAllocator
from .session import CallExpired, MediaTimedOut, Relay, RelayConfig

TICK_S = 1.0
MAX_EVENTS = 256  # ready sockets served per loop callback (each up to forwarder.BATCH datagrams)
FD_RESERVE = 64  # descriptors kept for everything but media ports: control, HTTP, logs


class Dispatcher:
    """Every media socket in one epoll set, which the loop watches as a single descriptor.

    The loop's own dispatch per descriptor (a handle run per ready socket) cost more than the
    reader's Python call does: here one loop callback serves up to MAX_EVENTS ready sockets with a
    list index and a call each. Level-triggered: a socket that still holds datagrams after its
    reader took forwarder.BATCH of them is reported again next time, after the others.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll() if hasattr(select, "epoll") else None  # elsewhere: the loop's own
        self.readers: list[Callable[[int], None] | None] = []  # by descriptor: denser than a dict
        if self.epoll is not None:
            loop.add_reader(self.epoll.fileno(), self.ready)

    def add(self, fd: int, reader: Callable[[int], None]) -> None:
        if self.epoll is None:
            self.loop.add_reader(fd, reader, fd)
            return
        if fd >= len(self.readers):
            self.readers.extend([None] * (fd + 1 - len(self.readers)))
        self.readers[fd] = reader
        self.epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        if self.epoll is None:
            self.loop.remove_reader(fd)
            return
        if fd < len(self.readers) and self.readers[fd] is not None:
            self.readers[fd] = None
            self.epoll.unregister(fd)

    def ready(self) -> None:
        readers = self.readers
        for fd, _ in self.epoll.poll(0, MAX_EVENTS):  # type: ignore[union-attr]
            reader = readers[fd]
            if reader is not None:
                reader(fd)

    def close(self) -> None:
        if self.epoll is not None:
            self.loop.remove_reader(self.epoll.fileno())
            self.epoll.close()


class SocketOpener:
    """Binds relay ports for the sans-IO Relay and has the loop watch them; gives RTP ports twins.

    A twin (see forwarder.py) is a second descriptor: at most `max_twins` exist at a time, so that
    twins can never take the descriptors a new call's ports need.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, max_twins: int = 0) -> None:
        self.loop = loop
        self.host = host
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.max_twins = max_twins if HAVE_MMSG and hasattr(socket, "SO_REUSEPORT") else 0
        self.twins_open = 0
        self.dispatcher = Dispatcher(loop)

    def open(self, rtp: RelayPort, rtcp: RelayPort) -> None:
        socks: list[socket.socket] = []
        try:
            for port in (rtp, rtcp):
                sock = socket.socket(self.family, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.setblocking(False)
                sock.bind((self.host, port.port))
        except OSError:
            for sock in socks:
                sock.close()
            raise
        for port, sock in zip((rtp, rtcp), socks, strict=True):
            port.attach(sock)
            self.dispatcher.add(sock.fileno(), port.readable)
        if self.max_twins:
            rtp.twins = self  # RTCP carries too few packets to be worth a descriptor

    def open_twin(self, port: RelayPort) -> socket.socket | None:
        first = port.sock
        if self.twins_open >= self.max_twins or first is None:
            return None
        twin = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            twin.setblocking(False)
            # Both sockets must allow sharing the port while the twin binds, and neither does after
            # it: no third socket can join the port (of this process, or another of the same user).
            first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                twin.bind((self.host, port.port))
                twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
            finally:
                first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
        except OSError:
            twin.close()
            return None
        self.dispatcher.add(twin.fileno(), port.readable)
        self.twins_open += 1
        return twin

    def close_twin(self, sock: socket.socket) -> None:
        self.dispatcher.remove(sock.fileno())
        sock.close()
        self.twins_open -= 1

    def close(self, port: RelayPort) -> None:
        """Stop watching `port`'s socket; RelayPort.close() closes it (and its twin, through us)."""
        if port.sock is not None:
            self.dispatcher.remove(port.sock.fileno())


def twin_budget(pairs: int) -> int:
    """How many twins fit beside every port of a range of `pairs` port pairs, within RLIMIT_NOFILE."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY:
        return pairs
    return max(0, min(pairs, soft - 2 * pairs - FD_RESERVE))


def inherited_control(fd: int) -> socket.socket:
    """The ng socket a parent bound and passed down as `fd`; OSError unless it is a bound UDP socket."""
    sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
    try:
        if sock.type != socket.SOCK_DGRAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"control fd {fd} is not a UDP socket")
        if sock.getsockname()[1] == 0:
            raise OSError(f"control fd {fd} is not bound")
        sock.setblocking(False)
    except OSError:
        sock.detach()  # not ours to close
        raise
    return sock


class RelayDaemon:
    def __init__(self, settings: RelaySettings, parent: ParentWatch | None = None) -> None:
        self.settings = settings
        self.parent = parent
        self.log = get_logger("rtp_relay")
        self.escaped_exceptions = 0
        self.relay: Relay | None = None
        self._stopping = asyncio.Event()

    def _on_escaped(self, exc: BaseException) -> None:
        self.escaped_exceptions += 1
        self.log.error("escaped_exception", error=repr(exc))

    async def run(self) -> int:
        s = self.settings
        loop = asyncio.get_running_loop()
        low, high = s.port_range
        allocator = PortAllocator(low, high, start_at=random.randrange(low, high + 1))
        opener = SocketOpener(loop, s.address, max_twins=twin_budget(allocator.capacity))
        relay = Relay(RelayConfig(s.sdp_address, s.media_timeout, s.hold_timeout, s.timeout_delete),
                      allocator, opener)
        relay.wall_offset = time.time() - loop.time()
        loop.set_exception_handler(self._on_loop_exception)
        # Before anything can answer: a SIGTERM (e.g. the parent's death signal) that arrives while
        # we start must stop us gracefully, not kill us with ports held and nothing logged.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self.relay = relay
        core = ControlCore(relay)
        def control_protocol() -> ControlProtocol:
            return ControlProtocol(core, loop, self._on_escaped)

        if s.control_fd is not None:
            control_sock = inherited_control(s.control_fd)
            control_transport, _ = await loop.create_datagram_endpoint(control_protocol, sock=control_sock)
        else:
            control_transport, _ = await loop.create_datagram_endpoint(control_protocol, local_addr=s.control_addr)
        control_host, control_port = control_transport.get_extra_info("sockname")[:2]
        control_name = f"[{control_host}]:{control_port}" if ":" in control_host else f"{control_host}:{control_port}"
        runner: web.AppRunner | None = None
        if s.http_addr is not None:
            registry = make_registry(RelayCollector(relay, core, lambda: self.escaped_exceptions))
            runner = await self._start_http(registry, relay)
        ticker = loop.call_later(TICK_S, self._tick, loop)
        self._ticker = ticker
        self.log.info("relay_started", control=control_name, control_fd=s.control_fd,
                      address=s.address, advertised=s.sdp_address, ports=s.ports, http=s.http,
                      media_timeout=s.media_timeout,
                      exit_with_parent=None if self.parent is None else
                      ("prctl" if self.parent.signalled else "poll"))
        self._check_parent()
        await self._stopping.wait()
        self._ticker.cancel()
        control_transport.close()
        released = relay.shutdown()
        leak = ""
        try:
            allocator.check()
        except AssertionError as exc:
            leak = str(exc)
        opener.dispatcher.close()
        await asyncio.sleep(0)  # let transports finish closing
        if runner is not None:
            await runner.cleanup()
        self.log.info("relay_stopped", ports_released=released, ports_in_use=allocator.ports_in_use,
                      leak=leak or None, escaped_exceptions=self.escaped_exceptions + relay.internal_errors)
        # Stopped cleanly: a second SIGTERM (a supervisor or parent repeating itself) that arrives
        # while the interpreter winds down must not turn exit status 0 into death by signal. The
        # loop would restore the default action when it closes; ignoring them from here on wins.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        return 0

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self._on_escaped(exc if exc is not None else RuntimeError(str(context.get("message"))))

    def _check_parent(self) -> None:
        if self.parent is not None and not self._stopping.is_set() and self.parent.gone():
            self.log.info("parent_exited", parent_pid=self.parent.parent_pid)
            self._stopping.set()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.relay is not None
        self._check_parent()
        try:
            for event in self.relay.tick(loop.time()):
                if isinstance(event, MediaTimedOut):
                    self.log.info("media_timeout", call_id=event.call_id)
                elif isinstance(event, CallExpired):
                    self.log.info("call_expired", call_id=event.call_id, ports_released=event.ports_released)
        except Exception as exc:
            self._on_escaped(exc)
        self._ticker = loop.call_later(TICK_S, self._tick, loop)

    async def _start_http(self, registry: Any, relay: Relay) -> web.AppRunner:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=render(registry), headers={"Content-Type": "text/plain; version=0.0.4"})

        async def healthz(_: web.Request) -> web.Response:
            if self._stopping.is_set():
                return web.json_response({"status": "stopping"}, status=503)
            return web.json_response({"status": "ok", "sessions": len(relay.calls)})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = self.settings.http_addr  # type: ignore[misc]
        await web.TCPSite(runner, host, port).start()
        return runner
