"""RTP helpers for the end-to-end SIPp tests: media files, packet counting, far ends, hijackers.

Everything here stays on loopback (127.0.0.0/8 or ::1) and every loop is bounded in count and
time.

What SIPp 3.6.1 (Debian ``sip-tester``) does with RTP, as measured on this machine:

* ``<exec play_pcap_audio="media/x.pcap"/>`` (used by the ``*_rtp_*.xml`` scenarios) sends the
  UDP payloads of a pcap file in a background thread, paced by the pcap timestamps, through a
  raw socket: it needs root / CAP_NET_RAW. The path is looked up next to the scenario first. The
  packets go to the address and port of the last SDP this call *received*, and leave from
  ``[media_ip]`` and the port that the last ``[media_port]``/``[media_port+N]`` keyword on an
  ``m=audio`` line *sent* by this call expanded to (so a re-INVITE offering ``[media_port+2]``
  moves the source port too). The RTP header (SSRC, sequence numbers, timestamps) is sent as it
  is in the file, which is why the files below carry one known SSRC per side and sequence
  numbers that tell the phases of a call apart. The scenario goes on at once: a ``<pause>``
  must cover the playing time, since a call's end stops its players.
* ``<exec rtp_stream="file,loops,payload"/>`` needs no privilege, but the file name is relative
  to SIPp's *working directory* (not the scenario), the file is raw payload (a WAV header is
  *not* skipped: it is sent as audio), it always sends from the ``[media_port]`` socket, and
  the SSRC and sequence numbers are SIPp's own. See :func:`write_pcmu_raw`.
* ``-rtp_echo`` echoes every datagram that arrives on ``[media_port]`` (and ``[media_port+2]``)
  back to its source address, from the port it arrived on. Nothing listens on
  ``[media_port+1]``, so RTCP is neither echoed nor absorbed. Never give ``-rtp_echo`` to both
  sides of a call: the packets would bounce forever.
* SIPp counts no received RTP: its only RTP counters ("Total echo RTP pckts", "Total RTP pckts
  sent") appear in a screen dumped with SIGUSR2 *while* it runs, never in the final screen or
  the ``-trace_stat`` CSV. Hence :class:`LoopbackSniffer`, which sees every RTP datagram on the
  loopback interface (root / CAP_NET_RAW, as the pcap player).

Contents:

* :func:`build_rtp` / :func:`parse_rtp` / :class:`RtpPacket`: the 12-byte RTP header.
* :func:`write_rtp_pcap` / :func:`read_pcap_rtp` / :func:`write_pcmu_raw`: media files;
  :data:`MEDIA` describes the committed ``sipp_scenarios/media`` files and
  :func:`regenerate_media` rewrites them; :data:`SCENARIO_MEDIA` says which file each side of
  each ``*_rtp_*`` scenario pair plays, and :func:`expected_packets` what that adds up to.
* :class:`LoopbackSniffer`: records every RTP/RTCP datagram crossing ``lo`` (a thread over an
  AF_PACKET socket); :meth:`LoopbackSniffer.rtp` filters them by address.
* :class:`RtpEndpoint`: a Python RTP far end on a real UDP socket: records what it receives,
  can echo, can send a known number of packets.
* :func:`hijack`: N RTP packets from another loopback address (127.0.0.2 by default).
* :func:`call_media` (over SIPp ``-trace_msg`` files): the media addresses each side signalled
  and was given, and :func:`media_delivery` / :func:`assert_media_delivered` to check that
  every packet each side sent arrived at the other side; :func:`relay_hops` counts the four
  hops through a relay (to compare with its per-port counters); :func:`by_phase` tells
  where each media file's packets went (e.g. to the new port after a re-INVITE).
* :class:`Hijacker`: :func:`hijack` in the background, aimed at where the victim sends.

How a test uses it (the SIPp side keeps its existing harness)::

    if not rtp.raw_sockets_available():
        pytest.skip("needs root / CAP_NET_RAW (SIPp play_pcap_audio, packet capture)")
    with rtp.sniffing() as sniffer:
        result = sipp_pair(daemon, "uas_rtp_basic.xml", "uac_rtp_basic.xml")
    delivery = rtp.media_delivery(sniffer, result, "basic")
    rtp.assert_media_delivered(delivery)  # 50 A->B and 40 B->A, each exactly once
    hops = rtp.relay_hops(sniffer, delivery.media)  # == the relay's per-port packet counters
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import errno
import ipaddress
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
HIJACK_SOURCE = "127.0.0.2"

RTP_HEADER_LEN = 12
PCMU_PAYLOAD_LEN = 160  # 20 ms of 8 kHz G.711
PACKET_MS = 20
PCMU_PT = 0

MEDIA_DIR = Path(__file__).resolve().parents[2] / "sipp_scenarios" / "media"

# SSRCs of the committed media files: one per side, kept across the phases of a call
SSRC_A = 0x0AAA0001  # what the caller (uac_rtp_*.xml) plays
SSRC_B = 0x0BBB0002  # what the callee (uas_rtp_*.xml) plays
SSRC_HIJACK = 0x0BAD0BAD
SSRC_ENDPOINT = 0x0EEE0003  # RtpEndpoint.send's default
KNOWN_SSRCS = (SSRC_A, SSRC_B, SSRC_HIJACK, SSRC_ENDPOINT)  # what LoopbackSniffer keeps by default

# hard bounds for the helpers' loops
MAX_RECORDED = 200_000  # datagrams one sniffer/endpoint keeps
MAX_RUN_S = 600.0  # a sniffer/endpoint thread stops by itself after this long
MAX_SEND = 10_000  # packets one send()/hijack() call may send


# --------------------------------------------------------------------------
# the RTP header


@dataclasses.dataclass(frozen=True)
class RtpPacket:
    """The fixed RTP header of one datagram (RFC 3550 5.1), plus its sizes."""

    version: int
    marker: bool
    pt: int
    seq: int
    ts: int
    ssrc: int
    size: int  # the whole UDP payload
    rtcp: bool = False  # an RTCP packet (second byte 200..204), not RTP: seq/ts/ssrc then 0

    @property
    def key(self) -> tuple[int, int]:
        """(ssrc, seq): what identifies one packet of the committed media files."""
        return (self.ssrc, self.seq)


_RTP = struct.Struct("!BBHII")


def build_rtp(
    seq: int,
    ts: int,
    ssrc: int,
    *,
    pt: int = PCMU_PT,
    marker: bool = False,
    payload: bytes | None = None,
    payload_len: int = PCMU_PAYLOAD_LEN,
) -> bytes:
    """One RTP packet: 12-byte header + payload (``payload_len`` bytes of PCMU silence 0xFF)."""
    if payload is None:
        payload = b"\xff" * payload_len
    return _RTP.pack(0x80, (0x80 if marker else 0) | (pt & 0x7F), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def parse_rtp(data: bytes) -> RtpPacket | None:
    """The RTP header of ``data``, or None if it is not RTP/RTCP version 2.

    SIP is text, so its first byte is never 0x80..0xBF: a SIP datagram gives None.
    """
    if len(data) < 8 or data[0] & 0xC0 != 0x80:
        return None
    if 200 <= data[1] <= 204:  # RTCP SR, RR, SDES, BYE, APP
        return RtpPacket(2, False, data[1], 0, 0, 0, len(data), rtcp=True)
    if len(data) < RTP_HEADER_LEN:
        return None
    b0, b1, seq, ts, ssrc = _RTP.unpack_from(data)
    return RtpPacket(2, bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc, len(data))


# --------------------------------------------------------------------------
# media files


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_rtp_pcap(
    path: str | os.PathLike,
    count: int,
    ssrc: int,
    *,
    first_seq: int = 0,
    first_ts: int = 0,
    pt: int = PCMU_PT,
    payload_len: int = PCMU_PAYLOAD_LEN,
    interval_ms: int = PACKET_MS,
    src: tuple[str, int] = ("10.0.0.1", 6000),
    dst: tuple[str, int] = ("10.0.0.2", 7000),
) -> None:
    """A pcap (Ethernet link type) of ``count`` RTP packets for SIPp's ``play_pcap_audio``.

    Packet i has sequence number ``first_seq + i``, timestamp ``first_ts + 160 i`` and a
    pcap timestamp of ``i * interval_ms``: SIPp paces the sending by the pcap timestamps.
    SIPp ignores the addresses here; it sends to the port the peer signalled plus (the
    packet's destination port - the lowest destination port in the file), so keep one ``dst``.
    """
    if not 0 < count <= 65535:
        raise ValueError("count must be 1..65535")
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # LINKTYPE_ETHERNET
    src_ip, dst_ip = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    samples = payload_len  # G.711: one 8 kHz sample per byte
    for i in range(count):
        rtp = build_rtp(first_seq + i, first_ts + i * samples, ssrc, pt=pt, marker=(i == 0), payload_len=payload_len)
        ulen = 8 + len(rtp)
        pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 17, ulen)
        udp_nock = struct.pack("!HHHH", src[1], dst[1], ulen, 0) + rtp
        ucs = _checksum(pseudo + udp_nock) or 0xFFFF
        udp = struct.pack("!HHHH", src[1], dst[1], ulen, ucs) + rtp
        ip_nock = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, i & 0xFFFF, 0x4000, 64, 17, 0, src_ip, dst_ip)
        ip = ip_nock[:10] + struct.pack("!H", _checksum(ip_nock)) + ip_nock[12:]
        frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + udp
        usec = i * interval_ms * 1000
        out.append(struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)) + frame)
    Path(path).write_bytes(b"".join(out))


def read_pcap_rtp(path: str | os.PathLike) -> list[RtpPacket]:
    """The RTP packets of a pcap written by :func:`write_rtp_pcap` (Ethernet/IPv4/UDP only)."""
    data = Path(path).read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    if magic != 0xA1B2C3D4:
        raise ValueError(f"{path}: not a little-endian microsecond pcap")
    linktype = struct.unpack_from("<I", data, 20)[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet (1)")
    pos = 24
    packets: list[RtpPacket] = []
    while pos + 16 <= len(data) and len(packets) < MAX_RECORDED:
        _s, _us, incl, _orig = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 0x0F) * 4
        if frame[14 + 9] != 17:
            continue
        rtp = parse_rtp(frame[14 + ihl + 8 :])
        if rtp is not None:
            packets.append(rtp)
    return packets


def write_pcmu_raw(path: str | os.PathLike, packets: int) -> None:
    """Raw G.711 u-law for ``rtp_stream="file,loops,0"``: exactly ``packets`` 20 ms packets.

    SIPp 3.6.1 sends the file as it is, 160 bytes per packet, wrapping to the start of the
    file for the last packet if the size is not a multiple of 160 (a WAV header would be
    sent as audio too): so write raw samples, ``packets * 160`` bytes.
    """
    Path(path).write_bytes(bytes(0x80 | (i % 64) for i in range(packets * PCMU_PAYLOAD_LEN)))


@dataclasses.dataclass(frozen=True)
class MediaFile:
    """One committed file under ``sipp_scenarios/media``: packets ``ssrc`` / first_seq.. ."""

    name: str  # as the scenarios name it: "media/<name>"
    ssrc: int
    first_seq: int
    count: int

    @property
    def path(self) -> Path:
        return MEDIA_DIR / self.name

    @property
    def duration_s(self) -> float:
        return self.count * PACKET_MS / 1000

    def packet_keys(self) -> list[tuple[int, int]]:
        """The (ssrc, seq) of every packet, in order."""
        return [(self.ssrc, (self.first_seq + i) & 0xFFFF) for i in range(self.count)]


# Distinct counts per side (50 from A, 40 from B, 30 while on hold) so that a mixed-up
# direction cannot pass; sequence numbers go on across the phases of one side, as a real
# endpoint's would, so each phase is a known sequence-number range of one SSRC.
MEDIA: dict[str, MediaFile] = {
    m.name: m
    for m in (
        MediaFile("rtp_a1.pcap", SSRC_A, 0, 50),  # A, first phase
        MediaFile("rtp_a2.pcap", SSRC_A, 50, 30),  # A, while on hold (a=sendonly: A still sends)
        MediaFile("rtp_a3.pcap", SSRC_A, 80, 50),  # A, after resume / after moving its port
        MediaFile("rtp_b1.pcap", SSRC_B, 0, 40),  # B, first phase
        MediaFile("rtp_b3.pcap", SSRC_B, 40, 40),  # B, after resume / after A moved its port
    )
}


@dataclasses.dataclass(frozen=True)
class ScenarioMedia:
    """What each side of one ``uac_rtp_X.xml``/``uas_rtp_X.xml`` pair plays, in order."""

    uac: tuple[str, ...]
    uas: tuple[str, ...]
    uac_ports: int = 1  # how many different local ports the caller signals ([media_port], +2)

    def uac_keys(self) -> list[tuple[int, int]]:
        return [k for name in self.uac for k in MEDIA[name].packet_keys()]

    def uas_keys(self) -> list[tuple[int, int]]:
        return [k for name in self.uas for k in MEDIA[name].packet_keys()]


SCENARIO_MEDIA: dict[str, ScenarioMedia] = {
    "basic": ScenarioMedia(uac=("rtp_a1.pcap",), uas=("rtp_b1.pcap",)),
    "hold": ScenarioMedia(uac=("rtp_a1.pcap", "rtp_a2.pcap", "rtp_a3.pcap"), uas=("rtp_b1.pcap", "rtp_b3.pcap")),
    "reinvite_port": ScenarioMedia(uac=("rtp_a1.pcap", "rtp_a3.pcap"), uas=("rtp_b1.pcap", "rtp_b3.pcap"), uac_ports=2),
    "silent": ScenarioMedia(uac=(), uas=()),
}


def expected_packets(pair: str) -> tuple[int, int]:
    """(packets the caller sends, packets the callee sends) in scenario pair ``pair``."""
    m = SCENARIO_MEDIA[pair]
    return len(m.uac_keys()), len(m.uas_keys())


def regenerate_media(directory: Path = MEDIA_DIR) -> list[Path]:
    """Rewrite every file of :data:`MEDIA` (byte-for-byte the same as the committed ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for m in MEDIA.values():
        path = directory / m.name
        write_rtp_pcap(path, m.count, m.ssrc, first_seq=m.first_seq, first_ts=m.first_seq * PCMU_PAYLOAD_LEN)
        written.append(path)
    return written


# --------------------------------------------------------------------------
# counting on the wire: an AF_PACKET socket on lo

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4  # sll_pkttype of the copy a packet socket sees as the packet leaves lo
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33  # not in Python's socket module

Addr = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Datagram:
    """One UDP datagram carrying RTP or RTCP, seen on the wire or by an endpoint."""

    time: float  # time.monotonic() when seen
    src: Addr
    dst: Addr
    rtp: RtpPacket


def _bpf(ssrcs: Iterable[int] | None) -> bytes:
    """A classic BPF program for a cooked (SOCK_DGRAM) packet socket, where offset 0 is the IP header.

    Accepts unfragmented IPv4 / IPv6 (no extension headers) UDP datagrams; with ``ssrcs``, only
    those whose RTP SSRC (payload bytes 8..11) or RTCP sender SSRC (bytes 4..7) is one of them,
    so that the kernel queues nothing else for us (other traffic on lo costs nothing and cannot
    make us drop packets).
    """
    ld_w, ld_h, ld_b, ld_ind, ldx_msh = 0x20, 0x28, 0x30, 0x40, 0xB1
    and_k, jeq, jset, ret = 0x54, 0x15, 0x45, 0x06
    ssrc_list = sorted(set(ssrcs)) if ssrcs is not None else None
    prog: list[tuple[int, object, object, int]] = []  # (code, jt label, jf label, k); labels resolved below
    labels: dict[str, int] = {}

    def op(code: int, k: int = 0, jt: object = None, jf: object = None) -> None:
        prog.append((code, jt, jf, k))

    def label(name: str) -> None:
        labels[name] = len(prog)

    def match_ssrc(load: int, offset: int) -> None:
        op(load, offset)
        for ssrc in ssrc_list or ():
            op(jeq, ssrc, "accept", None)

    op(ld_b, 0)
    op(and_k, 0xF0)
    op(jeq, 0x40, None, "v6")
    op(ld_b, 9)
    op(jeq, 17, None, "drop")
    op(ld_h, 6)
    op(jset, 0x1FFF, "drop", None)  # a later fragment has no UDP header
    if ssrc_list is None:
        op(ret, 0x40000)
    else:
        op(ldx_msh, 0)  # X = IPv4 header length
        match_ssrc(ld_ind, 8 + 8)  # RTP SSRC
        match_ssrc(ld_ind, 8 + 4)  # RTCP sender SSRC
        op(ret, 0)
    label("v6")
    op(jeq, 0x60, None, "drop")
    op(ld_b, 6)
    op(jeq, 17, None, "drop")
    if ssrc_list is None:
        op(ret, 0x40000)
    else:
        match_ssrc(ld_w, 40 + 8 + 8)
        match_ssrc(ld_w, 40 + 8 + 4)
    label("drop")
    op(ret, 0)
    label("accept")
    op(ret, 0x40000)

    out = []

    def rel(target: object, at: int) -> int:
        if target is None:
            return 0
        off = labels[str(target)] - at - 1
        if not 0 <= off <= 255:
            raise ValueError("BPF program too long (too many SSRCs)")
        return off

    for i, (code, jt, jf, k) in enumerate(prog):
        out.append(struct.pack("HBBI", code, rel(jt, i), rel(jf, i), k))
    return b"".join(out)


def _ssrc_of(payload: bytes) -> int | None:
    """SSRC of an RTP packet, or sender SSRC of an RTCP one."""
    if len(payload) >= 8 and 200 <= payload[1] <= 204:
        return struct.unpack_from("!I", payload, 4)[0]
    if len(payload) >= 12:
        return struct.unpack_from("!I", payload, 8)[0]
    return None


def _parse_ip_udp(pkt: bytes) -> tuple[Addr, Addr, bytes] | None:
    if not pkt:
        return None
    version = pkt[0] >> 4
    if version == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if len(pkt) < ihl + 8 or pkt[9] != 17:
            return None
        frag = struct.unpack_from("!H", pkt, 6)[0]
        if frag & 0x1FFF:  # a later fragment: no UDP header
            return None
        src_ip, dst_ip = socket.inet_ntop(socket.AF_INET, pkt[12:16]), socket.inet_ntop(socket.AF_INET, pkt[16:20])
        off = ihl
    elif version == 6:
        if len(pkt) < 48 or pkt[6] != 17:
            return None
        src_ip, dst_ip = socket.inet_ntop(socket.AF_INET6, pkt[8:24]), socket.inet_ntop(socket.AF_INET6, pkt[24:40])
        off = 40
    else:
        return None
    sport, dport, ulen = struct.unpack_from("!HHH", pkt, off)
    payload = pkt[off + 8 : off + max(ulen, 8)]
    return (src_ip, sport), (dst_ip, dport), payload


def raw_sockets_available() -> bool:
    """Whether both SIPp's pcap player (a raw IP socket, in the SIPp child) and
    :class:`LoopbackSniffer` (a packet socket) can work: root or CAP_NET_RAW. Skip otherwise."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except OSError:
        return False
    s.close()
    return LoopbackSniffer.available()


class LoopbackSniffer:
    """Every RTP/RTCP datagram that crosses the loopback interface while it runs.

    ``with LoopbackSniffer() as sniffer: ...`` then ``sniffer.rtp(dst_port=...)``. Each
    datagram is recorded once (the outgoing copy lo shows packet sockets is skipped), with its
    IP addresses and ports, so datagrams to and from a relay are separate records. Needs root
    or CAP_NET_RAW (see :meth:`available`). ``drops`` is what the kernel could not queue for
    us: a test that finds packets missing should first require ``drops == 0``.
    ``ssrcs`` (default: :data:`KNOWN_SSRCS`, those of the committed media files, the hijacker
    and :class:`RtpEndpoint`'s default) keeps only RTP/RTCP datagrams with one of those SSRCs,
    filtered in the kernel, so that unrelated traffic on lo (a benchmark, other tests) costs
    nothing; ``all_ssrcs=True`` keeps every RTP/RTCP datagram (needed for SIPp's
    ``rtp_stream``, which uses SSRCs of its own). ``ports``, if given, keeps only datagrams
    from or to one of those ports.
    """

    def __init__(
        self,
        ports: Iterable[int] | None = None,
        *,
        ssrcs: Iterable[int] | None = None,
        all_ssrcs: bool = False,
        iface: str = "lo",
        max_s: float = MAX_RUN_S,
    ):
        self.ports = frozenset(ports) if ports is not None else None
        self.ssrcs: frozenset[int] | None = None if all_ssrcs else frozenset(KNOWN_SSRCS if ssrcs is None else ssrcs)
        self.iface = iface
        self.max_s = max_s
        self.datagrams: list[Datagram] = []
        self.drops = 0
        self.overflow = False  # more than MAX_RECORDED datagrams: the rest were not kept
        self.kernel_filter = False  # whether the BPF filter is attached
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @staticmethod
    def available() -> bool:
        """Whether this process may open a packet socket (root or CAP_NET_RAW)."""
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        except OSError:
            return False
        s.close()
        return True

    def start(self) -> LoopbackSniffer:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)  # capped by rmem_max
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)  # not capped (root)
            code = _bpf(self.ssrcs)
            buf = ctypes.create_string_buffer(code)
            try:  # the filter saves work and drops; _record() checks the same things anyway
                fprog = struct.pack("HP", len(code) // 8, ctypes.addressof(buf))  # struct sock_fprog
                s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
                self.kernel_filter = True
            except OSError:
                self.kernel_filter = False
            s.bind((self.iface, 0))
            # discard what queued before the filter was attached, and reset the statistics
            s.setblocking(False)
            for _ in range(100_000):
                try:
                    s.recv(65535)
                except BlockingIOError:
                    break
            s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        except BaseException:
            s.close()
            raise
        self._sock = s
        self._thread = threading.Thread(target=self._run, name="rtp-sniffer", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    def _run(self) -> None:
        s = self._sock
        assert s is not None
        deadline = time.monotonic() + self.max_s
        self._ready.set()
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                r, _, _ = select.select([s], [], [], 0.05)
                if not r:
                    continue
                for _ in range(1000):  # drain what is queued, then look at the stop flag again
                    try:
                        pkt, addr = s.recvfrom(65535)
                    except BlockingIOError:
                        break
                    self._record(pkt, addr)
        finally:
            self._collect_drops()

    def _record(self, pkt: bytes, addr) -> None:
        if addr[2] == PACKET_OUTGOING or addr[1] not in (ETH_P_IP, ETH_P_IPV6):
            return
        parsed = _parse_ip_udp(pkt)
        if parsed is None:
            return
        src, dst, payload = parsed
        if self.ports is not None and src[1] not in self.ports and dst[1] not in self.ports:
            return
        rtp = parse_rtp(payload)
        if rtp is None:
            return
        if self.ssrcs is not None and _ssrc_of(payload) not in self.ssrcs:
            return  # the kernel filter does this too, unless it could not be attached
        with self._lock:
            if len(self.datagrams) >= MAX_RECORDED:
                self.overflow = True
                return
            self.datagrams.append(Datagram(time.monotonic(), src, dst, rtp))
            self._cond.notify_all()

    def _collect_drops(self) -> None:
        with contextlib.suppress(OSError):
            if self._sock is not None:
                _packets, drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                self.drops += drops

    def stop(self, settle_s: float = 0.2) -> LoopbackSniffer:
        """Stop after ``settle_s`` more seconds (for datagrams still in flight)."""
        if self._thread is None:
            return self
        time.sleep(settle_s)
        self._stop.set()
        self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        self._thread = None
        return self

    def __enter__(self) -> LoopbackSniffer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(settle_s=0 if exc[0] else 0.2)

    def rtp(
        self,
        *,
        src: Addr | None = None,
        dst: Addr | None = None,
        src_port: int | Iterable[int] | None = None,
        dst_port: int | Iterable[int] | None = None,
        ssrc: int | None = None,
        rtcp: bool = False,
    ) -> list[Datagram]:
        """The recorded RTP datagrams (RTCP with ``rtcp=True``) matching every given filter."""
        return filter_datagrams(
            self.snapshot(), src=src, dst=dst, src_port=src_port, dst_port=dst_port, ssrc=ssrc, rtcp=rtcp
        )

    def snapshot(self) -> list[Datagram]:
        with self._lock:
            return list(self.datagrams)

    def wait_for(self, count: int = 1, timeout: float = 5.0, **filters) -> list[Datagram]:
        """Wait until ``count`` datagrams matching ``filters`` (as :meth:`rtp`) were seen; returns them.

        Returns what there is after ``timeout`` (maybe fewer): check the length.
        """
        deadline = time.monotonic() + min(timeout, self.max_s)
        with self._cond:
            while True:
                got = filter_datagrams(self.datagrams, **filters)
                left = deadline - time.monotonic()
                if len(got) >= count or left <= 0 or self._stop.is_set():
                    return got
                self._cond.wait(min(left, 0.1))

    def flows(self) -> collections.Counter[tuple[Addr, Addr]]:
        """Datagrams per (source, destination): a quick picture for failure messages."""
        return collections.Counter((d.src, d.dst) for d in self.snapshot())


def _ports(p: int | Iterable[int] | None) -> frozenset[int] | None:
    if p is None:
        return None
    return frozenset([p]) if isinstance(p, int) else frozenset(p)


def _same_addr(a: Addr, b: Addr) -> bool:
    return a[1] == b[1] and ipaddress.ip_address(a[0]) == ipaddress.ip_address(b[0])


def filter_datagrams(
    datagrams: Iterable[Datagram],
    *,
    src: Addr | None = None,
    dst: Addr | None = None,
    src_port: int | Iterable[int] | None = None,
    dst_port: int | Iterable[int] | None = None,
    ssrc: int | None = None,
    rtcp: bool = False,
) -> list[Datagram]:
    sp, dp = _ports(src_port), _ports(dst_port)
    out = []
    for d in datagrams:
        if d.rtp.rtcp != rtcp:
            continue
        if src is not None and not _same_addr(d.src, src):
            continue
        if dst is not None and not _same_addr(d.dst, dst):
            continue
        if sp is not None and d.src[1] not in sp:
            continue
        if dp is not None and d.dst[1] not in dp:
            continue
        if ssrc is not None and d.rtp.ssrc != ssrc:
            continue
        out.append(d)
    return out


def keys(datagrams: Iterable[Datagram]) -> collections.Counter[tuple[int, int]]:
    """How many times each (ssrc, seq) occurs: compare with ``Counter(MediaFile.packet_keys())``."""
    return collections.Counter(d.rtp.key for d in datagrams)


def by_phase(datagrams: Iterable[Datagram], *, by: str = "dst") -> dict[str, collections.Counter[Addr]]:
    """For each committed media file, how many of its packets went to (``by="dst"``) or came
    from (``by="src"``) each address: e.g. after the port move,
    ``by_phase(d.b_to_a.delivered)["rtp_b3.pcap"] == {new_addr: 40}``."""
    owner = {k: m.name for m in MEDIA.values() for k in m.packet_keys()}
    out: dict[str, collections.Counter[Addr]] = {}
    for d in datagrams:
        name = owner.get(d.rtp.key)
        if name is not None:
            out.setdefault(name, collections.Counter())[getattr(d, by)] += 1
    return out


# --------------------------------------------------------------------------
# a Python RTP far end


class RtpEndpoint:
    """An RTP endpoint on a real UDP socket (symmetric: it sends from the port it listens on).

    ``with RtpEndpoint() as ep:`` binds ``127.0.0.1`` on a free port (``ep.addr``), and a
    thread records every datagram that arrives (``ep.received``: :class:`Datagram` with
    ``dst == ep.addr``; non-RTP datagrams are counted in ``ep.other``). With ``echo=True``
    each one is also sent back to its source. :meth:`send` sends a known number of packets.
    """

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int = 0,
        *,
        echo: bool = False,
        max_s: float = MAX_RUN_S,
    ):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, port))
        self.addr: Addr = self.sock.getsockname()[:2]
        self.echo = echo
        self.max_s = max_s
        self.received: list[Datagram] = []
        self.echoed = 0
        self.other = 0  # datagrams that were not RTP/RTCP
        self.errors: list[str] = []  # e.g. ICMP port unreachable reported on the socket
        self.sent: list[tuple[Addr, int, int]] = []  # (destination, ssrc, seq)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rtp-endpoint-{self.addr[1]}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.addr[1]

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                r, _, _ = select.select([self.sock], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                data, src = self.sock.recvfrom(65535)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                self.errors.append(repr(exc))
                if len(self.errors) > 1000:
                    return
                continue
            src = src[:2]
            rtp = parse_rtp(data)
            if self.echo:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, src)
                    self.echoed += 1
            with self._cond:
                if rtp is None:
                    self.other += 1
                elif len(self.received) < MAX_RECORDED:
                    self.received.append(Datagram(time.monotonic(), src, self.addr, rtp))
                self._cond.notify_all()

    def send(
        self,
        dest: Addr,
        count: int,
        *,
        ssrc: int = SSRC_ENDPOINT,
        first_seq: int = 0,
        first_ts: int = 0,
        pt: int = PCMU_PT,
        payload_len: int = PCMU_PAYLOAD_LEN,
        interval: float = PACKET_MS / 1000,
    ) -> list[tuple[int, int]]:
        """Send ``count`` packets to ``dest`` (blocking, paced by ``interval``); their (ssrc, seq)."""
        return _send_rtp(self.sock, dest, count, ssrc, first_seq, first_ts, pt, payload_len, interval, self.sent)

    def send_in_background(self, dest: Addr, count: int, **kwargs) -> threading.Thread:
        """:meth:`send` in a thread (join it before counting)."""
        t = threading.Thread(target=self.send, args=(dest, count), kwargs=kwargs, daemon=True)
        t.start()
        return t

    def wait_for(self, count: int, timeout: float = 5.0, **filters) -> list[Datagram]:
        """Wait until ``count`` RTP datagrams matching ``filters`` (as filter_datagrams) arrived."""
        deadline = time.monotonic() + min(timeout, self.max_s)
        with self._cond:
            while True:
                got = filter_datagrams(self.received, **filters)
                left = deadline - time.monotonic()
                if len(got) >= count or left <= 0:
                    return got
                self._cond.wait(min(left, 0.1))

    def packets(self, **filters) -> list[Datagram]:
        with self._lock:
            return filter_datagrams(list(self.received), **filters)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def __enter__(self) -> RtpEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _send_rtp(sock, dest, count, ssrc, first_seq, first_ts, pt, payload_len, interval, log) -> list[tuple[int, int]]:
    if not 0 <= count <= MAX_SEND:
        raise ValueError(f"count must be 0..{MAX_SEND}")
    sent = []
    start = time.monotonic()
    for i in range(count):
        seq = (first_seq + i) & 0xFFFF
        pkt = build_rtp(seq, first_ts + i * PCMU_PAYLOAD_LEN, ssrc, pt=pt, marker=(i == 0), payload_len=payload_len)
        try:
            sock.sendto(pkt, dest)
        except ConnectionRefusedError:  # an earlier datagram met a closed port; this one is sent
            sock.sendto(pkt, dest)
        sent.append((ssrc, seq))
        if log is not None:
            log.append((dest, ssrc, seq))
        if interval > 0 and i + 1 < count:
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return sent


def hijack(
    dest: Addr,
    count: int,
    *,
    source_ip: str = HIJACK_SOURCE,
    source_port: int = 0,
    ssrc: int = SSRC_HIJACK,
    first_seq: int = 0,
    interval: float = PACKET_MS / 1000,
) -> Addr:
    """Send ``count`` RTP packets to ``dest`` from another loopback address; returns the source.

    127.0.0.2 is as local as 127.0.0.1 on Linux (all of 127/8 is on lo), so no setup is
    needed; on IPv6 pass a ``source_ip`` the host has (only ``::1`` usually), with another
    port. A latching relay must drop all of them once it latched to the real party.
    """
    family = socket.AF_INET6 if ":" in source_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((source_ip, source_port))
        src = s.getsockname()[:2]
        _send_rtp(s, dest, count, ssrc, first_seq, 0, PCMU_PT, PCMU_PAYLOAD_LEN, interval, None)
    return src


class Hijacker:
    """In the background: once ``after`` packets of ``victim_ssrc`` crossed lo (so a relay has
    latched to the real sender), send ``count`` packets (SSRC :data:`SSRC_HIJACK`) from
    ``source_ip`` to where the victim sends: the relay's port for that party, or the peer
    itself without a relay. Start it next to a blocking ``run_sipp_pair``::

        with rtp.sniffing() as sn:
            hj = rtp.Hijacker(sn, victim_ssrc=rtp.SSRC_A).start()
            result = sipp_pair(daemon, "uas_rtp_basic.xml", "uac_rtp_basic.xml")
            hj.join()
        assert hj.sent == 20 and not sn.rtp(ssrc=rtp.SSRC_HIJACK, dst=...)

    ``target`` / ``source`` / ``sent`` / ``error`` tell what happened (``sent`` stays 0 if the
    victim never sent ``after`` packets within ``timeout`` seconds).
    """

    def __init__(
        self,
        sniffer: LoopbackSniffer,
        *,
        victim_ssrc: int = SSRC_A,
        after: int = 5,
        count: int = 20,
        source_ip: str = HIJACK_SOURCE,
        interval: float = PACKET_MS / 1000,
        timeout: float = 15.0,
    ):
        self.sniffer = sniffer
        self.victim_ssrc = victim_ssrc
        self.after = after
        self.count = count
        self.source_ip = source_ip
        self.interval = interval
        self.timeout = timeout
        self.target: Addr | None = None
        self.source: Addr | None = None
        self.sent = 0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="rtp-hijacker", daemon=True)

    def _run(self) -> None:
        try:
            seen = self.sniffer.wait_for(self.after, timeout=self.timeout, ssrc=self.victim_ssrc)
            if len(seen) < self.after:
                self.error = f"saw {len(seen)}/{self.after} packets of SSRC {self.victim_ssrc:#x}"
                return
            self.target = seen[0].dst
            self.source = hijack(self.target, self.count, source_ip=self.source_ip, interval=self.interval)
            self.sent = self.count
        except Exception as exc:  # reported through .error; a test thread must not die silently
            self.error = repr(exc)

    def start(self) -> Hijacker:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(self.timeout + self.count * self.interval + 5 if timeout is None else timeout)


# --------------------------------------------------------------------------
# the media addresses of a SIPp call, from its -trace_msg files

_C_RE = re.compile(r"(?m)^c=IN IP[46] (\S+)\s*$")
_M_RE = re.compile(r"(?m)^m=audio (\d+) ")


def sdp_audio(text: str) -> Addr | None:
    """(address, port) of the first audio stream of the SDP in a SIP message's text."""
    if "\n\n" in text.replace("\r\n", "\n"):
        body = text.replace("\r\n", "\n").split("\n\n", 1)[1]
    else:
        body = text
    c = _C_RE.search(body)
    m = _M_RE.search(body)
    if not (c and m):
        return None
    # a media-level c= line (after m=) wins over the session one
    c_after = _C_RE.search(body, m.end())
    addr = (c_after or c).group(1)
    return (addr, int(m.group(1)))


@dataclasses.dataclass
class SideMedia:
    """The media addresses of one SIPp side of a call, in the order they were signalled."""

    own: list[Addr]  # what it offered/answered (its own media sockets)
    peer: list[Addr]  # what the SDP it received said (the relay's ports, through a relay)

    @property
    def own_ports(self) -> set[int]:
        return {p for _, p in self.own}

    @property
    def peer_ports(self) -> set[int]:
        return {p for _, p in self.peer}


def side_media(message_file: Path) -> SideMedia:
    from .harness import traced_messages  # noqa: PLC0415 - harness imports nothing from here

    own: list[Addr] = []
    peer: list[Addr] = []
    for msg in traced_messages(message_file):
        addr = sdp_audio(msg.text)
        if addr is None:
            continue
        target = own if msg.direction == "sent" else peer
        if addr not in target:
            target.append(addr)
    return SideMedia(own=own, peer=peer)


@dataclasses.dataclass
class CallMedia:
    a: SideMedia  # the caller (UAC)
    b: SideMedia  # the callee (UAS)


def call_media(result) -> CallMedia:
    """The media addresses of a ``run_sipp_pair`` result (its ``-trace_msg`` files)."""
    return CallMedia(a=side_media(result.uac.message_file), b=side_media(result.uas.message_file))


@dataclasses.dataclass
class Direction:
    """One direction of media as the sniffer saw it; ``key`` is (ssrc, seq)."""

    name: str  # "A->B" or "B->A"
    sent: list[Datagram]  # datagrams that left the sender's own port(s)
    delivered: list[Datagram]  # datagrams that reached the receiver's own port(s)
    expected: list[tuple[int, int]]  # what the media files say the sender sends

    def missing(self) -> collections.Counter[tuple[int, int]]:
        """Sent but not delivered (or delivered fewer times than sent)."""
        return keys(self.sent) - keys(self.delivered)

    def extra(self) -> collections.Counter[tuple[int, int]]:
        """Delivered but never sent by the other side (duplicates, echoes, injected packets)."""
        return keys(self.delivered) - keys(self.sent)

    def unsent(self) -> collections.Counter[tuple[int, int]]:
        """In the media files but never seen leaving the sender."""
        return collections.Counter(self.expected) - keys(self.sent)


@dataclasses.dataclass
class MediaDelivery:
    a_to_b: Direction
    b_to_a: Direction
    media: CallMedia
    drops: int

    def describe(self) -> str:
        lines = [f"sniffer drops: {self.drops}", f"A signalled {self.media.a.own}, was given {self.media.a.peer}",
                 f"B signalled {self.media.b.own}, was given {self.media.b.peer}"]  # fmt: skip
        for d in (self.a_to_b, self.b_to_a):
            lines.append(
                f"{d.name}: expected {len(d.expected)}, sent {len(d.sent)}, delivered {len(d.delivered)}, "
                f"missing {sum(d.missing().values())}, extra {sum(d.extra().values())}, "
                f"never sent {sum(d.unsent().values())}"
            )
        return "\n".join(lines)


def media_delivery(sniffer: LoopbackSniffer, result, pair: str | ScenarioMedia) -> MediaDelivery:
    """Match what each SIPp side sent with what reached the other side's own media ports.

    Sent = datagrams whose source is one of the sender's own signalled addresses (whatever
    their destination: the relay's port, or the peer itself without a relay). Delivered =
    datagrams whose destination is one of the receiver's own addresses and whose SSRC is the
    sender's (so -rtp_echo reflections and hijackers are not credited as delivered).
    """
    spec = SCENARIO_MEDIA[pair] if isinstance(pair, str) else pair
    media = call_media(result)
    dgrams = sniffer.snapshot()

    from_anywhere = [d for d in dgrams if not d.rtp.rtcp]

    def from_side(side: SideMedia) -> list[Datagram]:
        return [d for d in from_anywhere if any(_same_addr(d.src, a) for a in side.own)]

    def to_side(side: SideMedia, ssrcs: set[int]) -> list[Datagram]:
        return [d for d in from_anywhere if d.rtp.ssrc in ssrcs and any(_same_addr(d.dst, a) for a in side.own)]

    a_ssrcs = {s for s, _ in spec.uac_keys()} or {SSRC_A}
    b_ssrcs = {s for s, _ in spec.uas_keys()} or {SSRC_B}
    a_sent = [d for d in from_side(media.a) if d.rtp.ssrc in a_ssrcs]
    b_sent = [d for d in from_side(media.b) if d.rtp.ssrc in b_ssrcs]
    return MediaDelivery(
        a_to_b=Direction("A->B", a_sent, to_side(media.b, a_ssrcs), spec.uac_keys()),
        b_to_a=Direction("B->A", b_sent, to_side(media.a, b_ssrcs), spec.uas_keys()),
        media=media,
        drops=sniffer.drops,
    )


def assert_media_delivered(delivery: MediaDelivery, *, exact: bool = True) -> None:
    """Every packet of the media files left its sender and reached the other side exactly once.

    With ``exact=False`` extra deliveries are allowed (only nothing may be missing).
    """
    problems = []
    if delivery.drops:
        problems.append(f"the sniffer lost {delivery.drops} datagrams: counts are not reliable")
    for d in (delivery.a_to_b, delivery.b_to_a):
        if d.unsent():
            problems.append(f"{d.name}: {sum(d.unsent().values())} packets of the media files never left the sender")
        if d.missing():
            problems.append(f"{d.name}: {sum(d.missing().values())} sent packets never arrived: {_seqs(d.missing())}")
        if exact and d.extra():
            extra = d.extra()
            problems.append(f"{d.name}: {sum(extra.values())} packets arrived that were not sent: {_seqs(extra)}")
    if problems:
        raise AssertionError("; ".join(problems) + "\n" + delivery.describe())


def _seqs(counter: collections.Counter[tuple[int, int]], limit: int = 20) -> str:
    items = sorted(counter.elements())
    text = ", ".join(f"{ssrc:#x}/{seq}" for ssrc, seq in items[:limit])
    return text + (" ..." if len(items) > limit else "")


def relay_hops(sniffer: LoopbackSniffer, media: CallMedia) -> dict[str, int]:
    """Datagrams on each of the four hops through a relay (A->relay, relay->B, B->relay, relay->A).

    The relay's ports are what each side was given (``peer``); compare these with the relay's
    per-port counters: packets accepted on A's relay port == ``a_to_relay``, and so on.
    """
    dg = [d for d in sniffer.snapshot() if not d.rtp.rtcp]

    def count(srcs: Sequence[Addr], dsts: Sequence[Addr]) -> int:
        return sum(1 for d in dg if any(_same_addr(d.src, s) for s in srcs) and any(_same_addr(d.dst, t) for t in dsts))

    return {
        "a_to_relay": count(media.a.own, media.a.peer),
        "relay_to_b": count(media.b.peer, media.b.own),
        "b_to_relay": count(media.b.own, media.b.peer),
        "relay_to_a": count(media.a.peer, media.a.own),
    }


def sipp_rtp_screen_counters(screen_text: str) -> dict[str, int]:
    """SIPp's RTP lines of a screen dumped with SIGUSR2 while it runs (the final screen has none).

    Keys as SIPp prints them, e.g. "Total echo RTP pckts 1st stream", "Total RTP pckts sent".
    """
    out: dict[str, int] = {}
    for m in re.finditer(r"(?m)^\s*(\d+) (Total [A-Za-z0-9 ]*?RTP pckts[A-Za-z0-9 ]*?)\s{2,}", screen_text):
        out[m.group(2).strip()] = int(m.group(1))
    return out


@contextlib.contextmanager
def sniffing(ports: Iterable[int] | None = None, **kwargs) -> Iterator[LoopbackSniffer]:
    """``with sniffing() as s:`` — a started :class:`LoopbackSniffer` (same arguments), stopped on exit."""
    s = LoopbackSniffer(ports, **kwargs).start()
    try:
        yield s
    finally:
        s.stop()
