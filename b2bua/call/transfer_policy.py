"""Who may be transferred where, and how often: the `[transfers]` settings and the checks they drive.

How this works: `TransferSettings` is the validated configuration section (pydantic, frozen, unknown
keys refused, like every section of `b2bua.config`). `TargetPolicy` answers one question for a
REFER's target URI: may the B2BUA place a call there? `ReferRateLimiter` counts REFERs per dialog in
a sliding window of virtual time. Both are pure; the clock is whatever `now` the caller passes.

This is toll-fraud protection: a REFER makes the B2BUA (and the trunks behind it) call a number the
*referrer* chose. So the matching is deliberately defensive; every rule below exists because the
naive version lets a target slip past a deny rule:
- A target is reduced to (user, domain) before matching. The user is %-decoded (`%39%30%30` is
  900). Hosts are compared in lower case (RFC 3261 §19.1.4), without IPv6 brackets or the trailing
  dot of an absolute name (`premium.example.com.` is `premium.example.com`).
- Users are compared case-insensitively although RFC 3261 says user parts are case-sensitive: many
  PBXs fold case, and a deny of `premium*` must also stop `PREMIUM1`. (An allow of `alice` then also
  admits `ALICE`, which on such PBXs is the same account.)
- Telephone numbers are matched on their digits: visual separators `-` `.` `(` `)` (RFC 3966) are
  removed and telephone-subscriber parameters (`;isub=`, `;ext=`, `;phone-context=`) cut off, for
  tel: URIs, for SIP URIs with `;user=phone`, and for any SIP user that is a number once the
  separators are gone (`sip:1-900-555-0100@gw` without user=phone is still dialled by a gateway).
  So number patterns are written without separators (`+1900*`); a pattern with separators would
  never match and is refused by validation. No dial-plan rewriting is done: `+1900`, `1900` and
  `011...` are different strings, so a deny list must name every prefix form the trunk accepts.
  A tel: URI has no domain: a pattern with a domain never matches it (its phone-context is chosen
  by the referrer, so it is not trusted as one).
- Patterns are globs with `fnmatch` semantics (`*`, `?`, `[seq]`, `[!seq]`; `[*]` matches a literal
  star, as in `*67`), applied to the whole normalised string, case-folded.
- A target with a `maddr` parameter is refused outright: maddr overrides the host as the place
  the request is sent (RFC 3261 §19.1.1), so it would route around a domain rule.
- Deny wins over allow; an empty allow list allows every target that no deny rule matches.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..sip.uri import AbsoluteUri, SipUri, Uri, unescape


class _Section(BaseModel):
    """The base of every configuration section (as in `b2bua.config`): frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_VISUAL_SEPARATORS = re.compile(r"[\-.()]")
# A SIP user that is a dialable number once visual separators are removed: digits with an optional
# leading '+', and the '*'/'#' of service codes (`*67...`); at least one digit (checked apart: one
# pattern with a star on each side of a digit would backtrack quadratically on long hostile users).
_PHONE_LIKE = re.compile(r"\+?[0-9*#]+")
# A tel: number or a user=phone user: RFC 3966 allows hex digits and '*'/'#' in local numbers.
_TEL_DIGITS = re.compile(r"\+?[0-9A-Fa-f*#]+")
_DIGIT = re.compile(r"[0-9]")
_NUMERIC_PATTERN = re.compile(r"[+0-9*?#\-.()]+")
_BRACKET_EXPR = re.compile(r"\[[^\]]*\]")


