"""How the daemon runs Python's cyclic garbage collector: the young generation only, the rest on a clock.

How this works: the objects of an ended call (its legs, dialogs, transactions, parsed messages) form
no reference cycles, so reference counting frees them the moment the call and its last transaction
end (a call breaks the cycle with its legs when it ends, leg.py; cancelled timers drop their
callbacks; tests/unit/test_no_cycles.py holds this). The cycle collector then has almost nothing to
find, yet CPython runs it by allocation counts, and a pass over the oldest generation walks every
tracked object: with thousands of calls up and completed transactions kept 32 s (RFC 3261 Timers J,
L, M) that is a million objects and pauses of 0.5 to 2 s, long enough for every peer to retransmit
(measured: gen2 1.77 s and gen1 0.66 s at 500-650 calls/s with the old thresholds (50000, 20, 10),
each pass collecting nothing). So:
- at start-up, `gc.freeze()` takes what was loaded (modules, pydantic models) out of sight for good;
- only the youngest generation is collected by allocation count (threshold YOUNG): short-lived
  cycles (an exception's traceback, asyncio internals) still die young, and a pass walks at most a
  few thousand objects;
- objects that survive it stay in the middle generation, which is never collected by count either.
  Whatever survives a young pass is, in this daemon, a call's state or a transaction waiting out its
  timer: it is freed by reference counting, and walking it again is work for nothing. Measured at
  600 calls/s (15 s, 9,000 calls): middle-generation passes every ~0.4 s of 27-36 ms each, 0.63 s of
  CPU in all (5 % of the daemon's) finding nothing, and p99 INVITE->200 55-61 ms; without them
  15-21 ms;
- the older generations are collected by `CollectOld` every `OLD_EVERY_S` seconds instead, so a
  cycle that forms among surviving objects (a rare path) is freed within that time, and the pause
  comes at a known rhythm and is logged with what it found.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

YOUNG = 2_000  # a young pass walks a few thousand objects: a millisecond or two
_NEVER = 1_000_000_000  # the older generations' thresholds count passes of the one below: never reached
OLD_EVERY_S = 600.0


def configure() -> None:
    """Freeze what start-up loaded and set the thresholds; call once, when start-up is done."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, _NEVER, _NEVER)


class CollectOld:
    """Collects the oldest generation every `interval` seconds on `loop`, and logs the pass."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log: Any, interval: float = OLD_EVERY_S) -> None:
        self._loop = loop
        self._log = log
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self.passes = 0

    def start(self) -> None:
        self._handle = self._loop.call_later(self._interval, self._run)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        started = time.perf_counter()
        found = gc.collect()
        self.passes += 1
        self._log.info("gc_old_generation", found=found, ms=round(1000 * (time.perf_counter() - started), 1))
        self.start()
