"""One call's media on a relay: the ng offer/answer/query/delete commands a call issues.

How this works: a `MediaSession` names the call to the relay by an ng call-id of its own and each
party by a tag (the B2BUA uses the local tag of each leg). The first `offer` picks a relay from the
pool (the alive one carrying the fewest sessions); if that relay answers with an error or not at
all, the offer is tried on the next one, so a new call survives one bad relay. From then on the
session stays on its relay: a relay that stops answering is declared down by the pool, and the core
ends every call whose session is on it. Each command reports through `done(sdp, error)`: the
rewritten SDP on success, or None and a reason. `PassThroughMedia` is the same interface when media
relaying is off: SDP passes unchanged and synchronously.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .relay_pool import Relay, RelayPool

SdpDone = Callable[[bytes | None, str | None], None]
QueryDone = Callable[[dict[str, Any] | None, str | None], None]

# Flags both rtp_relay and rtpengine understand: take media addresses from the SDP (the relay then
# latches onto the real source, which is what makes NAT work) and drop ICE, which a relay in the
# middle would break.
OFFER_OPTIONS: dict[str, Any] = {"flags": ["trust-address"], "ICE": "remove"}


class MediaSession:
    def __init__(self, pool: RelayPool, ng_call_id: str) -> None:
        self.pool = pool
        self.ng_call_id = ng_call_id
        self.relay: Relay | None = None
        self.deleted = False
        self.errors: list[str] = []  # why relays refused the first offer

    @property
    def active(self) -> bool:
        return self.relay is not None and not self.deleted

    def offer(self, from_tag: str, to_tag: str, sdp: bytes, done: SdpDone) -> None:
        message = {"command": "offer", "call-id": self.ng_call_id, "from-tag": from_tag, "to-tag": to_tag,
                   "sdp": sdp, **OFFER_OPTIONS}
        if self.relay is None:
            self._first_offer(message, done, tried=[])
        else:
            self._sdp_command(message, done)

    def answer(self, from_tag: str, to_tag: str, sdp: bytes, done: SdpDone) -> None:
        """`from_tag` is the offerer's tag, as in the offer this answers (rtpengine's convention)."""
        message = {"command": "answer", "call-id": self.ng_call_id, "from-tag": from_tag, "to-tag": to_tag,
                   "sdp": sdp, **OFFER_OPTIONS}
        self._sdp_command(message, done)

    def query(self, done: QueryDone) -> None:
        if not self.active:
            done(None, "no media session")
            return
        assert self.relay is not None
        self.pool.command(self.relay, {"command": "query", "call-id": self.ng_call_id}, done)

    def delete(self) -> None:
        if self.deleted:
            return
        self.deleted = True
        if self.relay is not None:
            self.pool.session_ended(self.relay)
            if self.relay.alive:
                self.pool.command(self.relay, {"command": "delete", "call-id": self.ng_call_id}, _ignore)

    # -- internals -------------------------------------------------------------------------------

    def _first_offer(self, message: dict[str, Any], done: SdpDone, tried: list[Relay]) -> None:
        relay = self.pool.pick(exclude=tried)
        if relay is None:
            done(None, "no media relay available" if not tried else
                 f"no media relay accepted the offer ({'; '.join(self.errors)})")
            return
        tried.append(relay)

        def on_reply(reply: dict[str, Any] | None, error: str | None) -> None:
            if self.deleted:
                if error is None:  # the call ended while we waited: release what the relay made
                    self.pool.command(relay, {"command": "delete", "call-id": self.ng_call_id}, _ignore)
                done(None, "call ended")
                return
            sdp = reply.get("sdp") if reply is not None and error is None else None
            if not isinstance(sdp, bytes):
                self.errors.append(f"{relay.name}: {error or 'reply without SDP'}")
                self._first_offer(message, done, tried)
                return
            self.relay = relay
            self.pool.session_started(relay)
            done(sdp, None)

        self.pool.command(relay, message, on_reply)

    def _sdp_command(self, message: dict[str, Any], done: SdpDone) -> None:
        if not self.active:
            done(None, "no media session")
            return
        assert self.relay is not None

        def on_reply(reply: dict[str, Any] | None, error: str | None) -> None:
            sdp = reply.get("sdp") if reply is not None else None
            if error is None and not isinstance(sdp, bytes):
                error = "relay reply has no SDP"
            done(sdp if error is None else None, error)

        self.pool.command(self.relay, message, on_reply)


class PassThroughMedia:
    """Media relaying off: SDP crosses unchanged, at once."""

    relay = None
    active = False

    def offer(self, from_tag: str, to_tag: str, sdp: bytes, done: SdpDone) -> None:
        done(sdp, None)

    def answer(self, from_tag: str, to_tag: str, sdp: bytes, done: SdpDone) -> None:
        done(sdp, None)

    def query(self, done: QueryDone) -> None:
        done(None, "media relaying is off")

    def delete(self) -> None:
        pass


def _ignore(reply: dict[str, Any] | None, error: str | None) -> None:
    pass
