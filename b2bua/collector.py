"""How the daemon runs Python's cyclic garbage collector: young generations only, the old one on a clock.

How this works: the objects of a call (its legs, dialogs, transactions, parsed messages) form no
reference cycles, so reference counting frees them the moment the call and its last transaction
end (`Leg.call` is a weak reference; cancelled timers drop their callbacks; tests/unit/
test_no_cycles.py holds this). The cycle collector then has almost nothing to find, yet CPython
runs it by allocation counts, and a pass over the oldest generation walks every tracked object:
with thousands of calls up and completed transactions kept 32 s (RFC 3261 Timers J, L, M) that is
a million objects and pauses of 0.5 to 2 s, long enough for every peer to retransmit (measured:
gen2 1.77 s and gen1 0.66 s at 500-650 calls/s with the old thresholds (50000, 20, 10), each pass
collecting nothing). So:
- at start-up, `gc.freeze()` takes what was loaded (modules, pydantic models) out of sight for good;
- the two young generations stay small and cheap (thresholds YOUNG): short-lived cycles (an
  exception's traceback, asyncio internals) still die young;
- the oldest generation is never collected by allocation count; `CollectOld` collects it every
  `OLD_EVERY_S` seconds instead, so a cycle that does reach it (a rare path) is freed within that
  time, and the pause comes at a known rhythm and is logged with what it found.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

YOUNG = (2_000, 10)  # a young pass walks at most ~20,000 objects: a millisecond or two
_NEVER = 1_000_000_000  # generation 2's threshold counts generation-1 passes: never reached
OLD_EVERY_S = 600.0


def configure() -> None:
    """Freeze what start-up loaded and set the thresholds; call once, when start-up is done."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*YOUNG, _NEVER)


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
