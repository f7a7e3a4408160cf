"""Dialog state (RFC 3261 §12): identity, route set, remote target and CSeq bookkeeping.

How this works: a `Dialog` is created on the UAS side from the request that establishes it
(`from_request`) or on the UAC side from a 1xx/2xx carrying a To tag (`from_response`); one INVITE
that forks may create several early dialogs, one per To tag. It builds every in-dialog request
(`create_request`: Request-URI and Route from the route set per §12.2.1.1, CSeq incremented; ACK
and CANCEL reuse the INVITE's number), checks incoming CSeqs (§12.2.2: lower than the last one is an
out-of-order request, answered 500), and refreshes the remote target from target-refresh requests
and responses. It decides nothing about calls; the call layer owns that.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from .address import Address, is_ip_literal
from .headers import NameAddr, parse_name_addr
from .message import Headers, Request, Response
from .uri import SipUri, Uri

TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Dialog:
    """One dialog's state. Compared by identity: two Dialog objects are two dialogs."""

    # Slots: two or more per call, for the call's whole life. A plain class rather than a
    # dataclass, whose generated __init__ would stay interpreted in the compiled build.
    __slots__ = ("call_id", "local_tag", "remote_tag", "local_party", "remote_party", "remote_target",
                 "route_set", "local_seq", "remote_seq", "state", "secure")

    def __init__(self, call_id: str, local_tag: str, remote_tag: str | None, local_party: str,
                 remote_party: str, remote_target: Uri, route_set: tuple[str, ...] = (),
                 local_seq: int = 0, remote_seq: int | None = None,
                 state: DialogState = DialogState.EARLY, secure: bool = False) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_party = local_party  # From/To header value we write for ourselves, without tag
        self.remote_party = remote_party  # ... and for the peer, without tag
        self.remote_target = remote_target
        self.route_set = route_set  # Route values, in order to use (a tuple: the empty one is shared)
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.state = state
        self.secure = secure

    @property
    def key(self) -> tuple[str, str]:
        return (self.call_id, self.local_tag)

    # -- creation ---------------------------------------------------------------------------------

    @classmethod
    def from_request(cls, request: Request, local_tag: str) -> Dialog:
        """UAS side (§12.1.1): route set is Record-Route in order; target is the Contact."""
        contacts = request.contacts
        target = contacts[0].uri if contacts else request.from_.uri
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_tag,
            local_party=_without_tag(request.to),
            remote_party=_without_tag(request.from_),
            remote_target=target,
            route_set=tuple(request.headers.values("Record-Route")),
            local_seq=0,
            remote_seq=request.cseq.seq,
        )

    @classmethod
    def from_response(cls, request: Request, response: Response) -> Dialog:
        """UAC side (§12.1.2): route set is Record-Route reversed; target is the Contact."""
        contacts = response.contacts
        target = contacts[0].uri if contacts else request.uri
        return cls(
            call_id=request.call_id,
            local_tag=request.from_tag or "",
            remote_tag=response.to_tag,
            local_party=_without_tag(request.from_),
            remote_party=_without_tag(response.to),
            remote_target=target,
            route_set=tuple(reversed(response.headers.values("Record-Route"))),
            local_seq=request.cseq.seq,
            remote_seq=None,
            state=DialogState.CONFIRMED if response.is_success else DialogState.EARLY,
        )

    # -- incoming ----------------------------------------------------------------------------------

    def check_remote_cseq(self, request: Request) -> bool:
        """§12.2.2: False when the request is out of order (lower CSeq than the last one seen)."""
        seq = request.cseq.seq
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_seq is not None and seq <= self.remote_seq:
            # Equal would be a retransmission: the transaction layer absorbs those before us.
            return False
        self.remote_seq = seq
        return True

    def refresh_target(self, message: Request | Response) -> None:
        """Target refresh (§12.2): a new Contact in a refresh request or its 2xx replaces the target."""
        try:
            contacts = message.contacts
        except ValueError:
            return
        if contacts and not contacts[0].wildcard:
            self.remote_target = contacts[0].uri

    def confirm(self, response: Response) -> None:
        """An early dialog (UAC) becomes confirmed by a 2xx; its route set is taken from the 2xx."""
        self.state = DialogState.CONFIRMED
        self.route_set = tuple(reversed(response.headers.values("Record-Route")))
        self.refresh_target(response)

    # -- outgoing ----------------------------------------------------------------------------------

    def create_request(self, method: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                       *, cseq: int | None = None) -> Request:
        """An in-dialog request (§12.2.1.1). Via is added by the transaction layer."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        uri, routes = self._request_uri_and_routes()
        to = self.remote_party + (f";tag={self.remote_tag}" if self.remote_tag else "")
        items: list[tuple[str, str]] = [
            ("From", f"{self.local_party};tag={self.local_tag}"),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Max-Forwards", "70"),
        ]
        items.extend(("Route", r) for r in routes)
        items.extend(headers)
        return Request(method, uri, Headers(items), body)

    def _request_uri_and_routes(self) -> tuple[Uri, list[str]]:
        if not self.route_set:
            return self.remote_target, []
        first = parse_name_addr(self.route_set[0]).uri
        if isinstance(first, SipUri) and first.has_param("lr"):
            return self.remote_target, list(self.route_set)
        # Strict routing (RFC 2543 next hop): Request-URI is the first route, target goes last.
        return first.without_headers() if isinstance(first, SipUri) else first, [
            *self.route_set[1:], f"<{self.remote_target}>"
        ]

    def next_hop(self) -> Address | None:
        """Where in-dialog requests go: the first Route, else the remote target (no DNS: IP hosts)."""
        target: Uri = self.remote_target
        if self.route_set:
            target = parse_name_addr(self.route_set[0]).uri
        return uri_address(target)


def uri_address(uri: Uri) -> Address | None:
    """The transport address a SIP URI names (maddr, then host; port defaults per transport).

    Only IP literals: a host name a peer wrote in its Contact or Record-Route would cost a blocking
    DNS lookup on every send (and lets a peer point us anywhere), so for those this returns None
    and the leg falls back to the address the peer's messages come from.
    """
    if not isinstance(uri, SipUri):
        return None
    transport = uri.transport
    if transport == "tls":
        transport = "tcp"  # TLS is not supported; sips: targets are refused before this point
    host = uri.param("maddr") or uri.host_bare
    if host.startswith("["):
        host = host[1:-1]
    if not is_ip_literal(host):
        return None
    return Address(transport, host, uri.port or 5060)


def _without_tag(na: NameAddr) -> str:
    params = tuple((k, v) for k, v in na.params if k.lower() != "tag")
    return str(NameAddr(na.uri, na.display, params, na.bracketed or bool(params)))
