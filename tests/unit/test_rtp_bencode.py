"""bencode: round trips, canonical output, and strict errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp_relay.bencode import BencodeError, decode, encode


def test_encode_basic_types() -> None:
    assert encode(42) == b"i42e"
    assert encode(-7) == b"i-7e"
    assert encode(0) == b"i0e"
    assert encode(b"spam") == b"4:spam"
    assert encode("é") == b"2:\xc3\xa9"
    assert encode([1, b"a"]) == b"li1e1:ae"
    assert encode({"b": 1, "a": b"x"}) == b"d1:a1:x1:bi1ee"  # keys sorted


def test_decode_ng_request() -> None:
    msg = decode(b"d7:command5:offer7:call-id3:abc5:flagsl13:trust-addressee")
    assert msg == {"command": b"offer", "call-id": b"abc", "flags": [b"trust-address"]}


def test_decode_accepts_unsorted_keys() -> None:
    assert decode(b"d1:bi1e1:ai2ee") == {"b": 1, "a": 2}


@pytest.mark.parametrize("bad, why", [
    (b"", "empty"),
    (b"i42", "unterminated"),
    (b"i03e", "non-canonical"),
    (b"i-0e", "non-canonical"),
    (b"ie", "invalid integer"),
    (b"i4x2e", "invalid integer"),
    (b"5:abc", "past the end"),
    (b"03:abc", "invalid string length"),
    (b"l1:a", "unterminated list"),
    (b"d1:a", "truncated"),
    (b"di1ei2ee", "not a string"),
    (b"d1:ai1e1:ai2ee", "duplicate"),
    (b"i1ei2e", "trailing"),
    (b"x", "unexpected byte"),
    (b"l" * 100 + b"e" * 100, "nesting"),
])
def test_decode_errors(bad: bytes, why: str) -> None:
    with pytest.raises(BencodeError, match=why):
        decode(bad)


def test_encode_rejects_unknown_types() -> None:
    with pytest.raises(BencodeError):
        encode(1.5)
    with pytest.raises(BencodeError):
        encode({1: 2})


values = st.recursive(
    st.integers() | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_round_trip(value: object) -> None:
    assert decode(encode(value)) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_garbage_never_crashes(data: bytes) -> None:
    try:
        value = decode(data)
    except BencodeError:
        return
    assert encode(value) == data or isinstance(value, dict)  # canonical unless keys were unsorted
