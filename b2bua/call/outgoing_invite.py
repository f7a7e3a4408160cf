"""The initial INVITE the B2BUA places itself: its Request-URI and its fixed headers.

How this works: routing picks a next hop (an IP address, port and transport) for a target URI; the
INVITE then goes to that hop with the target's user part (or a tel: URI's number) at the hop's own
address (`request_uri`), so the hop sees whom it is asked for and we never need DNS for the
target's domain. `outgoing_invite` adds what every INVITE we originate carries on a dialog of our
own (From with our tag, To, a new Call-ID, CSeq 1, Max-Forwards, our Contact, Allow) and then what
the caller adds: headers copied from another leg, Referred-By, Replaces. Every INVITE we originate
is built here: the B leg of a call, a transfer's target, a deflection's target, a recall, both
parties of a click-to-dial.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..sip.address import Address
from ..sip.message import Headers, Request
from ..sip.uri import SipUri, Uri, parse_uri, unescape
from .capabilities import ALLOW


def request_uri(target: Uri, hop: Address) -> str:
    """The Request-URI for `target` sent to `hop`: its user (or number) at the hop's address."""
    if isinstance(target, SipUri):
        user = target.user
    else:  # tel: the number, without its parameters
        user = unescape(target.raw.split(":", 1)[-1].split(";", 1)[0]) or None
    uri = f"sip:{user + '@' if user else ''}{hop.host_for_uri}:{hop.port}"
    return uri + (f";transport={hop.transport}" if hop.transport != "udp" else "")


def outgoing_invite(target: Uri, hop: Address, *, from_: str, to: str, call_id: str, contact: str,
                    body: bytes = b"", content_type: str | None = "application/sdp", max_forwards: int = 70,
                    extra: Iterable[tuple[str, str]] = ()) -> Request:
    """An initial INVITE to `target` through `hop`. `from_` carries our tag already; `content_type`
    is added when there is a body (None: `extra` carries it, copied from another leg)."""
    headers = [
        ("From", from_),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", "1 INVITE"),
        ("Max-Forwards", str(max_forwards)),
        ("Contact", contact),
        ("Allow", ALLOW),
    ]
    if body and content_type:
        headers.append(("Content-Type", content_type))
    headers.extend(extra)
    return Request("INVITE", parse_uri(request_uri(target, hop)), Headers(headers), body)
