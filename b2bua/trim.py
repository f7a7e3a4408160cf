"""Give memory back to the system once a load peak has passed.

How this works: freeing a call's objects returns their memory to Python's and the C library's
allocators, not to the system: a daemon that held 20,000 calls stays at its peak size (measured:
RSS 351 MiB at the peak, 350 MiB after every call had ended, against 59 MiB before). Two things
keep it there. The core's tables (legs, transactions by key...) are dicts, and a dict never
shrinks when entries are deleted; and glibc returns free memory in the middle of its heap only
when asked (`malloc_trim`). So `TrimAfterLoad` looks at the load (calls plus transactions) every
`CHECK_EVERY_S` seconds, remembers the peak, and when the load has fallen to half of a peak of at
least `MIN_PEAK`, it has the tables rebuilt at their current size (`compact`) and calls
`malloc_trim(0)`, then takes the current load as the new peak. So it runs a handful of times as a
peak drains, never under steady load, and logs what it gave back.

Once the load has drained to `SETTLED` of the highest peak since the last such pass and stopped
falling, one more pass also empties the interpreter's attribute cache and runs a full collection
(`gc.collect()`, cheap by then: few objects are left to walk) between compacting and `malloc_trim`.
The attribute cache holds a reference to the name string of each of its 4,096 entries; a name
built afresh for each lookup (C code asking for a method by its C string, as datetime does for
`utcoffset`) fills it with dead strings allocated during the peak, one page pinned each (logs.py
no longer makes those, but any library may). Only a full collection empties CPython's free
lists (tuples, dicts, lists... kept for reuse, tens of thousands of objects after a peak, and
compacting adds the ones it frees), and each of them, scattered through memory, pins a whole
allocator arena or page. The order matters (in-process, 20,000 calls ended, RSS over the pre-load
value): compact, collect, trim +76 %; collect, compact, trim +341 %; no collection +437 %.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any

CHECK_EVERY_S = 5.0
MIN_PEAK = 1_000
SETTLED = 0.01  # the load is back to 1 % of its highest peak: the peak is over


def _libc_trim() -> Callable[[], Any] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


def rss_kib() -> int:
    """Resident set size of this process (Linux /proc; 0 where that is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


class TrimAfterLoad:
    def __init__(self, loop: asyncio.AbstractEventLoop, log: Any, load: Callable[[], int],
                 compact: Callable[[], None]) -> None:
        self._loop = loop
        self._log = log
        self._load = load
        self._compact = compact
        self._trim = _libc_trim()
        self._peak = 0  # the load's highest point since the last pass
        self._high = 0  # ... since the last full (settling) pass
        self._last = 0  # the load at the previous check
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = self._loop.call_later(CHECK_EVERY_S, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self.start()
        load, falling = self._load(), self._last
        self._last = load
        falling = load < falling
        if load > self._peak:
            self._peak = load
            self._high = max(self._high, load)
        elif self._high >= MIN_PEAK and load <= self._high * SETTLED and not falling:
            self.trim(collect=True, peak=self._high, load=load)
            self._peak = self._high = load
        elif self._peak >= MIN_PEAK and load <= self._peak // 2:
            self.trim(peak=self._peak, load=load)
            self._peak = load

    def trim(self, collect: bool = False, **context: Any) -> None:
        started, before = time.perf_counter(), rss_kib()
        self._compact()
        if collect:
            sys._clear_type_cache()  # documented in `sys`; refills as lookups run again
            context["collected"] = gc.collect()  # after compacting: it frees objects too
        if self._trim is not None:
            self._trim()
        after = rss_kib()
        self._log.info("memory_returned", rss_before_kib=before, rss_after_kib=after,
                       ms=round(1000 * (time.perf_counter() - started), 1), **context)
