"""A pool of RTP relays: health by ping, least-loaded choice, and the verdict of each ng command.

How this works: every relay starts in an unknown state (`alive` False, never declared down). The
pool pings each relay at once on `start()` and then every `ping_interval`, never stacking a second
ping on one still in flight (the NgClient may take longer to give up than the interval). Any reply
from a relay, a pong or the answer to a command, proves it is alive; a request it never answers,
ping or command, declares it down. `on_relay_down` fires only when a relay that was alive goes
down, since only then can it carry calls the B2BUA must hang up; `on_relay_up` fires whenever a
relay becomes alive, the first pong included. Dead relays keep being pinged, so a restarted relay
comes back by itself. `pick()` chooses among alive relays the one with the fewest sessions (which
the callers count through `session_started`/`session_ended`), rotating through ties so equal relays
share new calls. `command()` turns an ng reply into `(reply, error)`: error None for `ok`/`pong`,
the relay's `error-reason` for `error`, a description for anything else or for silence. `cleanup()`
deletes the sessions a previous run of this B2BUA left on the relays, found by call-id prefix.
Sans-IO like the rest of the core: time comes from the `Scheduler`, I/O goes through the NgClient.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from ..sip.scheduler import Scheduler, TimerHandle
from .ng_client import NgClient

CommandDone = Callable[[dict[str, Any] | None, str | None], None]

LIST_LIMIT = 10000


@dataclass(eq=False)
class Relay:
    address: tuple[str, int]
    name: str  # "host:port"
    alive: bool = False  # unknown until the first pong / first good reply
    sessions: int = 0  # maintained by callers via RelayPool.session_started/ended
    failures: int = 0  # times declared down


def relay_name(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RelayPool:
    def __init__(self, ng: NgClient, scheduler: Scheduler, addresses: list[tuple[str, int]],
                 on_relay_down: Callable[[Relay], None], on_relay_up: Callable[[Relay], None] | None = None,
                 ping_interval: float = 2.0) -> None:
        if ping_interval <= 0:
            raise ValueError("ping_interval must be positive")
        self.ng = ng
        self.scheduler = scheduler
        self.relays: list[Relay] = [Relay((a[0], a[1]), relay_name(a)) for a in addresses]
        self.on_relay_down = on_relay_down
        self.on_relay_up = on_relay_up
        self.ping_interval = ping_interval
        self._down: set[Relay] = set()  # declared down; not alive and not in here means unknown
        self._pinging: set[Relay] = set()
        self._timer: TimerHandle | None = None
        self._next = 0  # where the round robin over tied relays resumes

    @property
    def alive_count(self) -> int:
        return sum(1 for r in self.relays if r.alive)

    # -- health ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._timer is not None:
            return
        self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        # Re-armed first, so a raising callback triggered by a ping cannot end the ping loop.
        self._timer = self.scheduler.call_later(self.ping_interval, self._tick)
        for relay in self.relays:
            self._ping(relay)

    def _ping(self, relay: Relay) -> None:
        if relay in self._pinging:
            return
        self._pinging.add(relay)
        self.command(relay, {"command": "ping"}, lambda reply, error: self._pinging.discard(relay))

    def _mark_alive(self, relay: Relay) -> None:
        if relay.alive:
            return
        relay.alive = True
        self._down.discard(relay)
        if self.on_relay_up is not None:
            self.on_relay_up(relay)

    def _mark_down(self, relay: Relay) -> None:
        if relay in self._down:
            return  # already down: one verdict per outage, however many requests time out
        was_alive = relay.alive
        relay.alive = False
        relay.failures += 1
        self._down.add(relay)
        if was_alive:
            self.on_relay_down(relay)

    # -- choice --------------------------------------------------------------------------------------

    def pick(self, exclude: Collection[Relay] = ()) -> Relay | None:
        """An alive relay not in `exclude` with the fewest sessions; ties taken in turn."""
        relays = self.relays
        n = len(relays)
        best: Relay | None = None
        best_index = 0
        for k in range(n):
            i = (self._next + k) % n
            relay = relays[i]
            if not relay.alive or any(relay is x for x in exclude):
                continue
            if best is None or relay.sessions < best.sessions:
                best, best_index = relay, i
        if best is not None:
            self._next = (best_index + 1) % n
        return best

    def session_started(self, relay: Relay) -> None:
        relay.sessions += 1

    def session_ended(self, relay: Relay) -> None:
        # Clamped: a doubled "ended" from a caller must not skew the balance for the rest of the run.
        if relay.sessions > 0:
            relay.sessions -= 1

    # -- commands ------------------------------------------------------------------------------------

    def command(self, relay: Relay, message: dict[str, Any], done: CommandDone) -> None:
        def finished(reply: dict[str, Any] | None) -> None:
            if reply is None:
                try:
                    self._mark_down(relay)
                finally:  # the caller's request must end even if on_relay_down raised
                    done(None, f"relay {relay.name} did not answer")
                return
            try:
                self._mark_alive(relay)
            finally:
                done(reply, _verdict(reply))

        self.ng.request(relay.address, message, finished)

    def cleanup(self, prefix: str, done: Callable[[int], None] | None = None) -> None:
        """Delete every session whose call-id starts with `prefix` on every relay; done(deleted)."""
        if not prefix:
            raise ValueError("an empty prefix would delete the sessions of every B2BUA on the relays")
        # Requests may complete synchronously, so the count of outstanding replies is raised
        # before each batch is sent and lowered only after it.
        state = {"outstanding": len(self.relays), "deleted": 0}

        def settle() -> None:
            state["outstanding"] -= 1
            if state["outstanding"] == 0 and done is not None:
                done(state["deleted"])

        def deleted(reply: dict[str, Any] | None, error: str | None) -> None:
            if error is None:
                state["deleted"] += 1
            settle()

        def listed(relay: Relay) -> CommandDone:
            return lambda reply, error: listed_on(relay, reply, error)

        def listed_on(relay: Relay, reply: dict[str, Any] | None, error: str | None) -> None:
            calls = reply.get("calls") if reply is not None and error is None else None
            ours = [c for c in calls if isinstance(c, str) and c.startswith(prefix)] if isinstance(calls, list) else []
            state["outstanding"] += len(ours)
            for call_id in ours:
                self.command(relay, {"command": "delete", "call-id": call_id}, deleted)
            settle()

        if not self.relays:
            if done is not None:
                done(0)
            return
        for relay in list(self.relays):
            self.command(relay, {"command": "list", "limit": LIST_LIMIT}, listed(relay))


def _verdict(reply: dict[str, Any]) -> str | None:
    result = reply.get("result")
    if result in ("ok", "pong"):
        return None
    if result == "error":
        reason = reply.get("error-reason")
        return reason if isinstance(reason, str) and reason else "relay answered error without a reason"
    return f"unexpected result {result!r}"
