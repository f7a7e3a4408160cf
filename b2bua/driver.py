"""The bridge between the event loop and the sans-IO core: input in, datagrams out, one loop timer.

How this works: every input reaches the core through `CoreDriver`: a SIP message from a socket
(`on_data`, the UDP and TCP transports' callback), and anything else the daemon or the control API
runs on the core (`run`). Each first moves the scheduler's clock to the loop's time, runs the core,
catches any exception escaping it, and then re-arms the loop's single timer at the scheduler's next
deadline (`arm_timer`). An escaped exception is a bug, never something a peer can cause on purpose:
it is counted in `b2bua_escaped_exceptions_total` and logged, and the tests fail when the counter is
not zero. What the core sends goes out through `send`, on the UDP socket of the destination's
address family or on TCP.

This runs for every datagram in and out, so it is compiled with the core (b2bua/native.py): as
interpreted Python, the hops from the socket to the core and back were about twenty Python calls
per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .core import Core
from .metrics import Stats
from .sip.address import Address
from .sip.scheduler import Scheduler
from .transport.udp import UdpTransport

# The loop timer is moved later only when it would fire more than this before anything is due.
TIMER_SLACK_S = 0.002


class CoreDriver:
    def __init__(self, loop: Any, scheduler: Scheduler, stats: Stats, log: Any) -> None:
        self.loop = loop
        self.scheduler = scheduler
        self.stats = stats
        self.log = log
        self.core: Core | None = None
        self.udp: dict[bool, UdpTransport] = {}  # by "is IPv6": one socket per address family
        self.tcp: Any = None  # the TcpTransport, once listening
        self._timer: Any = None  # the loop's TimerHandle
        self._timer_at: float | None = None

    # -- input --------------------------------------------------------------------------------

    def on_data(self, data: bytes, source: Address) -> None:
        """A SIP message from `source` (UDP datagram or TCP frame)."""
        core = self.core
        if core is None:
            return
        try:
            self.scheduler.advance(self.loop.time())
            core.receive(data, source)
        except Exception:
            self.stats.escaped_exceptions += 1
            self.log.exception("escaped_exception", source=str(source))
        self.arm_timer()

    def run(self, fn: Callable[[], object], where: str = "core") -> None:
        """Run `fn` on the core as input is run: clock moved first, exceptions caught, timer re-armed."""
        try:
            self.scheduler.advance(self.loop.time())
            fn()
        except Exception:
            self.stats.escaped_exceptions += 1
            self.log.exception("escaped_exception", where=where)
        self.arm_timer()

    def advance(self) -> None:
        self.scheduler.advance(self.loop.time())

    # -- output -------------------------------------------------------------------------------

    def send(self, data: bytes, dest: Address) -> None:
        if dest.transport == "udp":
            udp = self.udp.get(":" in dest.host)
            if udp is None:
                raise OSError(f"no UDP socket for the address family of {dest.host}")
            udp.send(data, dest)
        elif dest.transport == "tcp" and self.tcp is not None:
            self.tcp.send(data, dest)
        else:
            raise OSError(f"transport {dest.transport} not available")

    # -- the loop timer -----------------------------------------------------------------------

    def arm_timer(self) -> None:
        """Point the loop's one timer at the scheduler's next deadline. Moved earlier always; moved
        later only when it would wake the loop more than `TIMER_SLACK_S` before anything is due:
        most timers are cancelled before they fire (Timer A, E, the 2xx retransmission...), and
        a wake-up for a cancelled one costs a loop turn for nothing, while re-arming costs a
        microsecond or two. Within the slack the early timer stays."""
        deadline = self.scheduler.next_deadline()
        at = self._timer_at
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = None
            return
        if at is not None and at <= deadline <= at + TIMER_SLACK_S:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.scheduler.advance(self.loop.time())
        except Exception:
            self.stats.escaped_exceptions += 1
            self.log.exception("escaped_exception", where="timer")
        self.arm_timer()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
