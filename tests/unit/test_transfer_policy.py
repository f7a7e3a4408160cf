"""Transfer settings validation, target allow/deny matching (toll-fraud cases) and the REFER rate
limiter in virtual time."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from b2bua.call.transfer_policy import (
    ReferRateLimiter,
    TargetIdentity,
    TargetPattern,
    TargetPolicy,
    TransferSettings,
    target_identity,
)
from b2bua.sip.uri import parse_uri

# -- settings ---------------------------------------------------------------------------------------


def test_defaults() -> None:
    s = TransferSettings()
    assert s.mode == "terminate" and s.allow == [] and s.deny == []
    assert (s.max_refers_per_dialog, s.refer_window_s) == (5, 60.0)
    assert s.replaces_policy == "own_dialogs" and s.reject_early_dialog_refer is False
    assert s.notify_expires_s == 60


def test_settings_from_a_mapping_as_toml_gives_it() -> None:
    s = TransferSettings.model_validate({
        "mode": "passthrough", "replaces_policy": "never", "max_refers_per_dialog": 2,
        "allow": [{"domain": "*.example.com"}], "deny": [{"user": "+1900*"}, {"user": "9*", "domain": "gw"}],
    })
    assert s.mode == "passthrough" and s.replaces_policy == "never"
    assert s.allow == [TargetPattern(domain="*.example.com")]
    assert s.deny[1] == TargetPattern(user="9*", domain="gw")


def test_settings_are_frozen() -> None:
    s = TransferSettings()
    with pytest.raises(ValidationError):
        s.mode = "reject"  # type: ignore[misc]


def error_locs(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as info:
        TransferSettings.model_validate(data)
    return [tuple(e["loc"]) for e in info.value.errors()]


@pytest.mark.parametrize("data, loc", [
    ({"mode": "forward"}, ("mode",)),
    ({"unknown": 1}, ("unknown",)),
    ({"max_refers_per_dialog": 0}, ("max_refers_per_dialog",)),
    ({"refer_window_s": 0}, ("refer_window_s",)),
    ({"replaces_policy": "sometimes"}, ("replaces_policy",)),
    ({"notify_expires_s": 0}, ("notify_expires_s",)),
    ({"allow": [{}]}, ("allow", 0)),
    ({"deny": [{"user": "9*", "extra": 1}]}, ("deny", 0, "extra")),
    ({"deny": [{"user": ""}]}, ("deny", 0, "user")),
    ({"deny": [{"user": "+1-900*"}]}, ("deny", 0, "user")),
    ({"deny": [{"user": "(900) 555*"}]}, ("deny", 0, "user")),
    ({"deny": [{"user": "900*@evil.example"}]}, ("deny", 0, "user")),
    ({"deny": [{"domain": "evil .example"}]}, ("deny", 0, "domain")),
    ({"allow": [{"user": "1[0-9"}]}, ("allow", 0, "user")),
])
def test_invalid_settings_name_the_field(data: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert loc in error_locs(data)


def test_separator_error_suggests_the_pattern_to_write() -> None:
    with pytest.raises(ValidationError, match=r"'\+1900\*'"):
        TargetPattern(user="+1-900*")


@pytest.mark.parametrize("user", ["john.doe", "a-b-c", "[0-9]-*", "*-*", "1[-.]2", "sales.*"])
def test_non_numeric_patterns_may_contain_separators(user: str) -> None:
    assert TargetPattern(user=user).user == user


# -- normalisation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("uri, identity", [
    ("sip:alice@Example.COM", TargetIdentity("alice", "example.com", False)),
    ("sip:Alice.Smith@example.com.", TargetIdentity("alice.smith", "example.com", False)),
    ("sips:alice@[2001:DB8::1]:5061", TargetIdentity("alice", "2001:db8::1", False)),
    ("sip:example.com", TargetIdentity("", "example.com", False)),
    ("sip:%39%30%30555@gw", TargetIdentity("900555", "gw", True)),
    ("sip:+1-212-555-0100@gw", TargetIdentity("+12125550100", "gw", True)),
    ("sip:+1(212)555.0100@gw", TargetIdentity("+12125550100", "gw", True)),
    ("sip:+1-212-555-0100;isub=12@gw;user=phone", TargetIdentity("+12125550100", "gw", True)),
    ("sip:5550100;phone-context=+1-212@gw;user=phone", TargetIdentity("5550100", "gw", True)),
    ("sip:*67-555-0100@gw", TargetIdentity("*675550100", "gw", True)),
    ("sip:ABCD@gw;user=phone", TargetIdentity("abcd", "gw", True)),  # RFC 3966 local digits
    ("sip:abcd@gw", TargetIdentity("abcd", "gw", False)),
    ("tel:+1-212-555-0100", TargetIdentity("+12125550100", None, True)),
    ("tel:5550100;phone-context=example.com", TargetIdentity("5550100", None, True)),
    ("TEL:%2B1-900-555-0100", TargetIdentity("+19005550100", None, True)),
])
def test_target_identity(uri: str, identity: TargetIdentity) -> None:
    assert target_identity(parse_uri(uri)) == identity


@pytest.mark.parametrize("uri", ["http://example.com/", "mailto:a@example.com", "urn:service:sos"])
def test_other_schemes_have_no_identity(uri: str) -> None:
    assert target_identity(parse_uri(uri)) is None


# -- TargetPolicy -----------------------------------------------------------------------------------


def policy(**kwargs: Any) -> TargetPolicy:
    return TargetPolicy(TransferSettings.model_validate(kwargs))


def check(p: TargetPolicy, uri: str) -> str | None:
    return p.check(parse_uri(uri))


def test_no_rules_allow_every_sip_and_tel_target() -> None:
    p = policy()
    for uri in ("sip:carol@example.com", "sips:carol@example.com", "tel:+15550100", "sip:+19005550100@gw"):
        assert check(p, uri) is None


@pytest.mark.parametrize("uri", [
    "sip:+19005550100@gw.example.com",
    "sip:+1-900-555-0100@gw.example.com;user=phone",
    "sip:+1(900)555-0100@gw.example.com",
    "sip:+1.900.555.0100@gw.example.com",
    "sip:%2B19005550100@gw.example.com",  # escaped '+'
    "sip:+1%39005550100@gw.example.com",  # escaped digit
    "sip:+1-900-555-0100;isub=77@gw.example.com;user=phone",
    "tel:+1-900-555-0100",
    "tel:+19005550100;phone-context=+1",
])
def test_deny_number_prefix_catches_every_spelling(uri: str) -> None:
    p = policy(deny=[{"user": "+1900*"}])
    assert check(p, uri) == "target denied by transfers.deny[0]"


@pytest.mark.parametrize("uri", ["sip:+12125550100@gw.example.com", "tel:+1-212-555-0100",
                                 "sip:19005550100@gw.example.com", "sip:alice@example.com"])
def test_deny_number_prefix_leaves_other_numbers(uri: str) -> None:
    assert check(policy(deny=[{"user": "+1900*"}]), uri) is None


def test_users_are_matched_case_insensitively() -> None:
    p = policy(deny=[{"user": "premium*"}])
    assert check(p, "sip:PREMIUM1@example.com") is not None
    assert check(p, "sip:Premium-Line@example.com") is not None
    assert check(policy(deny=[{"user": "PREMIUM*"}]), "sip:premium1@example.com") is not None


def test_domain_matching_folds_case_and_trailing_dot() -> None:
    p = policy(deny=[{"domain": "*.premium.example"}])
    assert check(p, "sip:x@a.premium.example") is not None
    assert check(p, "sip:x@A.PREMIUM.EXAMPLE.") is not None
    assert check(p, "sip:x@a.premium.example:5080;transport=tcp") is not None  # port is not the domain
    assert check(p, "sip:x@premium.example.net") is None
    assert check(p, "tel:+15550100") is None  # a tel: URI has no domain


def test_ipv6_domains_with_or_without_brackets_in_the_pattern() -> None:
    for pattern in ("2001:db8::1", "[2001:db8::1]", "2001:DB8::*"):
        assert check(policy(deny=[{"domain": pattern}]), "sip:x@[2001:db8::1]") is not None, pattern


def test_allow_list_admits_only_matches() -> None:
    p = policy(allow=[{"domain": "pbx.example.com"}, {"user": "1???", "domain": "*.branch.example.com"}])
    assert check(p, "sip:1001@pbx.example.com") is None
    assert check(p, "sip:1001@east.branch.example.com") is None
    assert check(p, "sip:10010@east.branch.example.com") == "target not in transfers.allow"
    assert check(p, "sip:1001@other.example.com") == "target not in transfers.allow"
    assert check(p, "tel:1001") == "target not in transfers.allow"  # a domain rule never matches tel:


def test_allow_by_number_admits_tel() -> None:
    p = policy(allow=[{"user": "+4930*"}])
    assert check(p, "tel:+49-30-1234567") is None
    assert check(p, "sip:+49301234567@gw;user=phone") is None
    assert check(p, "tel:+49-40-1234567") == "target not in transfers.allow"


def test_tel_phone_context_does_not_satisfy_a_domain_rule() -> None:
    # The referrer picks the phone-context; trusting it as a domain would let it claim any allow rule.
    p = policy(allow=[{"domain": "pbx.example.com"}])
    assert check(p, "tel:900555;phone-context=pbx.example.com") is not None


def test_deny_wins_over_allow() -> None:
    p = policy(allow=[{"domain": "pbx.example.com"}], deny=[{"user": "9*"}])
    assert check(p, "sip:1001@pbx.example.com") is None
    assert check(p, "sip:9011441234@pbx.example.com") == "target denied by transfers.deny[0]"


def test_a_rule_with_both_fields_needs_both() -> None:
    p = policy(deny=[{"user": "9*", "domain": "gw.example.com"}])
    assert check(p, "sip:9123@gw.example.com") is not None
    assert check(p, "sip:9123@pbx.example.com") is None
    assert check(p, "sip:1123@gw.example.com") is None


def test_the_first_matching_deny_rule_is_named() -> None:
    p = policy(deny=[{"domain": "a.example"}, {"user": "00*"}, {"user": "0*"}])
    assert check(p, "sip:0044123@b.example") == "target denied by transfers.deny[1]"


def test_literal_star_of_a_service_code() -> None:
    p = policy(deny=[{"user": "[*]67*"}])
    assert check(p, "sip:*675550100@gw") is not None
    assert check(p, "sip:675550100@gw") is None


def test_maddr_is_refused_whatever_the_rules() -> None:
    p = policy(allow=[{"domain": "pbx.example.com"}])
    assert check(p, "sip:1001@pbx.example.com;maddr=203.0.113.66") == "maddr not allowed in a transfer target"
    assert check(policy(), "sip:1001@pbx.example.com;MADDR=203.0.113.66") is not None


def test_unsupported_scheme_is_refused() -> None:
    assert check(policy(), "http://example.com/") == "unsupported URI scheme"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["", "-", ".", "(", ")"]), min_size=11, max_size=11))
def test_no_separator_spelling_escapes_a_number_deny(seps: list[str]) -> None:
    digits = "19005550100"
    user = "+" + "".join(d + s for d, s in zip(digits, seps, strict=True))
    p = policy(deny=[{"user": "+1900*"}])
    assert check(p, f"sip:{user}@gw.example.com") is not None
    assert check(p, f"tel:{user.rstrip('-.()') or user}") is not None


def test_long_hostile_user_is_matched_quickly() -> None:
    # no regex with nested stars: a 60 kB almost-number must not take quadratic time
    p = policy(deny=[{"user": "+1900*"}])
    assert check(p, "sip:" + "1" * 60_000 + "x@gw") is None


# -- ReferRateLimiter ----------------------------------------------------------------------------------


def test_sliding_window() -> None:
    rl = ReferRateLimiter(3, 10.0)
    assert [rl.allow("d", t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert rl.allow("d", 9.99) is False
    assert rl.allow("d", 10.0) is True  # the REFER at 0.0 left the window (now - 10, now]
    assert rl.allow("d", 10.5) is False  # 1.0, 2.0, 10.0 are in it
    assert rl.allow("d", 11.0) is True


def test_refusals_are_not_counted() -> None:
    rl = ReferRateLimiter(1, 10.0)
    assert rl.allow("d", 0.0)
    assert not any(rl.allow("d", t / 10) for t in range(1, 100))  # hammering until 9.9 s
    assert rl.allow("d", 10.0)


def test_dialogs_are_independent_and_forget_resets() -> None:
    rl = ReferRateLimiter(1, 60.0)
    assert rl.allow(("call-1", "tag-a"), 0.0) and rl.allow(("call-2", "tag-b"), 0.0)
    assert not rl.allow(("call-1", "tag-a"), 1.0)
    rl.forget(("call-1", "tag-a"))
    rl.forget("never-seen")
    assert rl.allow(("call-1", "tag-a"), 1.0)
    assert len(rl) == 2


def test_tracked_keys_are_capped_least_recently_used_first() -> None:
    rl = ReferRateLimiter(1, 60.0, max_keys=2)
    rl.allow("a", 0.0)
    rl.allow("b", 1.0)
    rl.allow("a", 2.0)  # refused, but 'a' is now the most recently used
    rl.allow("c", 3.0)  # evicts 'b'
    assert len(rl) == 2
    assert not rl.allow("a", 4.0)  # 'a' kept its history
    assert rl.allow("b", 4.0)  # 'b' was forgotten


def test_memory_stays_bounded_under_many_dialogs() -> None:
    rl = ReferRateLimiter(5, 60.0, max_keys=100)
    for i in range(10_000):
        rl.allow(f"dialog-{i}", float(i))
    assert len(rl) == 100


def test_retry_after() -> None:
    rl = ReferRateLimiter(2, 10.0)
    assert rl.retry_after("d", 0.0) == 0.0
    rl.allow("d", 1.0)
    assert rl.retry_after("d", 2.0) == 0.0
    rl.allow("d", 3.0)
    assert rl.retry_after("d", 4.0) == pytest.approx(7.0)  # the REFER at 1.0 leaves at 11.0
    assert rl.retry_after("d", 11.0) == 0.0


def test_from_settings() -> None:
    rl = ReferRateLimiter.from_settings(TransferSettings(max_refers_per_dialog=2, refer_window_s=5.0))
    assert (rl.max_count, rl.window_s) == (2, 5.0)
    assert rl.allow("d", 0) and rl.allow("d", 1) and not rl.allow("d", 2) and rl.allow("d", 5.5)


@pytest.mark.parametrize("args", [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_rate_limiter_arguments(args: tuple[int, float]) -> None:
    with pytest.raises(ValueError):
        ReferRateLimiter(*args)
    with pytest.raises(ValueError):
        ReferRateLimiter(1, 1.0, max_keys=0)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.floats(0.5, 30), st.lists(st.floats(0, 100), max_size=40))
def test_never_more_than_max_count_in_any_window(max_count: int, window: float, times: list[float]) -> None:
    rl = ReferRateLimiter(max_count, window)
    allowed = [t for t in sorted(times) if rl.allow("d", t)]
    for t in allowed:
        assert sum(1 for u in allowed if t - window < u <= t) <= max_count
