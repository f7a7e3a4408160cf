"""RTP/RTCP port pairs from a configured range, allocated and freed in O(1).

How this works: RFC 3550 §11 puts RTP on an even port and its RTCP on the next odd one, so the
allocator hands out even base ports `p` (RTCP on `p + 1`) from `[low, high]`. Free pairs wait in a
FIFO: a freed pair goes to the back, so a port is reused as late as possible and stray packets of a
finished call rarely reach a new one. `in_use` is a set, which makes a double free or the release
of a foreign port an error instead of silent corruption, and `check()` proves that free + used is
exactly the range (the leak check the tests and the shutdown path run). When the OS refuses to
bind a pair (another process holds it), the caller hands it back with `release(p, quarantine=True)`
and it waits at the back of the queue like any other. The daemon starts the queue at a random
pair (`start_at`): two relays sharing a range, or a restarted relay whose old ports another process
took meanwhile, do not all collide on the bottom of the range.
"""

from __future__ import annotations

from collections import deque


class PortsExhausted(Exception):
    """No free port pair left in the range."""


class PortAllocator:
    def __init__(self, low: int, high: int, *, start_at: int | None = None) -> None:
        if low % 2:
            low += 1  # the first RTP port must be even
        if not (low >= 1 and high <= 65535 and low + 1 <= high):
            raise ValueError(f"port range {low}-{high} holds no even/odd pair")
        self.low = low
        self.high = high
        self._free: deque[int] = deque(range(low, high, 2))
        if start_at is not None:
            self._free.rotate(-(((start_at - low) // 2) % len(self._free)))
        self._in_use: set[int] = set()
        self.capacity = len(self._free)  # in pairs
        self.bind_failures = 0

    def allocate(self) -> int:
        """An even RTP port whose odd neighbour is RTCP; raises PortsExhausted."""
        try:
            port = self._free.popleft()
        except IndexError:
            raise PortsExhausted(f"all {self.capacity} port pairs in {self.low}-{self.high} are in use") from None
        self._in_use.add(port)
        return port

    def release(self, port: int, *, quarantine: bool = False) -> None:
        if port not in self._in_use:
            raise ValueError(f"port {port} is not allocated")
        self._in_use.remove(port)
        self._free.append(port)
        if quarantine:
            self.bind_failures += 1

    @property
    def pairs_in_use(self) -> int:
        return len(self._in_use)

    @property
    def ports_in_use(self) -> int:
        return 2 * len(self._in_use)

    @property
    def pairs_free(self) -> int:
        return len(self._free)

    def is_allocated(self, port: int) -> bool:
        return port in self._in_use

    def check(self) -> None:
        """Raise AssertionError unless free and used pairs partition the range exactly."""
        free = set(self._free)
        if len(free) != len(self._free):
            raise AssertionError("a port pair is queued twice")
        if free & self._in_use:
            raise AssertionError(f"pairs both free and in use: {sorted(free & self._in_use)[:10]}")
        if free | self._in_use != set(range(self.low, self.high, 2)):
            raise AssertionError("free and used pairs do not cover the range")
