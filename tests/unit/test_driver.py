"""CoreDriver: input moves the clock first, a bug is counted and never escapes, the one loop timer
follows the scheduler's next deadline (on a virtual loop clock), output picks the socket."""

from __future__ import annotations

import pytest

from b2bua.driver import TIMER_SLACK_S, CoreDriver
from b2bua.metrics import Stats
from b2bua.sip.address import Address
from b2bua.sip.scheduler import Scheduler
from b2bua.transport.udp import UdpTransport

from .wire import CALLER, Wire, _Log


class Handle:
    def __init__(self, when: float, callback: object) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualLoop:
    """The two things the driver asks of an event loop: its clock and `call_at`."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.handles: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: object) -> Handle:
        self.handles.append(Handle(when, callback))
        return self.handles[-1]

    def fire(self, handle: Handle) -> None:
        self.now = handle.when
        handle.cancelled = True  # spent, as the loop drops a handle it has run
        handle.callback()  # type: ignore[operator]

    def live(self) -> list[float]:
        return [h.when for h in self.handles if not h.cancelled]


class Log(_Log):
    def exception(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))


def driver(now: float = 100.0) -> tuple[CoreDriver, VirtualLoop, Scheduler, Log]:
    loop, sched, log = VirtualLoop(now), Scheduler(0.0), Log()
    return CoreDriver(loop, sched, Stats(), log), loop, sched, log


def test_the_timer_moves_earlier_always_and_later_only_beyond_the_slack() -> None:
    d, loop, sched, _ = driver()
    late = sched.call_at(110.0, lambda: None)
    d.run(lambda: None)
    assert sched.now == 100.0 and loop.live() == [110.0]
    early = sched.call_at(105.0, lambda: None)
    d.arm_timer()
    assert loop.live() == [105.0]
    early.cancel()  # the next deadline is 110 now: far beyond the slack, so the timer moves
    d.arm_timer()
    assert loop.live() == [110.0]
    sched.call_at(110.0 - TIMER_SLACK_S / 2, lambda: None).cancel()
    sched.call_at(110.0 + TIMER_SLACK_S / 2, lambda: None)
    late.cancel()  # next deadline slightly later than the armed timer, within the slack: it stays
    d.arm_timer()
    assert loop.live() == [110.0]


def test_the_timer_fires_the_due_entries_and_is_dropped_when_nothing_waits() -> None:
    d, loop, sched, _ = driver()
    fired: list[float] = []
    sched.call_at(101.0, lambda: fired.append(sched.now))
    d.arm_timer()
    [handle] = loop.handles
    loop.fire(handle)
    assert fired == [101.0] and loop.live() == []


def test_an_exception_from_the_core_is_counted_logged_and_the_timer_still_armed() -> None:
    d, loop, sched, log = driver()
    sched.call_at(120.0, lambda: None)

    def bug() -> None:
        raise RuntimeError("a bug")

    d.run(bug, "api")
    assert d.stats.escaped_exceptions == 1
    assert log.events == [("escaped_exception", {"where": "api"})]
    assert loop.live() == [120.0]


def test_a_datagram_reaches_the_core_on_the_loops_clock() -> None:
    wire = Wire()
    loop = VirtualLoop(wire.sched.now + 5.0)
    d = CoreDriver(loop, wire.sched, Stats(), Log())
    d.core = wire.core
    d.on_data(b"OPTIONS sip:b2bua@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKdrv1\r\n"
              b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b2bua@127.0.0.1>\r\nCall-ID: drv1\r\n"
              b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", CALLER)
    [answer] = wire.responses(CALLER)
    assert answer.status == 200 and wire.sched.now == loop.now
    assert loop.live() == [wire.sched.next_deadline()]  # Timer J of the OPTIONS transaction


def test_send_picks_the_socket_of_the_address_family_and_refuses_what_it_has_not() -> None:
    d, *_ = driver()
    sent: list[tuple[bytes, tuple[str, int]]] = []

    class DatagramTransport:
        def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
            sent.append((data, addr))

    udp = d.udp[False] = UdpTransport(d.on_data)
    udp.connection_made(DatagramTransport())
    d.send(b"x", Address("udp", "127.0.0.1", 5060))
    assert sent == [(b"x", ("127.0.0.1", 5060))]
    with pytest.raises(OSError, match="address family"):
        d.send(b"x", Address("udp", "::1", 5060))
    with pytest.raises(OSError, match="tcp not available"):
        d.send(b"x", Address("tcp", "127.0.0.1", 5060))
