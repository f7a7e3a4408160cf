"""Bencode, the encoding of rtpengine's "ng" control protocol.

How this works: bencode has four types: integers `i42e`, byte strings `4:spam`, lists `l...e` and
dictionaries `d...e` whose keys are byte strings. `decode` reads one complete value and rejects
anything else with a `BencodeError` naming the offset: trailing bytes, leading zeros (`i03e`),
`i-0e`, truncated input, nesting deeper than `MAX_DEPTH`, non-string keys. Strings decode to
`bytes` (an SDP is bytes on the wire and stays so); dictionary keys decode to `str`, since every
key of the protocol is ASCII. Key order is not enforced on input (deployed clients do not sort),
but `encode` always writes keys sorted by their bytes, as the format requires. `encode` accepts
`str` (UTF-8), `bytes`, `bool`/`int`, lists/tuples and dicts.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 64


class BencodeError(ValueError):
    """Input that is not exactly one well-formed bencoded value."""


# -- encoding ----------------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError("value nested too deeply to encode")
    if isinstance(value, bytes | bytearray | memoryview):
        b = bytes(value)
        out.append(b"%d:" % len(b))
        out.append(b)
    elif isinstance(value, str):
        b = value.encode("utf-8")
        out.append(b"%d:" % len(b))
        out.append(b)
    elif isinstance(value, int):  # bool is an int: True -> i1e
        out.append(b"i%de" % value)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        items = []
        for k, v in value.items():
            if isinstance(k, str):
                kb = k.encode("utf-8")
            elif isinstance(k, bytes):
                kb = k
            else:
                raise BencodeError(f"dictionary key must be str or bytes, not {type(k).__name__}")
            items.append((kb, v))
        items.sort(key=lambda kv: kv[0])
        out.append(b"d")
        previous = None
        for kb, v in items:
            if kb == previous:
                raise BencodeError(f"duplicate dictionary key {kb!r}")
            previous = kb
            out.append(b"%d:" % len(kb))
            out.append(kb)
            _encode(v, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode a {type(value).__name__}")


# -- decoding ----------------------------------------------------------------------------------


def decode(data: bytes) -> Any:
    """Decode exactly one value; raise BencodeError on anything malformed or left over."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BencodeError("input must be bytes")
    data = bytes(data)
    if not data:
        raise BencodeError("empty input")
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"trailing data at offset {end}")
    return value


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nesting deeper than {MAX_DEPTH} at offset {pos}")
    if pos >= len(data):
        raise BencodeError(f"truncated input at offset {pos}")
    lead = data[pos]
    if lead == 0x69:  # 'i'
        end = data.find(b"e", pos + 1)
        if end < 0:
            raise BencodeError(f"unterminated integer at offset {pos}")
        return _parse_int(data[pos + 1:end], pos), end + 1
    if 0x30 <= lead <= 0x39:  # a digit: <length>:<bytes>
        return _decode_string(data, pos)
    if lead == 0x6C:  # 'l'
        items: list[Any] = []
        pos += 1
        while True:
            if pos >= len(data):
                raise BencodeError("unterminated list")
            if data[pos] == 0x65:  # 'e'
                return items, pos + 1
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
    if lead == 0x64:  # 'd'
        result: dict[str, Any] = {}
        pos += 1
        while True:
            if pos >= len(data):
                raise BencodeError("unterminated dictionary")
            if data[pos] == 0x65:
                return result, pos + 1
            if not 0x30 <= data[pos] <= 0x39:
                raise BencodeError(f"dictionary key at offset {pos} is not a string")
            key_offset = pos
            raw_key, pos = _decode_string(data, pos)
            try:
                key = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                raise BencodeError(f"dictionary key at offset {key_offset} is not UTF-8") from None
            if key in result:
                raise BencodeError(f"duplicate dictionary key {key!r} at offset {key_offset}")
            result[key], pos = _decode(data, pos, depth + 1)
    raise BencodeError(f"unexpected byte {bytes([lead])!r} at offset {pos}")


def _parse_int(digits: bytes, pos: int) -> int:
    body = digits[1:] if digits.startswith(b"-") else digits
    if not body or not body.isdigit():
        raise BencodeError(f"invalid integer at offset {pos}")
    if body.startswith(b"0") and (len(body) > 1 or digits.startswith(b"-")):
        raise BencodeError(f"non-canonical integer at offset {pos}")
    return int(digits)


def _decode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    colon = data.find(b":", pos)
    if colon < 0 or colon - pos > 10:
        raise BencodeError(f"invalid string length at offset {pos}")
    digits = data[pos:colon]
    if not digits.isdigit() or (digits.startswith(b"0") and len(digits) > 1):
        raise BencodeError(f"invalid string length at offset {pos}")
    start = colon + 1
    end = start + int(digits)
    if end > len(data):
        raise BencodeError(f"string at offset {pos} runs past the end of the input")
    return data[start:end], end
