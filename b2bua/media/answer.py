"""An SDP answer to one party's offer, made from another party's SDP (RFC 3264 §6), for call pickup.

How this works: when two parties that have each made an offer must be joined before either can be
asked again (a ringing call picked up by an INVITE with Replaces: the caller's INVITE offered, the
picker's INVITE offered, and neither dialog is confirmed yet), each offer is answered with the other
party's SDP cut down to what the offer allows. `answer_with(offer, source)` walks the offer's m=
lines in order; each is answered by the next unused m= line of `source` with the same media type,
keeping only the formats both list: static payload types by number, dynamic ones by their
`a=rtpmap` encoding name and clock rate, renumbered to the offer's numbers (RFC 3264 §6.1: the
answer uses the offer's payload type numbers), with their `a=fmtp` lines. An offered stream with no
counterpart or no common format is rejected with port 0. The direction answers the offer's
(sendonly is answered recvonly, and so on). Everything else (addresses, other attributes) is the
source's, which for the B2BUA means the relay's ports. Raises SdpError for SDP it cannot read.
"""

from __future__ import annotations

from rtp_relay.sdp import DIRECTIONS, MediaDescription, SdpError, SessionDescription

__all__ = ["SdpError", "answer_with"]

_ANSWER_DIRECTION = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def answer_with(offer: bytes, source: bytes) -> bytes:
    off = SessionDescription.parse(offer)
    src = SessionDescription.parse(source)
    session_direction = next((ln.value for ln in src.session if ln.type == "a" and ln.value in DIRECTIONS), None)
    out = [ln.text() for ln in src.session if not (ln.type == "a" and ln.value in DIRECTIONS)]
    used: set[int] = set()
    for index, om in enumerate(off.media):
        match = next((i for i, sm in enumerate(src.media) if i not in used and sm.media == om.media
                      and not sm.disabled), None)
        common = _common_formats(om, src.media[match]) if match is not None else []
        if match is None or not common or om.disabled:
            out.append(f"m={om.media} 0 {om.proto} {' '.join(om.formats) or '0'}\r\n")
            continue
        used.add(match)
        sm = src.media[match]
        direction = _answer_direction(off.direction(index), sm.direction or session_direction)
        out.extend(_answer_section(sm, common, direction))
    return "".join(out).encode("utf-8", "surrogateescape")


def _rtpmaps(m: MediaDescription) -> dict[str, str]:
    """payload type -> `encoding/clock` (lower case, channels dropped when 1)."""
    out = {}
    for name, value in m.attributes():
        if name == "rtpmap" and value:
            pt, _, encoding = value.partition(" ")
            enc = encoding.strip().lower()
            if enc.endswith("/1"):
                enc = enc[:-2]
            out[pt] = enc
    return out


def _common_formats(om: MediaDescription, sm: MediaDescription) -> list[tuple[str, str]]:
    """(offer's number, source's number) for each format both list, in the offer's order."""
    o_maps, s_maps = _rtpmaps(om), _rtpmaps(sm)
    s_by_encoding = {enc: pt for pt, enc in s_maps.items()}
    common = []
    for fmt in om.formats:
        if fmt in o_maps:
            source_pt = s_by_encoding.get(o_maps[fmt])
            if source_pt is not None and source_pt in sm.formats:
                common.append((fmt, source_pt))
        elif fmt.isdigit() and int(fmt) < 96 and fmt in sm.formats and fmt not in s_maps:
            common.append((fmt, fmt))  # RFC 3551 static type, no rtpmap on either side
        elif fmt in sm.formats and s_maps.get(fmt) is None and not fmt.isdigit():
            common.append((fmt, fmt))  # non-RTP formats (e.g. t38 `udptl`) are compared as text
    return common


def _answer_section(sm: MediaDescription, common: list[tuple[str, str]], direction: str) -> list[str]:
    renumber = {src: off for off, src in common}
    first = sm.lines[0].value.split(" ", 3)
    lines = [f"m={first[0]} {first[1]} {first[2]} {' '.join(off for off, _ in common)}\r\n"]
    for line in sm.lines[1:]:
        attr = line.attribute()
        if attr is not None and attr[0] in ("rtpmap", "fmtp") and attr[1]:
            pt, _, rest = attr[1].partition(" ")
            if pt not in renumber:
                continue  # a format the offer does not allow
            lines.append(f"a={attr[0]}:{renumber[pt]} {rest}\r\n")
        elif line.type == "a" and line.value in DIRECTIONS:
            continue
        else:
            lines.append(line.text() if line.text().endswith("\n") else line.text() + "\r\n")
    lines.append(f"a={direction}\r\n")
    return lines


def _answer_direction(offered: str, source: str | None) -> str:
    if offered in _ANSWER_DIRECTION:
        wanted = _ANSWER_DIRECTION[offered]
        if source in ("inactive",) or (source == "sendonly" and wanted == "recvonly") or (
                source == "recvonly" and wanted == "sendonly"):
            return "inactive"
        return wanted
    return source or "sendrecv"
