"""Memory goes back to the system as a load peak drains, and never under steady load (b2bua/trim.py)."""

from __future__ import annotations

import datetime
import sys
from typing import Any

from b2bua.trim import MIN_PEAK, TrimAfterLoad, rss_kib

from .test_call_flows import establish
from .wire import PBX, Wire, in_dialog, response_to


class _Loop:
    def call_later(self, delay: float, callback: Any) -> Any:
        return self

    def cancel(self) -> None:
        pass


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_trims_when_the_load_halves_from_a_peak_and_not_before() -> None:
    load = [0]
    compacted: list[int] = []
    log = _Log()
    trim = TrimAfterLoad(_Loop(), log, lambda: load[0], lambda: compacted.append(load[0]))  # type: ignore[arg-type]
    seen = []
    for value in (0, 2 * MIN_PEAK, 2 * MIN_PEAK, 3 * MIN_PEAK, 2 * MIN_PEAK, 1500, 1400, 900, 800, 700, 600, 300):
        load[0] = value
        trim._check()
        seen.append(value in compacted)
    # The peak is 3000: nothing while the load stays above 1500; at 1500 (half) it trims and takes
    # 1500 as the new peak; again at 700 (<= 750); 300 is below half of 700 but that peak is
    # under MIN_PEAK, so the small load left is not worth a pass.
    assert compacted == [1500, 700]
    assert [event for event, _ in log.lines] == ["memory_returned", "memory_returned"]
    assert log.lines[0][1]["peak"] == 3 * MIN_PEAK and log.lines[0][1]["load"] == 1500
    assert log.lines[0][1]["rss_after_kib"] > 0


def test_a_drained_peak_ends_with_one_full_collection() -> None:
    load = [0]
    compacted: list[int] = []
    log = _Log()
    trim = TrimAfterLoad(_Loop(), log, lambda: load[0], lambda: compacted.append(load[0]))  # type: ignore[arg-type]
    for value in (20_000, 10_000, 5_000, 2_500, 1_200, 600, 300, 150, 0, 0, 0, 0):
        load[0] = value
        trim._check()
    # Halvings from 20,000 down to 600; below 1 % of 20,000 (150, then 0) the load still falls;
    # at the first check where it does not, the settling pass collects; then nothing more.
    assert compacted == [10_000, 5_000, 2_500, 1_200, 600, 0]
    assert ["collected" in fields for _, fields in log.lines] == [False] * 5 + [True]
    assert log.lines[-1][1]["peak"] == 20_000
    # A new peak starts the count again: halved at once, then settled when the load holds.
    for value in (3_000, 20, 20):
        load[0] = value
        trim._check()
    assert compacted[-2:] == [20, 20] and "collected" in log.lines[-1][1] and "collected" not in log.lines[-2][1]


def test_steady_load_never_trims() -> None:
    compacted: list[int] = []
    trim = TrimAfterLoad(_Loop(), _Log(), lambda: 5000, lambda: compacted.append(1))  # type: ignore[arg-type]
    for _ in range(100):
        trim._check()
    assert compacted == []


def test_a_call_goes_on_and_ends_cleanly_across_a_compaction() -> None:
    w = Wire()
    a200, _, _ = establish(w)
    before = (set(w.core.calls), dict(w.core._legs), dict(w.core._tx_owner), len(w.core.tl))
    w.core.compact()
    assert (set(w.core.calls), dict(w.core._legs), dict(w.core._tx_owner), len(w.core.tl)) == before
    # The rebuilt tables are the ones in use: the caller's BYE finds its leg, the callee's 200
    # its transaction, and the call ends with every table empty.
    w.inject(in_dialog("BYE", a200, cseq=2, branch="z9hG4bKbyeC", from_side_is_to=False))
    [b_bye] = w.requests(PBX, "BYE")
    w.inject(response_to(b_bye, 200, "OK"), PBX)
    assert w.core.stats.calls["answered"] == 1 and w.core.load == len(w.core.tl)
    w.advance(40)
    assert w.core.load == 0 and not w.core._legs and not w.core._tx_owner
    assert rss_kib() > 0


def test_cancelled_timers_leave_the_heap_once_it_has_doubled() -> None:
    from b2bua.sip.scheduler import _MIN_PURGE, Scheduler

    s = Scheduler()
    fired: list[int] = []
    keep = [s.call_at(10.0 + i, lambda i=i: fired.append(i)) for i in range(3)]
    for i in range(3 * _MIN_PURGE):
        s.call_at(100.0 + i, lambda: fired.append(-1)).cancel()
    assert len(s._heap) < _MIN_PURGE + 3  # purged on the way, not 3 * _MIN_PURGE entries
    assert len(s) == 3 and keep[0].callback is not None
    s.advance(10_000.0)
    assert fired == [0, 1, 2]


def test_the_settling_pass_lets_go_of_the_names_the_attribute_cache_holds() -> None:
    name = "".join(["utc", "offset"])  # built at run time, as C code builds a method's name: not interned
    getattr(datetime.UTC, name)
    held = sys.getrefcount(name)
    trim = TrimAfterLoad(_Loop(), _Log(), lambda: 0, lambda: None)  # type: ignore[arg-type]
    trim.trim(peak=MIN_PEAK, load=0)
    assert sys.getrefcount(name) == held  # a halving pass leaves the cache alone
    trim.trim(collect=True, peak=MIN_PEAK, load=0)
    assert sys.getrefcount(name) == held - 1
