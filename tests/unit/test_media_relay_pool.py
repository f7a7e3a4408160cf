"""RelayPool over real relays on the fake wire: health, failover, balancing, verdicts, cleanup."""

from __future__ import annotations

from typing import Any

import pytest

from b2bua.media.relay_pool import Relay, RelayPool

from .test_media_ng_client import R1, R2, R3, FakeWire, offer


class Pool:
    """A FakeWire with three relays and a RelayPool whose callbacks log (event, relay name, time)."""

    def __init__(self, relays: tuple[tuple[str, int], ...] = (R1, R2, R3), ping_interval: float = 2.0) -> None:
        self.wire = FakeWire(relays)
        self.scheduler = self.wire.scheduler
        self.events: list[tuple[str, str, float]] = []
        self.pool = RelayPool(self.wire.client, self.scheduler, list(relays),
                              on_relay_down=lambda r: self.events.append(("down", r.name, self.scheduler.now)),
                              on_relay_up=lambda r: self.events.append(("up", r.name, self.scheduler.now)),
                              ping_interval=ping_interval)

    @property
    def r1(self) -> Relay:
        return self.pool.relays[0]

    @property
    def r2(self) -> Relay:
        return self.pool.relays[1]

    @property
    def r3(self) -> Relay:
        return self.pool.relays[2]

    def command(self, relay: Relay, message: dict[str, Any]) -> list[tuple[float, dict[str, Any] | None, str | None]]:
        calls: list[tuple[float, dict[str, Any] | None, str | None]] = []

        def done(reply: dict[str, Any] | None, error: str | None) -> None:
            self.events.append(("done", relay.name, self.scheduler.now))
            calls.append((self.scheduler.now, reply, error))

        self.pool.command(relay, message, done)
        return calls

    def pings(self, addr: tuple[str, int]) -> int:
        return self.wire.cores[addr].relay.commands[("ping", "ok")]


@pytest.fixture
def p() -> Pool:
    return Pool()


# -- health ----------------------------------------------------------------------------------------


def test_relays_start_unknown_and_come_up_on_the_first_pong(p: Pool) -> None:
    assert [r.name for r in p.pool.relays] == ["127.0.0.1:2223", "127.0.0.2:2223", "127.0.0.3:2223"]
    assert [r.address for r in p.pool.relays] == [R1, R2, R3]
    assert p.pool.alive_count == 0 and p.pool.pick() is None
    p.pool.start()
    assert p.events == [("up", "127.0.0.1:2223", 0.0), ("up", "127.0.0.2:2223", 0.0), ("up", "127.0.0.3:2223", 0.0)]
    assert p.pool.alive_count == 3 and [p.pings(a) for a in (R1, R2, R3)] == [1, 1, 1]
    p.scheduler.advance(6.0)
    assert [p.pings(a) for a in (R1, R2, R3)] == [4, 4, 4]  # at 0, 2, 4, 6
    assert len(p.events) == 3  # staying alive is not news
    p.pool.stop()
    p.scheduler.advance(20.0)
    assert [p.pings(a) for a in (R1, R2, R3)] == [4, 4, 4] and len(p.scheduler) == 0
    p.pool.start()
    assert [p.pings(a) for a in (R1, R2, R3)] == [5, 5, 5]


def test_start_twice_does_not_double_the_pings(p: Pool) -> None:
    p.pool.start()
    p.pool.start()
    p.scheduler.advance(2.0)
    assert p.pings(R1) == 2


def test_pings_are_not_stacked_on_a_silent_relay() -> None:
    p = Pool(relays=(R1,), ping_interval=1.0)
    p.wire.dead.add(R1)
    p.pool.start()
    p.scheduler.advance(8.0)
    # ping at 0 (+0.5, +1.5 retransmissions, given up at 3.5); ticks at 1, 2, 3 find it in flight;
    # the tick at 4 sends the next one (+0.5, +1.5, gives up at 7.5); the tick at 8 the third
    assert p.wire.times_sent(R1) == [0.0, 0.5, 1.5, 4.0, 4.5, 5.5, 8.0]
    assert p.wire.client.in_flight == 1


def test_relay_dead_from_the_start_is_down_without_on_relay_down() -> None:
    p = Pool(relays=(R1, R2))
    p.wire.dead.add(R2)
    p.pool.start()
    p.scheduler.advance(3.5)
    assert p.r2.alive is False and p.r2.failures == 1
    assert p.events == [("up", "127.0.0.1:2223", 0.0)]  # never alive, so no calls to hang up
    p.scheduler.advance(20.0)
    assert p.r2.failures == 1  # one verdict per outage
    p.wire.dead.clear()
    # the ping of 20.0 was sent before the revival; its first retransmission gets through
    p.scheduler.advance(22.0)
    assert p.events[-1] == ("up", "127.0.0.2:2223", 20.5) and p.r2.alive and p.pool.alive_count == 2


