"""REFER, Replaces and the refer event: the pure pieces of a call transfer (RFC 3515, 3891, 4488, 4538).

How this works: `parse_refer` reads an incoming REFER once and returns either a `ReferRequest` (what
to call, which dialog to replace, whether the referrer wants NOTIFYs) or a `ReferError` (the status
and fixed reason phrase to answer with). It never raises on what a peer sent. The Refer-To URI is
split into the Request-URI of the INVITE to place (`target`: no `?headers`, no `method` parameter,
RFC 3261 §19.1.1 Table 1) and its embedded headers, %-decoded; a `Replaces` among them is parsed
(RFC 3891 §3 escapes it inside the URI). Progress of the INVITE that a REFER triggers is reported
back in NOTIFYs of the implicit "refer" subscription, whose bodies are message/sipfrag status lines
(RFC 3420); `ReferSubscription` decides which NOTIFY to send and when the subscription ends, and
`sipfrag`/`parse_sipfrag`/`notify_headers` build and read those messages. The other direction, a
Refer-To carrying a Replaces, is built by `refer_to_with_replaces`. Nothing here reads a clock:
times come in as `now`.

Refusals (status codes chosen within RFC 3515 §2.4.2, which lets a REFER be refused with any
fitting 4xx-6xx):
  400  zero or several Refer-To values (RFC 3515 §2.4.1 requires exactly this code); a Refer-To,
       Replaces, tel number, Target-Dialog or embedded header that does not parse; an embedded
       header value holding CR/LF/NUL (it would be a header injection into our INVITE); two
       Replaces in one Refer-To (RFC 3891 §3 allows one).
  403  a `method` other than INVITE in the Refer-To URI: we could technically send a BYE or any
       other method to a third party, but a transfer server that does so on request is a tool to
       tear down or probe other people's calls, so this is a refusal of policy, not a 501.
  416  a Refer-To URI scheme other than sip, sips or tel (RFC 3515 §2.4.2: a UA that cannot
       access non-SIP URIs SHOULD NOT accept REFERs to them; 416 is the code that says why).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..sip.headers import (
    HeaderError,
    NameAddr,
    Replaces,
    TargetDialog,
    canonical_name,
    parse_name_addr,
    parse_replaces,
    parse_target_dialog,
    split_list,
)
from ..sip.message import Request, reason_for
from ..sip.uri import SipUri, Uri, UriError, escape_header_value, is_token, parse_uri, unescape

SIPFRAG_CONTENT_TYPE = "message/sipfrag;version=2.0"
DEFAULT_NOTIFY_EXPIRES = 60

# tel: numbers (RFC 3966): global `+digits` or local digits/hex/*/#, visual separators allowed,
# at least one digit. Two simple patterns rather than one with nested stars, which would backtrack
# quadratically on a long hostile number.
_TEL_CHARS = re.compile(r"\+?[0-9A-Fa-f*#().\-]+")
_TEL_DIGIT = re.compile(r"[0-9A-Fa-f*#]")
# A decoded embedded-header value copied into a request must not be able to end its header line.
_UNSAFE_IN_HEADER = re.compile(r"[\r\n\x00]")
_LINE_BREAKS = re.compile(r"[\r\n]+")
# RFC 3261 §25.1 `word` (Call-ID = word ["@" word]); used only to validate what we build.
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID = re.compile(rf"{_WORD}(?:@{_WORD})?")
_STATUS_LINE = re.compile(r"SIP/[0-9]+\.[0-9]+[ \t]+([1-6][0-9][0-9])(?:[ \t]+(.*))?", re.IGNORECASE)


# -- parsing an incoming REFER ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReferError:
    """A REFER we refuse: answer it with `status` and `reason` (fixed text, never the peer's bytes)."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReferRequest:
    """A valid REFER, read once.

    `target` is the Request-URI for the INVITE to place: the Refer-To URI without its `?headers`
    and `method` parameter (a SipUri, or an AbsoluteUri of scheme tel). `embedded_headers` are the
    Refer-To URI's other `?name=value` pairs (canonical name, %-decoded value) in order; the caller
    decides which of them may reach the INVITE (RFC 3261 §19.1.5 says "per component": never Via,
    Route, From, To, Call-ID, CSeq, Contact...). `referred_by` is the Referred-By value as received,
    for copying into that INVITE (RFC 3892 §3); None when absent or unreadable."""

    refer_to: NameAddr
    target: Uri
    replaces: Replaces | None
    embedded_headers: tuple[tuple[str, str], ...]
    referred_by: str | None
    refer_sub: bool | None
    norefersub: bool
    target_dialog: TargetDialog | None
    cseq: int

    @property
    def subscription_wanted(self) -> bool:
        """RFC 4488 §4: only an explicit `Refer-Sub: false` asks for no implicit subscription.

        We always honour that request (the RFC lets a recipient refuse it; nothing is gained by
        sending NOTIFYs nobody wants), so the 2xx must then say `Refer-Sub: false` (`accept_headers`)."""
        return self.refer_sub is not False

    @property
    def attended(self) -> bool:
        """An attended transfer: the new call replaces an existing dialog (RFC 5589 §7)."""
        return self.replaces is not None

    def accept_headers(self) -> list[tuple[str, str]]:
        """Headers for the 2xx that accepts this REFER (RFC 4488 §4: `Refer-Sub: false` confirms
        that no subscription was created; a recipient that creates one may omit the header)."""
        return [] if self.subscription_wanted else [("Refer-Sub", "false")]


def parse_refer(request: Request) -> ReferRequest | ReferError:
    """Validate an incoming REFER and extract what a transfer needs; see the module docstring for
    the refusals. `request` is a parsed REFER (the parser has already checked CSeq, From, To...)."""
    if request.method != "REFER":
        raise ValueError(f"parse_refer given a {request.method} request")

    refer_to_values = [v for line in request.headers.get_all("Refer-To") for v in split_list(line)]
    if not refer_to_values:
        return ReferError(400, "Missing Refer-To")
    if len(refer_to_values) > 1:
        return ReferError(400, "Multiple Refer-To values")
    try:
        refer_to = parse_name_addr(refer_to_values[0])
    except HeaderError:
        return ReferError(400, "Malformed Refer-To")
    if refer_to.wildcard:
        return ReferError(400, "Malformed Refer-To")

    uri = refer_to.uri
    replaces: Replaces | None = None
    embedded: list[tuple[str, str]] = []
    if isinstance(uri, SipUri):
        method = uri.param("method")
        if uri.has_param("method") and not method:
            return ReferError(400, "Malformed method in Refer-To")
        # Methods are case-sensitive tokens (RFC 3261 §7.1), but nothing else could be meant by
        # `method=invite`; refusing it would only break a sloppy phone.
        if method is not None and method.upper() != "INVITE":
            return ReferError(403, "Only INVITE transfers are allowed")
        for raw_name, raw_value in uri.headers:
            name = canonical_name(unescape(raw_name))
            value = unescape(raw_value)
            if not is_token(name) or _UNSAFE_IN_HEADER.search(value):
                return ReferError(400, "Malformed header in Refer-To")
            if name == "Replaces":
                if replaces is not None:
                    return ReferError(400, "Multiple Replaces in Refer-To")
                try:
                    replaces = parse_replaces(value)
                except HeaderError:
                    return ReferError(400, "Malformed Replaces in Refer-To")
            else:
                embedded.append((name, value))
        target: Uri = uri.without_headers().without_param("method")
    elif uri.scheme == "tel":
        number = unescape(uri.raw[len("tel:"):].split(";", 1)[0])
        if _TEL_CHARS.fullmatch(number) is None or _TEL_DIGIT.search(number) is None:
            return ReferError(400, "Malformed tel URI in Refer-To")
        target = uri
    else:
        return ReferError(416, "Unsupported URI scheme in Refer-To")

    target_dialog: TargetDialog | None = None
    td_values = request.headers.get_all("Target-Dialog")
    if len(td_values) > 1:
        return ReferError(400, "Multiple Target-Dialog values")
    if td_values:
        try:
            target_dialog = parse_target_dialog(td_values[0])
        except HeaderError:
            return ReferError(400, "Malformed Target-Dialog")

    tags = set(request.option_tags("Supported")) | set(request.option_tags("Require"))
    return ReferRequest(
        refer_to=refer_to,
        target=target,
        replaces=replaces,
        embedded_headers=tuple(embedded),
        referred_by=_referred_by(request),
        refer_sub=_refer_sub(request),
        norefersub="norefersub" in tags,
        target_dialog=target_dialog,
        cseq=request.cseq.seq,
    )


def _referred_by(request: Request) -> str | None:
    """The single, well-formed Referred-By value, verbatim; else None.

    A broken or repeated Referred-By is dropped rather than refused: it is informational (RFC 3892
    makes it mandatory only when the referee demands it with 429), and a transfer that works
    without it is better than one refused over it. Copying it unparsed would be the worse choice."""
    values = request.headers.get_all("Referred-By")
    if len(values) != 1:
        return None
    value = values[0].strip()
    try:
        na = parse_name_addr(value)
    except HeaderError:
        return None
    return None if na.wildcard else value


def _refer_sub(request: Request) -> bool | None:
    """`Refer-Sub: true|false` (RFC 4488 §4), case-insensitive; None when absent, repeated or
    unreadable. None means RFC 3515 behaviour (a subscription), which RFC 4488 lets a recipient
    choose in every case, so a garbled header is never a reason to refuse the transfer."""
    values = request.headers.get_all("Refer-Sub")
    if len(values) != 1:
        return None
    value = values[0].split(";", 1)[0].strip().lower()
    return {"true": True, "false": False}.get(value)


# -- Refer-To with Replaces (the direction we send) ---------------------------------------------


def refer_to_with_replaces(target: str, call_id: str, to_tag: str, from_tag: str, early_only: bool = False) -> str:
    """A Refer-To value `<target?Replaces=...>` whose Replaces names the dialog (call_id, to_tag,
    from_tag) as the *target* will see it (RFC 3891 §3: to-tag is the target's own tag, from-tag
    its peer's), escaped as RFC 3891 §3 requires (`@` -> %40, `;` -> %3B, `=` -> %3D).

    `target` is a sip/sips URI without angle brackets; an existing Replaces in it is replaced.
    Raises ValueError for values that cannot be written so that they read back the same (a tag
    that is not a token, a Call-ID that is not `word[@word]`)."""
    if _CALL_ID.fullmatch(call_id) is None:
        raise ValueError(f"not a Call-ID: {call_id[:80]!r}")
    if not (is_token(to_tag) and is_token(from_tag)):
        raise ValueError("to_tag and from_tag must be tokens")
    try:
        uri = parse_uri(target)
    except UriError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(uri, SipUri):
        raise ValueError(f"Replaces needs a sip/sips target, not {uri.scheme}:")
    value = escape_header_value(str(Replaces(call_id, to_tag, from_tag, early_only)))
    headers = tuple((k, v) for k, v in uri.headers if unescape(k).lower() != "replaces")
    return f"<{uri.with_headers((*headers, ('Replaces', value)))}>"


# -- message/sipfrag (RFC 3420) and the NOTIFY of the refer event ------------------------------


def sipfrag(status: int, reason: str | None = None) -> bytes:
    """A sipfrag body of one status line: `SIP/2.0 180 Ringing\\r\\n` (RFC 3515 §2.4.5).

    Only the status line is sent: the INVITE's other headers would leak the far side's topology
    through the B2BUA (RFC 3515 §5 warns about exactly that). A reason relayed from a response is
    kept, with any CR/LF flattened so it cannot add lines to the fragment."""
    if not 100 <= status <= 699:
        raise ValueError(f"not a SIP status code: {status}")
    text = reason_for(status) if reason is None else _LINE_BREAKS.sub(" ", reason)
    return f"SIP/2.0 {status} {text}\r\n".encode("utf-8", "surrogateescape")


def parse_sipfrag(body: bytes) -> tuple[int, str] | None:
    """(status, reason) from a sipfrag body that starts with a status line; None otherwise.

    Tolerant of what UAs send: LF or CRLF endings, headers or a whole response after the status
    line, leading blank lines, no final line break, an empty reason, any `SIP/x.y` version."""
    text = body.lstrip(b" \t\r\n")
    end = text.find(b"\n")
    line = (text if end < 0 else text[:end]).rstrip(b"\r")
    m = _STATUS_LINE.fullmatch(line.decode("utf-8", "replace").strip())
    if m is None:
        return None
    return int(m.group(1)), (m.group(2) or "").strip()


def notify_headers(event_id: int | None, state: str, expires: int | None = None,
                   reason: str | None = None) -> list[tuple[str, str]]:
    """Event, Subscription-State and Content-Type of a NOTIFY of the implicit refer subscription.

    `event_id` is the REFER's CSeq number: RFC 3515 §2.4.6 requires `;id=` for every REFER after the
    first in a dialog and allows it on the first, so passing it always is correct. `state` is
    active or pending (then `expires`, the seconds left, is required: RFC 6665 §4.2.2) or
    terminated (`reason` defaults to noresource, the reason RFC 3515 §2.4.7 gives the final NOTIFY)."""
    event = "refer" if event_id is None else f"refer;id={event_id}"
    if state in ("active", "pending"):
        if expires is None or expires < 0:
            raise ValueError(f"Subscription-State {state} needs expires")
        if reason is not None:
            raise ValueError("a reason goes only with Subscription-State terminated")
        sub_state = f"{state};expires={expires}"
    elif state == "terminated":
        if expires is not None:
            raise ValueError("Subscription-State terminated takes no expires")
        sub_state = f"terminated;reason={reason or 'noresource'}"
    else:
        raise ValueError(f"unknown subscription state {state!r}")
    return [("Event", event), ("Subscription-State", sub_state), ("Content-Type", SIPFRAG_CONTENT_TYPE)]


@dataclass(frozen=True, slots=True)
class ReferNotify:
    """A NOTIFY to send on the REFER's dialog: `dialog.create_request("NOTIFY", headers, body)`."""

    headers: tuple[tuple[str, str], ...]
    body: bytes
    status: int
    terminated: bool  # this NOTIFY ends the subscription


class ReferSubscription:
    """The implicit subscription created by one accepted REFER (RFC 3515 §2.4.4-2.4.7).

    Rules implemented:
    - After the 2xx to the REFER, call `progress(100, now)` at once: a subscription starts with an
      immediate NOTIFY (RFC 6665 §4.2.1.2; RFC 3515 §2.4.4 warns the referrer to expect it even
      before the 2xx arrives).
    - Each NOTIFY carries the complete state as a sipfrag status line (§2.4.5: the package has no
      deltas), so skipping a NOTIFY loses nothing: a provisional status equal to the last one
      reported is not sent again.
    - A final status (>= 200, through `progress` or `final`) is sent once, with Subscription-State
      terminated;reason=noresource (§2.4.7); afterwards every call returns None.
    - While active, `expires` is the time left of the subscription (`expires` seconds from
      creation or from the last refresh), never the original figure.
    - At expiry (`handle_timer(now)` or a `progress` after it) the subscription ends with one
      NOTIFY terminated;reason=timeout carrying the latest status (reason values: RFC 6665 §4.1.3).
      A referrer may refresh or end the subscription with a SUBSCRIBE carrying the id (RFC 3515
      §2.4.6); `refresh` answers it (Expires 0 ends the subscription).
    - `wanted=False` (RFC 4488 Refer-Sub: false honoured): there is no subscription, no NOTIFY is
      ever produced, and `terminated` is True from the start.
    - `abandon()` ends it silently, for when the referrer rejected a NOTIFY with 481 or NOTIFYs
      time out (RFC 6665 §4.2.2: the subscription is then removed, nothing more is sent).
    """

    __slots__ = ("event_id", "_expires_at", "_last_status", "_last_reason", "_terminated")

    def __init__(self, event_id: int | None, now: float, expires: int = DEFAULT_NOTIFY_EXPIRES, *,
                 wanted: bool = True) -> None:
        if expires <= 0:
            raise ValueError("expires must be positive")
        self.event_id = event_id
        self._expires_at = now + expires
        self._last_status: int | None = None
        self._last_reason: str | None = None
        self._terminated = not wanted

    @property
    def terminated(self) -> bool:
        return self._terminated

    @property
    def last_status(self) -> int | None:
        """The status of the last NOTIFY produced (None before the first)."""
        return self._last_status

    @property
    def expires_at(self) -> float | None:
        """When the subscription expires: the time to arm a timer for; None once terminated."""
        return None if self._terminated else self._expires_at

    def expired(self, now: float) -> bool:
        return not self._terminated and now >= self._expires_at

    def progress(self, status: int, now: float, reason: str | None = None) -> ReferNotify | None:
        """Report the referenced INVITE's latest status; the NOTIFY to send, or None if none is due."""
        _check_status(status)
        if self._terminated:
            return None
        if status >= 200:
            return self._end(status, reason, "noresource")
        if now >= self._expires_at:
            return self._end(status, reason, "timeout")
        if status == self._last_status:
            return None
        return self._notify(status, reason, now)

    def final(self, status: int, reason: str | None = None) -> ReferNotify | None:
        """The NOTIFY that ends the subscription with `status` (normally the INVITE's final
        response; a provisional one when the transfer is abandoned). None if already ended."""
        _check_status(status)
        if self._terminated:
            return None
        return self._end(status, reason, "noresource")

    def handle_timer(self, now: float) -> ReferNotify | None:
        """At `expires_at`: the NOTIFY terminated;reason=timeout, or None if not yet due or ended."""
        if not self.expired(now):
            return None
        return self._end(self._last_status or 100, self._last_reason, "timeout")

    def refresh(self, expires: int, now: float) -> ReferNotify | None:
        """A SUBSCRIBE refreshing or ending this subscription (RFC 3515 §2.4.4, §2.4.6).

        Returns the NOTIFY of the current state that must follow it (RFC 6665 §4.2.1.2), with the
        new expiry, or terminated;reason=timeout for Expires 0. None when the subscription has
        ended: answer that SUBSCRIBE 481."""
        if expires < 0:
            raise ValueError("expires must not be negative")
        if self._terminated:
            return None
        status = self._last_status or 100
        if expires == 0 or now >= self._expires_at:
            return self._end(status, self._last_reason, "timeout")
        self._expires_at = now + expires
        return self._notify(status, self._last_reason, now)

    def abandon(self) -> None:
        """End the subscription without a NOTIFY."""
        self._terminated = True

    def _notify(self, status: int, reason: str | None, now: float) -> ReferNotify:
        self._last_status, self._last_reason = status, reason
        left = max(1, math.ceil(self._expires_at - now))
        return ReferNotify(tuple(notify_headers(self.event_id, "active", left)), sipfrag(status, reason),
                           status, False)

    def _end(self, status: int, reason: str | None, why: str) -> ReferNotify:
        self._last_status, self._last_reason = status, reason
        self._terminated = True
        return ReferNotify(tuple(notify_headers(self.event_id, "terminated", reason=why)), sipfrag(status, reason),
                           status, True)


def _check_status(status: int) -> None:
    if not 100 <= status <= 699:
        raise ValueError(f"not a SIP status code: {status}")


__all__ = [
    "DEFAULT_NOTIFY_EXPIRES", "SIPFRAG_CONTENT_TYPE", "ReferError", "ReferNotify", "ReferRequest",
    "ReferSubscription", "notify_headers", "parse_refer", "parse_sipfrag", "refer_to_with_replaces", "sipfrag",
]
