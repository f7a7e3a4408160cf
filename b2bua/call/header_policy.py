"""Which headers of one leg's request are copied to the other leg's request.

How this works: a B2BUA terminates each dialog, so by default nothing crosses: every header the
B leg needs (Via, From/To tags, Call-ID, CSeq, Contact, Route, Max-Forwards) is made fresh for that
leg. What does cross is the end-to-end information a PBX or phone wants to see, named in
`calls.pass_headers` (exact names, or prefixes ending in `*` such as `X-*`). Bodies and their
Content-Type always cross with the request or response they belong to. Headers that describe this
hop or this dialog (listed in `NEVER_COPIED`) never cross whatever the configuration says, because
copying them would corrupt the other leg.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..sip.message import Request, Response

NEVER_COPIED = frozenset(
    h.lower() for h in (
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Route", "Record-Route", "Max-Forwards",
        "Content-Length", "Authorization", "Proxy-Authorization", "Proxy-Require", "Require",
        "Supported", "RSeq", "RAck", "Allow", "Replaces", "Target-Dialog", "Refer-To", "Referred-By",
        "Session-Expires", "Min-SE", "Event", "Subscription-State",
    )
)

# Response headers that carry end-to-end meaning and are relayed with the status.
RESPONSE_HEADERS = frozenset(
    h.lower() for h in ("Content-Type", "Content-Disposition", "Content-Encoding", "Content-Language",
                        "Retry-After", "Warning", "Reason", "Unsupported", "Accept", "Accept-Encoding",
                        "Accept-Language", "Error-Info", "Server", "P-Asserted-Identity", "Refer-Sub")
)


class HeaderPolicy:
    def __init__(self, pass_headers: Iterable[str]) -> None:
        exact, prefixes = set(), []
        for name in pass_headers:
            if name.endswith("*"):
                prefixes.append(name[:-1].lower())
            else:
                exact.add(name.lower())
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def _passes(self, name: str) -> bool:
        key = name.lower()
        if key in NEVER_COPIED:
            return False
        return key in self._exact or key.startswith(self._prefixes) or key.startswith("content-")

    def request_headers(self, request: Request) -> list[tuple[str, str]]:
        """Headers of `request` to put on the request sent on the other leg."""
        return [(n, v) for n, v in request.headers if self._passes(n)]

    def response_headers(self, response: Response) -> list[tuple[str, str]]:
        """Headers of `response` to put on the response relayed to the other leg."""
        return [(n, v) for n, v in response.headers if n.lower() in RESPONSE_HEADERS or
                (self._passes(n) and n.lower().startswith(self._prefixes))]