def test_killed_relay_goes_down_once_is_skipped_and_comes_back(p: Pool) -> None:
    p.pool.start()
    p.events.clear()
    p.wire.dead.add(R2)  # killed just after the pings of 0.0
    p.scheduler.advance(5.49)
    assert p.r2.alive and p.events == []  # the ping of 2.0 has not been given up yet
    p.scheduler.advance(5.5)
    assert p.events == [("down", "127.0.0.2:2223", 5.5)]
    assert not p.r2.alive and p.r2.failures == 1 and p.pool.alive_count == 2
    picks = [p.pool.pick() for _ in range(6)]
    assert picks == [p.r1, p.r3, p.r1, p.r3, p.r1, p.r3]

    p.scheduler.advance(31.0)
    assert p.events == [("down", "127.0.0.2:2223", 5.5)]  # still one, though every ping fails
    assert p.r2.failures == 1
    # dead relays keep being pinged: 26.0 (+0.5, +1.5, given up at 29.5), then 30.0 (+0.5)
    assert p.wire.times_sent(R2)[-5:] == [26.0, 26.5, 27.5, 30.0, 30.5]
    p.wire.dead.clear()
    # the ping of 30.0 was lost; its retransmission at 31.5 reaches the revived relay
    p.scheduler.advance(31.5)
    assert p.events[-1] == ("up", "127.0.0.2:2223", 31.5) and p.r2.alive
    p.pool.session_started(p.r1)
    p.pool.session_started(p.r3)
    assert p.pool.pick() is p.r2  # back in use, and the least loaded


def test_any_reply_to_a_command_brings_an_unknown_relay_up(p: Pool) -> None:
    calls = p.command(p.r1, {"command": "query", "call-id": "nope"})
    assert calls == [(0.0, {"result": "error", "error-reason": "Unknown call-id"}, "Unknown call-id")]
    assert p.r1.alive and p.events == [("up", "127.0.0.1:2223", 0.0), ("done", "127.0.0.1:2223", 0.0)]


# -- choice ----------------------------------------------------------------------------------------


def test_pick_prefers_fewest_sessions_and_rotates_through_ties(p: Pool) -> None:
    p.pool.start()
    r1, r2, r3 = p.r1, p.r2, p.r3
    assert [p.pool.pick() for _ in range(4)] == [r1, r2, r3, r1]
    for r in (r1, r1, r2):
        p.pool.session_started(r)
    assert [r.sessions for r in (r1, r2, r3)] == [2, 1, 0]
    assert [p.pool.pick() for _ in range(3)] == [r3, r3, r3]
    p.pool.session_started(r3)
    assert [p.pool.pick() for _ in range(4)] == [r2, r3, r2, r3]
    assert p.pool.pick(exclude=[r2, r3]) is r1
    assert p.pool.pick(exclude={r2}) is r3
    assert p.pool.pick(exclude=(r1, r2, r3)) is None
    p.pool.session_ended(r1)
    p.pool.session_ended(r1)
    p.pool.session_ended(r1)  # one too many: clamped
    assert r1.sessions == 0 and p.pool.pick() is r1


def test_relays_compare_by_identity() -> None:
    a, b = Relay(R1, "127.0.0.1:2223"), Relay(R1, "127.0.0.1:2223")
    assert a != b and len({a, b}) == 2


def test_ipv6_relay_name() -> None:
    p = Pool(relays=())
    pool = RelayPool(p.wire.client, p.scheduler, [("::1", 2223)], on_relay_down=lambda r: None)
    assert pool.relays[0].name == "[::1]:2223"


# -- commands --------------------------------------------------------------------------------------


def test_command_verdicts_through_the_real_relay(p: Pool) -> None:
    p.pool.start()
    [(_, reply, error)] = p.command(p.r1, offer("c1"))
    assert error is None and reply is not None and isinstance(reply["sdp"], bytes)
    assert b"c=IN IP4 203.0.113.1\r\n" in reply["sdp"]
    [(_, reply, error)] = p.command(p.r1, {"command": "ping"})
    assert reply == {"result": "pong"} and error is None
    [(_, reply, error)] = p.command(p.r1, {"command": "answer", "call-id": "zz", "from-tag": "a", "to-tag": "b",
                                           "sdp": b"v=0\r\n"})
    assert error == "Unknown call-id" and reply == {"result": "error", "error-reason": "Unknown call-id"}
    [(_, reply, error)] = p.command(p.r1, {"command": "delete", "call-id": "c1"})
    assert error is None and reply is not None and reply["result"] == "ok"


