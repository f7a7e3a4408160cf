"""One clock and one timer queue for the whole sans-IO core.

How this works: every timer in the core (RFC 3261 Timer A..M, no-answer timeouts, drain) is an
entry in one heap owned by a `Scheduler`. The core never reads a clock: the I/O shell calls
`advance(now)` before it feeds an input and whenever `next_deadline()` passes, and the scheduler
fires what is due, in deadline order. Tests drive the same object with invented times, so Timer B
firing 32 s after an INVITE takes microseconds to check. Cancelled entries are left in the heap and
skipped when they surface (lazy deletion): cancelling is O(1) and most timers are cancelled.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

_MIN_PURGE = 4096


def _cancelled() -> None:
    """What a cancelled handle points to instead of its callback."""


class TimerHandle:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        # Let go of the callback at once: the heap keeps a cancelled entry until it surfaces,
        # and the bound method would keep its transaction or call alive until then.
        self.cancelled = True
        self.callback = _cancelled


class Scheduler:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._purge_at = _MIN_PURGE

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(when, callback)
        if len(self._heap) >= self._purge_at:
            self.purge()
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        return handle

    def purge(self) -> None:
        """Drop cancelled entries now. Most timers are cancelled long before they are due (Timer B
        after the first response, a call's no-answer timer when it is answered), and lazy deletion
        would keep their entries for up to minutes: memory, scattered among newer objects, that
        keeps the allocator from giving pages back after a load peak. Run when the heap has doubled
        since the last purge, so its cost per timer stays constant."""
        heap = self._heap  # in place: `advance` may be iterating over it (a callback arming a timer)
        heap[:] = [entry for entry in heap if not entry[2].cancelled]
        heapq.heapify(heap)
        self._purge_at = max(2 * len(heap), _MIN_PURGE)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(self.now + delay, callback)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def advance(self, now: float) -> int:
        """Move the clock to `now` (never backwards) and fire every timer due by then.

        A callback may schedule new timers; those due by `now` fire in the same call.
        Returns how many callbacks ran.
        """
        if now > self.now:
            self.now = now
        fired = 0
        heap = self._heap
        while heap and heap[0][0] <= self.now:
            _, _, handle = heapq.heappop(heap)
            if handle.cancelled:
                continue
            callback = handle.callback
            handle.cancel()  # a handle fires once; cancel() after firing is harmless
            # The clock reads the timer's own deadline while it fires, so a timer armed from a
            # callback is measured from when the RFC says it starts, not from when we noticed.
            saved = self.now
            self.now = handle.when
            try:
                callback()
            finally:
                self.now = saved
            fired += 1
        return fired

    def __len__(self) -> int:
        return sum(1 for _, _, h in self._heap if not h.cancelled)
