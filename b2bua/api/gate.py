"""The one door from an HTTP handler into the sans-IO core.

How this works: the core is driven by the daemon's loop like any other input: before an API action
runs, the shared scheduler is moved to the loop's current time (so timers due now fire first, in
order), and afterwards the daemon's single loop timer is re-armed at the scheduler's next deadline
(the action may have started SIP transactions whose timers must run). Both steps are callables the
shell hands over; in unit tests, which move virtual time by hand, they are left out. An exception
from inside the core is a bug: it is counted as an escaped exception, logged, and the API answers 500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .errors import ApiError

T = TypeVar("T")


class CoreGate:
    def __init__(self, on_bug: Callable[[BaseException, str], None], advance: Callable[[], object] | None = None,
                 rearm: Callable[[], None] | None = None) -> None:
        self._on_bug = on_bug
        self._advance = advance
        self._rearm = rearm

    def run(self, fn: Callable[[], T]) -> T:
        """`fn()` inside the core, at the loop's present time. ApiError passes through."""
        try:
            if self._advance is not None:
                try:
                    self._advance()
                except Exception as exc:  # a timer's bug, not this request's
                    self._on_bug(exc, "timer")
            return fn()
        except ApiError:
            raise
        except Exception as exc:
            self._on_bug(exc, "api")
            raise ApiError(500, "internal error (a bug: it has been logged)") from None
        finally:
            if self._rearm is not None:
                self._rearm()

