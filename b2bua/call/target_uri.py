"""The Request-URI of an INVITE the B2BUA places toward a next hop.

How this works: routing picks a next hop (an IP address, port and transport) for a target URI; the
INVITE then goes to that hop with the target's user part (or a tel: URI's number) at the hop's own
address, so the hop sees whom it is asked for and we never need DNS for the target's domain.
Every INVITE we originate uses it: the B leg of a call, a transfer's target, a deflection's
target, a recall, both parties of a click-to-dial.
"""

from __future__ import annotations

from ..sip.address import Address
from ..sip.uri import SipUri, Uri, unescape


def request_uri(target: Uri, hop: Address) -> str:
    """The Request-URI for `target` sent to `hop`: its user (or number) at the hop's address."""
    if isinstance(target, SipUri):
        user = target.user
    else:  # tel: the number, without its parameters
        user = unescape(target.raw.split(":", 1)[-1].split(";", 1)[0]) or None
    uri = f"sip:{user + '@' if user else ''}{hop.host_for_uri}:{hop.port}"
    return uri + (f";transport={hop.transport}" if hop.transport != "udp" else "")
