"""Where the API may place a call: a target as a client writes it, made a URI and a next hop, or refused.

How this works: `resolve(core, text, field)` accepts a sip: or tel: URI, or a bare user or number
(`carol`, `+15550100`), which becomes `sip:<user>@<our host>` and is routed by its user like any
call. It refuses, naming the field (422, as a bad body field): what does not parse, other schemes
(sips: too: there is no TLS here), a URI with `?headers` or `maddr` (a header or a destination
smuggled into our INVITE), a target no routing rule reaches. A target the transfer policy denies
(`transfers.allow`/`deny`, the toll-fraud rules a REFER's target passes) is 403: the API places
calls to numbers a client chooses exactly as a REFER would make it do.
"""

from __future__ import annotations

import re
from typing import Any

from ..sip.address import Address
from ..sip.uri import AbsoluteUri, SipUri, Uri, UriError, parse_uri
from .errors import ApiError

_BARE = re.compile(r"[A-Za-z0-9+*#._~!$&'()\-]+")


def bad_field(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid request body", problems=[{"field": field, "message": message}])


def parse_target(text: str, field: str, local_host: str) -> Uri:
    text = text.strip()
    if ":" not in text:
        if not _BARE.fullmatch(text):
            raise bad_field(field, "not a URI, user or number")
        text = f"sip:{text}@{local_host}"
    try:
        uri = parse_uri(text)
    except UriError as exc:
        raise bad_field(field, f"not a SIP or tel URI ({exc})") from None
    if isinstance(uri, SipUri):
        if uri.scheme != "sip":
            raise bad_field(field, "sips: is not supported (no TLS here)")
        if uri.headers:
            raise bad_field(field, "a URI with ?headers is not accepted")
        if uri.has_param("maddr"):
            raise bad_field(field, "a URI with maddr is not accepted")
        return uri
    if isinstance(uri, AbsoluteUri) and uri.scheme == "tel" and len(uri.raw) > 4:
        return uri
    raise bad_field(field, f"only sip: and tel: URIs are accepted, not {getattr(uri, 'scheme', '?')}:")


def resolve(core: Any, text: str, field: str) -> tuple[Uri, Address]:
    """`text` as a URI the policy allows, and the next hop it routes to; ApiError otherwise."""
    uri = parse_target(text, field, core.local_host)
    denied = core.check_transfer_target(uri)
    if denied is not None:
        raise ApiError(403, f"{field}: {denied}")
    hop = core.route(uri)
    if hop is None:
        raise bad_field(field, "no route to this target")
    return uri, hop
