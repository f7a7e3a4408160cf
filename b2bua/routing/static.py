"""Static call routing: which next hop an incoming call goes to.

How this works: rules from configuration are checked in order against the Request-URI of the
incoming INVITE (user-part prefix and/or domain); the first that matches names the next hop,
otherwise the default next hop (typically the PBX) is used. `route()` is a pure function of the URI,
so the call-center router can later be placed in front of it without touching the call layer.
`decide()` also gives the matching rule's transfer mode, which a new call keeps for its REFERs
(None: the global `transfers.mode`); transfer targets only need `route()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RoutingSettings, parse_next_hop
from ..sip.address import Address
from ..sip.uri import SipUri, Uri


@dataclass(frozen=True, slots=True)
class Route:
    next_hop: Address
    transfer_mode: str | None = None  # None: transfers.mode


@dataclass(frozen=True, slots=True)
class _Rule:
    user_prefix: str | None
    domain: str | None
    route: Route


class StaticRouter:
    def __init__(self, settings: RoutingSettings) -> None:
        self._rules = [
            _Rule(r.user_prefix, r.domain.lower() if r.domain else None,
                  Route(parse_next_hop(r.next_hop), r.transfer_mode))
            for r in settings.rules
        ]
        self._default = Route(parse_next_hop(settings.next_hop)) if settings.next_hop else None

    def route(self, uri: Uri) -> Address | None:
        """The next hop for a call to `uri`, or None when no rule and no default apply."""
        decided = self.decide(uri)
        return decided.next_hop if decided is not None else None

    def decide(self, uri: Uri) -> Route | None:
        """The route a call to `uri` takes (first matching rule, else the default), or None."""
        if isinstance(uri, SipUri):
            user = uri.user_unescaped or ""
            domain = uri.host_bare.lower()
            for rule in self._rules:
                if rule.user_prefix is not None and not user.startswith(rule.user_prefix):
                    continue
                if rule.domain is not None and rule.domain != domain:
                    continue
                return rule.route
        return self._default