@pytest.mark.parametrize("body, error", [
    ({"result": "load limit"}, "unexpected result 'load limit'"),
    ({"x": 1}, "unexpected result None"),
    ({"result": "error"}, "relay answered error without a reason"),
])
def test_command_odd_replies(p: Pool, body: dict[str, Any], error: str) -> None:
    p.wire.tamper = lambda r: body
    [(_, reply, got)] = p.command(p.r1, {"command": "ping"})
    assert got == error and reply is not None


def test_command_to_a_dead_relay_declares_it_down_then_reports(p: Pool) -> None:
    p.pool.start()
    p.events.clear()
    p.wire.dead.add(R1)
    calls = p.command(p.r1, offer("c1"))
    p.scheduler.advance(3.49)
    assert calls == [] and p.r1.alive
    p.scheduler.advance(3.5)
    assert calls == [(3.5, None, "relay 127.0.0.1:2223 did not answer")]
    # the relay is down before the caller hears of the failure
    assert p.events == [("down", "127.0.0.1:2223", 3.5), ("done", "127.0.0.1:2223", 3.5)]
    assert p.r1.failures == 1
    # a second command to the relay now down fails the same way, without a second down
    calls = p.command(p.r1, {"command": "delete", "call-id": "c1"})
    p.scheduler.advance(7.0)
    assert calls == [(7.0, None, "relay 127.0.0.1:2223 did not answer")]
    assert [e for e in p.events if e[0] == "down"] == [("down", "127.0.0.1:2223", 3.5)]


def test_raising_on_relay_down_still_ends_the_command() -> None:
    p = Pool(relays=(R1,))

    def boom(relay: Relay) -> None:
        raise RuntimeError("hang-up failed")

    p.pool.on_relay_down = boom
    p.pool.start()
    p.wire.dead.add(R1)
    calls = p.command(p.r1, {"command": "ping"})
    with pytest.raises(RuntimeError):
        p.scheduler.advance(1.0 + 3.5)
    assert calls == [(3.5, None, "relay 127.0.0.1:2223 did not answer")]
    assert not p.r1.alive and p.r1.failures == 1 and p.wire.client.in_flight == 1  # the ping of 2.0


# -- cleanup ---------------------------------------------------------------------------------------


def calls_on(p: Pool, addr: tuple[str, int]) -> list[str]:
    return sorted(p.wire.cores[addr].relay.calls)


def test_cleanup_deletes_only_prefixed_call_ids(p: Pool) -> None:
    for addr, call_id in ((R1, "b2b-1-a"), (R1, "b2b-1-b"), (R1, "b2b-10-x"), (R1, "other"), (R2, "b2b-1-c"),
                          (R3, "xb2b-1-d")):
        assert p.wire.run(offer(call_id), addr)[0][1]["result"] == "ok"  # type: ignore[index]
    done: list[int] = []
    p.pool.cleanup("b2b-1-", done.append)
    assert done == [3]  # the in-process relays answer at once
    assert calls_on(p, R1) == ["b2b-10-x", "other"]
    assert calls_on(p, R2) == [] and calls_on(p, R3) == ["xb2b-1-d"]
    assert p.wire.cores[R1].relay.ports.ports_in_use == 8  # two calls left, four ports each


def test_cleanup_waits_for_every_relay(p: Pool) -> None:
    p.wire.run(offer("me-1"), R1)
    p.wire.run(offer("me-2"), R3)
    p.wire.dead.add(R2)
    p.wire.delay = 0.1
    done: list[tuple[float, int]] = []
    p.pool.cleanup("me-", lambda n: done.append((p.scheduler.now, n)))
    p.scheduler.advance(3.49)
    assert done == [] and calls_on(p, R1) == [] and calls_on(p, R3) == []
    p.scheduler.advance(3.5)  # R2 never answers its list
    assert done == [(3.5, 2)] and p.r2.failures == 1


def test_cleanup_with_nothing_to_do() -> None:
    done: list[int] = []
    Pool(relays=()).pool.cleanup("x", done.append)
    assert done == [0]
    p = Pool()
    p.pool.cleanup("x")  # no callback is fine
    assert p.pool.alive_count == 3
    with pytest.raises(ValueError):
        p.pool.cleanup("", done.append)
