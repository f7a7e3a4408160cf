"""The port pair allocator: even RTP ports, odd RTCP, FIFO reuse, exhaustion and the leak check."""

import pytest

from rtp_relay.ports import PortAllocator, PortsExhausted


def test_pairs_are_even_and_cover_the_range() -> None:
    a = PortAllocator(30001, 30010)  # odd low is rounded up
    got = [a.allocate() for _ in range(a.capacity)]
    assert got == [30002, 30004, 30006, 30008]
    assert all(p % 2 == 0 and p + 1 <= 30010 for p in got)
    assert a.ports_in_use == 8
    with pytest.raises(PortsExhausted):
        a.allocate()
    a.check()


def test_free_reuses_last_and_never_leaks() -> None:
    a = PortAllocator(30000, 30007)
    p1, p2 = a.allocate(), a.allocate()
    a.release(p1)
    assert a.allocate() == 30004  # freed pairs queue at the back
    a.release(p2)
    a.check()
    assert a.pairs_in_use == 1
    with pytest.raises(ValueError):
        a.release(p2)  # double free
    with pytest.raises(ValueError):
        a.release(31000)  # foreign port


def test_quarantine_counts_bind_failures() -> None:
    a = PortAllocator(30000, 30003)
    p = a.allocate()
    a.release(p, quarantine=True)
    assert a.bind_failures == 1 and a.ports_in_use == 0
    a.check()


def test_empty_range_rejected() -> None:
    with pytest.raises(ValueError):
        PortAllocator(30001, 30001)


def test_many_cycles_keep_the_partition() -> None:
    a = PortAllocator(30000, 30099)
    held = []
    for i in range(500):
        if held and (i % 3 == 0 or a.pairs_free == 0):
            a.release(held.pop(0))
        else:
            held.append(a.allocate())
    a.check()
    for p in held:
        a.release(p)
    assert a.ports_in_use == 0
    a.check()


def test_start_at_rotates_the_queue_and_keeps_the_whole_range():
    ports = PortAllocator(30000, 30009, start_at=30005)  # odd: the pair 30004/30005
    assert [ports.allocate() for _ in range(5)] == [30004, 30006, 30008, 30000, 30002]
    ports.check()
