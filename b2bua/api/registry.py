"""API ids for the core's calls, when they started and were answered, and what the API is doing to them.

How this works: the registry listens to the core's call events (`Core.listeners`). The first event of
a call (or the first time a listing sees it) gives it an id: 8 random hex digits, short and URL-safe,
unique among live calls and unrelated to the SIP Call-IDs (which a phone chooses and may reuse).
`call_started` and `call_answered` stamp wall-clock times; `call_ended` forgets the call, after
running what was waiting on it (`when_ended`), so an API request waiting for a SIP answer learns the
call is gone instead of waiting forever. Only calls in `core.calls` are ever returned, so an id
of an ended call is simply unknown (404). `busy` records the one operation the API runs on a call at
a time (a hold, a resume; later a transfer), so a second one is refused with 409 instead of racing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..call.call import Call
from ..randomness import random_hex


@dataclass
class Entry:
    id: str
    created: float  # wall clock, seconds since the epoch
    answered: float | None = None
    busy: str | None = None  # what the API is doing to this call now, e.g. "hold of party a"
    on_end: list[Callable[[], None]] = field(default_factory=list)


class CallRegistry:
    def __init__(self, calls: Callable[[], set[Call]], wall: Callable[[], float] = time.time) -> None:
        self._live = calls  # the core's set of calls
        self._wall = wall
        self._entries: dict[Call, Entry] = {}
        self._by_id: dict[str, Call] = {}

    def entry(self, call: Call) -> Entry:
        entry = self._entries.get(call)
        if entry is None:
            new_id = random_hex(4)
            while new_id in self._by_id:
                new_id = random_hex(4)
            entry = self._entries[call] = Entry(new_id, self._wall())
            self._by_id[new_id] = call
        return entry

    def compact(self) -> None:
        """Rebuild the tables at their present size (a dict keeps its peak size; b2bua/trim.py)."""
        self._entries = dict(self._entries)
        self._by_id = dict(self._by_id)

    def id_of(self, call: Call) -> str:
        return self.entry(call).id

    def known_id(self, call: Call) -> str | None:
        """The id `call` has, without giving it one."""
        entry = self._entries.get(call)
        return entry.id if entry is not None else None

    def find(self, call_id: str) -> Call | None:
        """The live call with API id `call_id`."""
        call = self._by_id.get(call_id)
        return call if call is not None and call in self._live() else None

    def calls(self) -> list[Call]:
        """Every live call, oldest first (each gets an id if it had none)."""
        live = self._live()
        for gone in [c for c in self._entries if c not in live]:
            self._forget(gone)  # ended without an event we saw: keep the registry bounded
        return sorted(live, key=lambda c: (self.entry(c).created, self.entry(c).id))

    def on_event(self, call: Call, event: str, fields: dict[str, Any]) -> None:
        entry = self.entry(call)
        if event == "call_answered" and entry.answered is None:
            entry.answered = self._wall()
        elif event == "call_ended":
            self._forget(call)

    # -- operations in progress -----------------------------------------------------------------

    def begin(self, call: Call, what: str, on_end: Callable[[], None]) -> str | None:
        """Mark `call` busy with `what`; returns what it was already busy with (and changes nothing)."""
        entry = self.entry(call)
        if entry.busy is not None:
            return entry.busy
        entry.busy = what
        entry.on_end.append(on_end)
        return None

    def finish(self, call: Call, on_end: Callable[[], None]) -> None:
        entry = self._entries.get(call)
        if entry is not None:
            entry.busy = None
            if on_end in entry.on_end:
                entry.on_end.remove(on_end)

    def _forget(self, call: Call) -> None:
        entry = self._entries.pop(call, None)
        if entry is None:
            return
        self._by_id.pop(entry.id, None)
        for callback in entry.on_end:
            callback()

    def __len__(self) -> int:
        return len(self._entries)