class TargetPattern(_Section):
    """One allow/deny rule; each field given must match (both: user AND domain)."""

    user: str | None = Field(None, min_length=1, description=(
        "glob (fnmatch) over the target's user or telephone number, case-insensitive; numbers are "
        "written without visual separators, e.g. '+1900*'"))
    domain: str | None = Field(None, min_length=1, description=(
        "glob (fnmatch) over the target's host, case-insensitive, e.g. '*.example.com'"))

    @field_validator("user", "domain")
    @classmethod
    def _valid_glob(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if any(c.isspace() for c in v) or "@" in v:
            raise ValueError("a pattern cannot contain whitespace or '@' (give user and domain separately)")
        depth = 0
        for c in v:  # fnmatch silently takes an unclosed '[' literally; that is never what was meant
            if c == "[":
                depth = 1
            elif c == "]":
                depth = 0
        if depth:
            raise ValueError("unbalanced '[' in pattern")
        return v

    @field_validator("user")
    @classmethod
    def _numbers_without_separators(cls, v: str | None) -> str | None:
        if v is None:
            return v
        outside = _BRACKET_EXPR.sub("", v)
        if (_VISUAL_SEPARATORS.search(outside) and _NUMERIC_PATTERN.fullmatch(outside)
                and _DIGIT.search(outside)):
            raise ValueError(f"numbers are matched without visual separators: write {_strip_separators(v)!r}")
        return v

    @model_validator(mode="after")
    def _has_a_field(self) -> TargetPattern:
        if self.user is None and self.domain is None:
            raise ValueError("a pattern needs user or domain")
        return self

    def matches(self, target: TargetIdentity) -> bool:
        if self.user is not None and not fnmatchcase(target.user, self.user.lower()):
            return False
        if self.domain is not None:
            if target.domain is None:
                return False
            if not fnmatchcase(target.domain, _normalise_domain(self.domain)):
                return False
        return True


class TransferSettings(_Section):
    """The `[transfers]` section: how REFERs from either leg are handled."""

    mode: Literal["terminate", "passthrough", "reject"] = Field("terminate", description=(
        "terminate: the B2BUA accepts the REFER itself, places the new call and re-bridges; "
        "passthrough: the REFER is relayed to the other leg; reject: every REFER is refused (403)"))
    allow: list[TargetPattern] = Field(default=[], description="targets allowed; empty: every target not denied")
    deny: list[TargetPattern] = Field(default=[], description="targets refused; deny wins over allow")
    max_refers_per_dialog: int = Field(5, ge=1, description="REFERs accepted per dialog within refer_window_s")
    refer_window_s: float = Field(60.0, gt=0, description="sliding window for max_refers_per_dialog")
    replaces_policy: Literal["own_dialogs", "any", "never"] = Field("own_dialogs", description=(
        "own_dialogs: a Replaces must name a dialog of this B2BUA; any: it may name any dialog "
        "(relayed to the target); never: REFERs with Replaces are refused"))
    reject_early_dialog_refer: bool = Field(False, description="refuse REFERs received before the call is answered")
    recall_transferor: bool = Field(False, description=(
        "when a transfer fails after the transferor has gone (early completion, or it hung up after "
        "the 202), call the transferor back instead of hanging up the transferee"))
    notify_expires_s: int = Field(60, ge=1, le=86_400, description="duration of the implicit refer subscription")


# -- target matching --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetIdentity:
    """What a target URI is matched on: normalised user (or number) and domain (None for tel:)."""

    user: str
    domain: str | None
    number: bool


def target_identity(uri: Uri) -> TargetIdentity | None:
    """The normalised (user, domain) of a sip/sips/tel URI; None for any other scheme."""
    if isinstance(uri, SipUri):
        user = unescape(uri.user) if uri.user is not None else ""
        domain = _normalise_domain(uri.host_bare)
        param = uri.param("user")
        if param is not None and param.lower() == "phone":
            number = _number(user.split(";", 1)[0], strict=False)
            if number is not None:
                return TargetIdentity(number, domain, True)
        number = _number(user.split(";", 1)[0], strict=True)
        if number is not None:
            return TargetIdentity(number, domain, True)
        return TargetIdentity(user.lower(), domain, False)
    if isinstance(uri, AbsoluteUri) and uri.scheme == "tel":
        raw = unescape(uri.raw[len("tel:"):].split(";", 1)[0])
        return TargetIdentity(_number(raw, strict=False) or _strip_separators(raw).lower(), None, True)
    return None


def _number(text: str, *, strict: bool) -> str | None:
    """`text` without visual separators if it is a telephone number; else None. `strict`: only
    decimal digits, '*', '#' and a leading '+' (what a plain SIP user must be to count as one)."""
    digits = _strip_separators(text)
    if strict:
        ok = _PHONE_LIKE.fullmatch(digits) is not None and _DIGIT.search(digits) is not None
    else:
        ok = _TEL_DIGITS.fullmatch(digits) is not None
    return digits.lower() if ok else None


def _strip_separators(text: str) -> str:
    return _VISUAL_SEPARATORS.sub("", text)


def _normalise_domain(host: str) -> str:
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


class TargetPolicy:
    """`check(uri)`: None when a transfer to `uri` is allowed, else the reason it is not (fixed
    text naming the rule, never the peer's bytes, fit for a log line or a 403 reason phrase)."""

    def __init__(self, settings: TransferSettings) -> None:
        self._allow = tuple(settings.allow)
        self._deny = tuple(settings.deny)

    def check(self, uri: Uri) -> str | None:
        target = target_identity(uri)
        if target is None:
            return "unsupported URI scheme"
        if isinstance(uri, SipUri) and uri.has_param("maddr"):
            return "maddr not allowed in a transfer target"
        for i, rule in enumerate(self._deny):
            if rule.matches(target):
                return f"target denied by transfers.deny[{i}]"
        if self._allow and not any(rule.matches(target) for rule in self._allow):
            return "target not in transfers.allow"
        return None


# -- rate limiting ----------------------------------------------------------------------------


class ReferRateLimiter:
    """At most `max_count` REFERs per dialog in any `window_s` seconds (a sliding-window log).

    Each key keeps the times of its accepted REFERs, at most `max_count` of them; a REFER at `now`
    is allowed when fewer than `max_count` fall in (now - window_s, now]. Refused REFERs are not
    counted, so a dialog that stops sending gets its allowance back as the window slides.
    Memory is bounded: `forget(key)` when the dialog ends, and beyond `max_keys` tracked dialogs the
    least recently used one is dropped. Dropping a key forgets its history (it fails open for that
    dialog), so `max_keys` should exceed the number of concurrent calls."""

    def __init__(self, max_count: int, window_s: float, *, max_keys: int = 65_536) -> None:
        if max_count < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("max_count and max_keys must be >= 1 and window_s > 0")
        self.max_count = max_count
        self.window_s = window_s
        self.max_keys = max_keys
        self._log: OrderedDict[Hashable, deque[float]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: TransferSettings, *, max_keys: int = 65_536) -> ReferRateLimiter:
        return cls(settings.max_refers_per_dialog, settings.refer_window_s, max_keys=max_keys)

    def compact(self) -> None:
        """Rebuild the table at its present size (a dict keeps its peak size; b2bua/trim.py)."""
        self._log = OrderedDict(self._log)

    def allow(self, dialog_key: Hashable, now: float) -> bool:
        times = self._log.get(dialog_key)
        if times is None:
            times = deque(maxlen=self.max_count)
            self._log[dialog_key] = times
            while len(self._log) > self.max_keys:
                self._log.popitem(last=False)
        else:
            self._log.move_to_end(dialog_key)
            self._expire(times, now)
        if len(times) >= self.max_count:
            return False
        times.append(now)
        return True

    def retry_after(self, dialog_key: Hashable, now: float) -> float:
        """Seconds until `dialog_key` may REFER again (0 when it may now); for a Retry-After."""
        times = self._log.get(dialog_key)
        if times is None:
            return 0.0
        self._expire(times, now)
        if len(times) < self.max_count:
            return 0.0
        return max(0.0, times[0] + self.window_s - now)

    def forget(self, dialog_key: Hashable) -> None:
        self._log.pop(dialog_key, None)

    def __len__(self) -> int:
        return len(self._log)

    def _expire(self, times: deque[float], now: float) -> None:
        horizon = now - self.window_s
        while times and times[0] <= horizon:
            times.popleft()


__all__ = [
    "ReferRateLimiter", "TargetIdentity", "TargetPattern", "TargetPolicy", "TransferSettings", "target_identity",
]
