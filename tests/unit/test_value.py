"""`Value`: the immutable records compare, hash and print as frozen dataclasses did."""

from __future__ import annotations

import pytest

from b2bua import native
from b2bua.sip.address import Address
from b2bua.sip.headers import CSeq, NameAddr, Via
from b2bua.sip.uri import AbsoluteUri, SipUri, parse_uri
from rtp_relay.sdp import Connection, Rtcp


def test_equal_fields_are_equal_and_hash_alike() -> None:
    a, b = parse_uri("sip:bob@h:5062;transport=tcp"), SipUri("sip", "bob", None, "h", 5062, (("transport", "tcp"),))
    assert a == b and (a != b) is False and hash(a) == hash(b)
    assert {Address("udp", "127.0.0.1", 5060): 1}[Address("udp", "127.0.0.1", 5060)] == 1
    assert NameAddr(a, '"Bob"') == NameAddr(b, '"Bob"')


def test_a_differing_field_or_class_is_unequal() -> None:
    assert SipUri(host="h", port=1) != SipUri(host="h", port=2)
    assert Via("UDP", "h", 5060) != Via("TCP", "h", 5060)
    assert AbsoluteUri("tel", "tel:1") != SipUri(host="tel:1")
    assert CSeq(1, "INVITE") != (1, "INVITE")  # not equal to its own key
    assert Rtcp(9) != Rtcp(9, Connection("IN", "IP4", "127.0.0.1"))


def test_repr_is_the_constructor_call() -> None:
    assert repr(CSeq(7, "BYE")) == "CSeq(7, 'BYE')"
    assert eval(repr(Address("tcp", "::1", 5061))) == Address("tcp", "::1", 5061)


@pytest.mark.skipif(native.state() != "compiled",
                    reason="read-only fields are enforced by the compiled build (mypy checks the source)")
def test_fields_are_read_only_when_compiled() -> None:
    uri = SipUri(host="h")
    with pytest.raises(AttributeError):
        uri.host = "x"  # type: ignore[misc]
