"""The daemon: binds the sockets, drives the sans-IO core, serves HTTP, drains on SIGTERM.

How this works: `Daemon.run()` builds one `Scheduler` whose clock is the event loop's monotonic
time, one `Core`, the UDP and TCP transports for each listen address, and the HTTP server. Every
input reaches the core through the `CoreDriver` (driver.py), which first moves the clock and
afterwards re-arms the single loop timer at the scheduler's next deadline (a cancelled deadline does
not wake the loop). Any exception escaping the core is caught there, counted in
`b2bua_escaped_exceptions_total` and logged: it is a bug, never something a peer can cause on
purpose, and the tests fail when the counter is not zero. SIGTERM/SIGINT stop new calls (503),
wait up to `shutdown.drain_timeout_s` for active calls, hang up the rest, and exit 0.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from aiohttp import web

from . import allocator, collector, native
from .api import mount_api
from .collector import CollectOld
from .config import Settings, parse_hostport
from .core import Core
from .driver import CoreDriver
from .http import make_http_app
from .logs import get_logger
from .media.embedded import EmbeddedRelay
from .metrics import Stats, StatsCollector, make_registry
from .sip.address import Address
from .sip.scheduler import Scheduler
from .transport.tcp import TcpTransport
from .transport.udp import UdpTransport
from .trim import TrimAfterLoad


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = get_logger()
        self.stats = Stats()
        self.scheduler = Scheduler()
        self.core: Core | None = None
        self.driver: CoreDriver | None = None  # once the loop runs
        self._ng: dict[bool, UdpTransport] = {}  # media relay control sockets, by "is IPv6"
        self._relay: EmbeddedRelay | None = None
        self._tcp: TcpTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()

    # -- what the core needs besides SIP (the SIP path itself is the compiled CoreDriver) --------

    def _on_unsent(self, wires: list[bytes], dest: Address) -> None:
        core = self.core
        if core is not None:
            self._driver().run(lambda: core.undeliverable(wires, dest), "tcp")

    def _send_ng(self, data: bytes, dest: tuple[str, int]) -> None:
        sock = self._ng.get(":" in dest[0])
        if sock is None:
            raise OSError(f"no media control socket for the address family of {dest[0]}")
        sock.send(data, Address("udp", dest[0], dest[1]))

    def _on_ng(self, data: bytes, source: Address) -> None:
        core = self.core
        if core is not None:
            self._driver().run(lambda: core.receive_ng(data, (source.host, source.port)), "ng")

    def _driver(self) -> CoreDriver:
        assert self.driver is not None
        return self.driver

    def _check_buffer(self, udp: UdpTransport, asked: int, listen: str) -> None:
        """Warn when the kernel granted less receive buffer than configured (it doubles the
        value it grants, and caps it at net.core.rmem_max)."""
        granted = udp.buffer_size // 2
        if asked and granted < asked:
            self.log.warning("udp_receive_buffer_capped", listen=listen, asked=asked, granted=granted,
                             hint="raise net.core.rmem_max (sysctl) to at least the asked size")

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.stats.escaped_exceptions += 1
        self.log.error("loop_exception", message=context.get("message"), exc=repr(context.get("exception")))

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        loop.set_exception_handler(self._loop_exception)
        self.scheduler.now = loop.time()
        s = await self._start_media()
        driver = self.driver = CoreDriver(loop, self.scheduler, self.stats, self.log)
        self.core = driver.core = Core(s, self.scheduler, driver.send, self.log, self.stats, send_ng=self._send_ng)
        driver.run(self.core.start, "start")
        await self._wait_for_relays()
        self._tcp = driver.tcp = TcpTransport(driver.on_data, s.sip.max_message_bytes, s.sip.tcp_idle_timeout_s,
                                 on_unsent=self._on_unsent)
        for item in s.sip.listen:
            host, port = parse_hostport(item)
            if "udp" in s.sip.transports:
                udp = await UdpTransport.listen(host, port, driver.on_data, s.sip.udp_receive_buffer_bytes)
                self._check_buffer(udp, s.sip.udp_receive_buffer_bytes, item)
                driver.udp.setdefault(":" in host, udp)
            if "tcp" in s.sip.transports:
                await self._tcp.listen(host, port)
        runner = await self._start_http()
        collector.configure()
        old_generation = CollectOld(loop, self.log)
        old_generation.start()
        core = self.core
        trim = TrimAfterLoad(loop, self.log, lambda: core.load, core.compact)
        trim.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self.log.info("started", listen=s.sip.listen, transports=s.sip.transports,
                      next_hop=s.routing.next_hop, http=s.http.listen,
                      media_relays=s.media.relays if s.media.enabled else "off",
                      allocator=allocator.current(), native=native.state())
        await self._stopping.wait()
        await self._drain()
        old_generation.stop()
        trim.stop()
        await runner.cleanup()
        driver.run(self.core.stop, "shutdown")
        driver.close()
        for udp in (*driver.udp.values(), *self._ng.values()):
            udp.close()
        await self._tcp.close()
        if self._relay is not None:
            await self._relay.stop()
        self.log.info("stopped", escaped_exceptions=self.stats.escaped_exceptions)
        return 0

    async def _start_media(self) -> Settings:
        """Start the embedded relay when media is on and no relay is configured; open ng sockets."""
        s = self.settings
        if not s.media.enabled:
            return s
        if not s.media.relays:
            self._relay = EmbeddedRelay(s.media, self.log, s.log.level)
            host, port = await self._relay.start(s.sip.udp_receive_buffer_bytes)
            s = s.model_copy(update={"media": s.media.model_copy(update={"relays": [f"{host}:{port}"]})})
            self.settings = s
        for relay in s.media.relays:
            v6 = ":" in parse_hostport(relay, 2223)[0]
            if v6 not in self._ng:
                self._ng[v6] = await UdpTransport.listen("::" if v6 else "0.0.0.0", 0, self._on_ng,
                                                         s.sip.udp_receive_buffer_bytes)
        return s

    async def _wait_for_relays(self, timeout: float = 10.0) -> None:
        """Accept calls once a relay answers (an embedded one needs a moment to start Python)."""
        core = self.core
        assert core is not None and self._loop is not None
        if core.relays is None:
            return
        deadline = self._loop.time() + timeout
        while core.relays.alive_count == 0 and self._loop.time() < deadline:
            await asyncio.sleep(0.05)
        if core.relays.alive_count == 0:
            self.log.warning("no_media_relay", relays=[r.name for r in core.relays.relays],
                             consequence="new calls get 503 until a relay answers")

    async def _start_http(self) -> web.AppRunner:
        core = self.core
        assert core is not None
        tl = core.tl
        collector = StatsCollector(
            self.stats,
            gauges=lambda: {
                "b2bua_active_calls": ("Calls in progress", core.active_calls),
                "b2bua_media_relays_alive": ("Media relays answering", core.relays.alive_count if core.relays else 0),
                "b2bua_media_sessions": ("Calls with media on a relay",
                                         sum(r.sessions for r in core.relays.relays) if core.relays else 0),
                "b2bua_transactions": ("Live SIP transactions", len(tl)),
                "b2bua_tcp_connections": ("Open SIP TCP connections", self._tcp.connections if self._tcp else 0),
                "b2bua_api_event_streams": ("Open /v1/events streams", len(api.hub.clients) if api else 0),
            },
            counters=lambda: {
                "b2bua_sip_retransmissions": ("SIP retransmissions sent", tl.retransmissions),
                "b2bua_transaction_timeouts": ("SIP transactions timed out", tl.timeouts),
                "b2bua_ng_requests": ("Media relay control requests sent", core.ng.requests if core.ng else 0),
                "b2bua_ng_retransmissions": ("Media relay control requests retransmitted",
                                             core.ng.retransmissions if core.ng else 0),
                "b2bua_ng_timeouts": ("Media relay control requests never answered",
                                      core.ng.timeouts if core.ng else 0),
                "b2bua_embedded_relay_restarts": ("Times the embedded relay process was restarted",
                                                  self._relay.restarts if self._relay else 0),
                "b2bua_api_event_streams_dropped": ("/v1/events clients dropped for falling behind",
                                                    api.hub.dropped if api else 0),
            },
        )
        registry = make_registry(collector)
        app = make_http_app(registry, healthy=lambda: core.accepting)
        loop = self._loop
        assert loop is not None
        # The control API under /v1, on this loop; its actions enter the core like SIP input does.
        api = mount_api(app, core, self.settings, self.log, self.stats,
                        advance=self._driver().advance, rearm=self._driver().arm_timer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = parse_hostport(self.settings.http.listen, 9090)
        await web.TCPSite(runner, host, port).start()
        return runner

    async def _drain(self) -> None:
        core = self.core
        assert core is not None and self._loop is not None
        core.stop_accepting()
        timeout = self.settings.shutdown.drain_timeout_s
        self.log.info("draining", active_calls=core.active_calls, timeout_s=timeout)
        deadline = self._loop.time() + timeout
        while core.active_calls and self._loop.time() < deadline:
            await asyncio.sleep(0.1)
        if core.active_calls:
            self.log.warning("drain_timeout", active_calls=core.active_calls)
            self._driver().run(lambda: core.hangup_all("daemon shutting down"), "shutdown")
            # Give the BYEs a moment to be answered; the calls end as their BYEs complete.
            end = self._loop.time() + 2.0
            while core.active_calls and self._loop.time() < end:
                await asyncio.sleep(0.05)

