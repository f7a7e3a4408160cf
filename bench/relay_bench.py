"""Saturation benchmark of the RTP relay, beside Debian's rtpengine (userspace) in the same run.

How this works: a relay under test is started on 127.0.0.1 and given `max(streams)` calls over the
ng protocol (offer + answer); its RSS grows by the memory those sessions take (`KiB/session`). Then
the offered load climbs through steps (`--steps`, default 1,000 and 2,000 streams at 50 packets/s,
then 3,000 streams at 40 to 70 packets/s: 50,000 to 210,000 packets/s): one RTP stream per call,
172-byte packets (12-byte header + 160 bytes of G.711), caller to callee through the relay, for
`--seconds` per step. A packet counts as forwarded if it reaches the callee at most `DRAIN_S`
after the step's last one was sent: a relay that falls behind builds a queue, and RTP that late is
lost to the listener.

The load generator must not be what is measured: it runs in processes of its own, pinned to other
CPUs than the relay (`--relay-cpus`: by default the relay gets the last CPU, all of it, and
nothing else runs there), and it moves packets with sendmmsg/recvmmsg through ctypes (Python's
socket module has neither; one `sendto` per packet cost as much CPU as the relay under test).
Each sender process paces its share of the streams by the clock, round robin, one packet per
stream per round, sent as soon as due (smooth, not a burst every 20 ms). The sink naps 2 ms
between reads, so packets pile up into large recvmmsg batches and the relay's sends wake nobody.
The first payload byte carries the step's number and the sink counts only the current step's
packets, so late packets of a step that overloaded the relay cannot inflate the next one. Caller
and callee sockets are bound once per relay run, so the relay stays latched to them. Before the
relays, the generator is measured alone (senders straight into the sink) at the top step's rate
and flat out: a relay figure means something only below that.

Per step the bench records packets offered and forwarded, loss, the relay's CPU time (utime +
stime of the relay process from /proc/<pid>/stat over the step and its drain, all its threads,
nothing else) per forwarded packet, the busy time of the relay's core per packet (softirq work
included, which no process is billed for), the generator's CPU and that of any other process
(`foreign`: this machine may be shared; a step where others took more than `FOREIGN_MAX` of a CPU,
or where the generator fell behind, is run again, up to `RETRIES` times, keeping the least
disturbed). A relay stops climbing after two steps in a row at 0.1 % loss or worse. The relays run
in turns, A B A B ... (`--repeats`), and every figure is the median over the turns; the
saturation rate is the highest step whose median loss is under 0.1 %. rtpengine runs with
`--num-threads=1` by default (packets/s per core; rtp_relay is one thread); `--baseline DIR` adds
the rtp_relay package found in DIR (an older checkout) to the same turns, for before/after
figures. Everything stays on 127.0.0.1 and every phase has a deadline.

A packet socket open on the loopback interface (tcpdump, the media tests' sniffer) gets a copy of
every loopback packet, which costs each relay a good part of a microsecond per packet: the bench
warns when it sees one. `--netns` (root) runs the whole bench in a network namespace of its own,
with a loopback interface no other process uses or watches.

    python bench/relay_bench.py [--seconds 5] [--repeats 3] [--baseline DIR] [--skip-rtpengine] [--netns]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import multiprocessing as mp
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rtp_relay import bencode  # noqa: E402

HOST = "127.0.0.1"
PACKET = 172
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOSS_OK = 0.1  # percent
DRAIN_S = 0.2  # the sink counts this long after the senders stop: later is too late for RTP, so lost
SINK_NAP = 0.002
FOREIGN_MAX = 0.05  # a step during which other processes took more CPU than this is measured again
RETRIES = 3
SEND_NAP = 0.0005
DEFAULT_STEPS = "1000x50,2000x50,3000x40,3000x45,3000x50,3000x55,3000x60,3000x65,3000x70"
MAX_STREAMS = 4000  # 4 relay ports and file descriptors per stream
CTX = mp.get_context("fork")  # the children inherit the bound sockets


# -- measuring a process -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_times() -> dict[int, tuple[float, float]]:
    """Per core, CPU seconds since boot: (busy: all but idle and iowait, tasks: user + nice + system)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(v) for v in values[:8]]
                out[int(name[3:])] = ((sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK, sum(ticks[:3]) / CLK_TCK)
    return out


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# -- the load generator (child processes) --------------------------------------------------------


def big_buffers(sock: socket.socket, size: int = 8 << 20) -> None:
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # SO_RCVBUFFORCE / SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, size)


def udp(bind_port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, bind_port))
    big_buffers(s)
    s.setblocking(False)
    return s


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t), ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


MSG_DONTWAIT = 0x40
_libc = ctypes.CDLL(None, use_errno=True)
HAVE_MMSG = hasattr(_libc, "sendmmsg") and hasattr(_libc, "recvmmsg")


class Batch:
    """`count` datagrams of `size` bytes in one buffer, with the mmsghdr array for sendmmsg/recvmmsg.

    Python's socket module has no sendmmsg/recvmmsg, and one `sendto` per packet costs the generator
    about as much CPU as the relay it measures; through ctypes one system call moves up to a few
    hundred datagrams, leaving the generator mostly the kernel's own work, as a relay has too.
    """

    def __init__(self, count: int, size: int, targets: list[tuple[str, int]] | None = None) -> None:
        self.count, self.size = count, size
        self.buf = bytearray(count * size)
        self._cbuf = (ctypes.c_char * len(self.buf)).from_buffer(self.buf)
        base = ctypes.addressof(self._cbuf)
        self.iov = (_Iovec * count)()
        self.msgs = (_Mmsghdr * count)()
        self._names = None
        if targets is not None:
            names = b"".join(struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host)
                             + bytes(8) for host, port in targets)  # struct sockaddr_in, 16 bytes each
            self._names = ctypes.create_string_buffer(names, len(names))
        names_base = ctypes.addressof(self._names) if self._names is not None else 0
        for i in range(count):
            self.iov[i].iov_base = base + i * size
            self.iov[i].iov_len = size
            hdr = self.msgs[i].msg_hdr
            hdr.msg_iov = ctypes.pointer(self.iov[i])
            hdr.msg_iovlen = 1
            if names_base:
                hdr.msg_name = names_base + 16 * i
                hdr.msg_namelen = 16
        self._addr = ctypes.addressof(self.msgs)
        self._stride = ctypes.sizeof(_Mmsghdr)

    def send(self, fd: int, first: int, n: int) -> int:
        """sendmmsg of datagrams first..first+n-1; how many left, or -errno."""
        r = _libc.sendmmsg(fd, ctypes.c_void_p(self._addr + first * self._stride), n, MSG_DONTWAIT)
        return r if r >= 0 else -ctypes.get_errno()

    def receive(self, fd: int) -> int:
        r = _libc.recvmmsg(fd, ctypes.c_void_p(self._addr), self.count, MSG_DONTWAIT, None)
        return r if r >= 0 else -ctypes.get_errno()


def pin(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def sender(sock: socket.socket, targets: list[tuple[str, int]], ssrc_base: int, rate: float, tag: int,
           start: float, seconds: float, conn: Connection, cpus: set[int] | None = None) -> None:
    """Send one packet per target per round, `rate` packets/s in all, paced by the clock.

    The first payload byte is `tag`, the step's number, so the sink counts this step's packets only.
    """
    pin(cpus)
    n = len(targets)
    batch = Batch(n, PACKET, targets) if HAVE_MMSG else None
    buf = batch.buf if batch is not None else bytearray(n * PACKET)
    for i in range(n):
        struct.pack_into("!BBHIIB", buf, i * PACKET, 0x80, 0, 0, 0, ssrc_base + i, tag)
    view = memoryview(buf)
    fd = sock.fileno()
    monotonic, sleep = time.monotonic, time.sleep
    sent = failed = i = rnd = 0
    end = start + seconds
    cpu0 = self_cpu()
    while monotonic() < start:
        sleep(0.001)
    while True:
        now = monotonic()
        if now >= end:
            break
        due = min(int((now - start) * rate) - sent - failed, 256, n - i)
        if due <= 0:
            sleep(SEND_NAP)
            continue
        if batch is not None:
            r = batch.send(fd, i, due)
            if r < 0:
                if r != -errno.EAGAIN:
                    raise OSError(-r, os.strerror(-r))
                r = due  # our own send buffer is full: not offered, so not the relay's loss
                failed += r
            else:
                sent += r
            i += r
        else:
            for k in range(i, i + due):
                try:
                    sock.sendto(view[k * PACKET:(k + 1) * PACKET], targets[k])
                    sent += 1
                except BlockingIOError:
                    failed += 1
            i += due
        if i == n:
            # A new round: every stream's next packet has the same sequence number and timestamp,
            # so six extended-slice assignments (one per header byte, in C) update all of them.
            i = 0
            rnd += 1
            for offset, byte in enumerate(struct.pack("!HI", rnd & 0xFFFF, (rnd * 160) & 0xFFFFFFFF)):
                buf[2 + offset::PACKET] = bytes((byte,)) * n
    conn.send((sent, failed, self_cpu() - cpu0))
    conn.close()


def drain(socks: list[socket.socket], quiet: float = 0.3, limit: float = 10.0) -> None:
    """Read and discard until `socks` stay silent for `quiet` s (late packets of an earlier step)."""
    buf = bytearray(2048)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], quiet)
        if not ready:
            break
        for s in ready:
            with contextlib.suppress(BlockingIOError):
                for _ in range(100_000):
                    s.recv_into(buf)


def sink(socks: list[socket.socket], tag: int, until: float, conn: Connection, cpus: set[int] | None = None
         ) -> None:
    """Count the datagrams of step `tag` arriving on `socks` until the monotonic time `until`."""
    pin(cpus)
    received = 0
    buf = bytearray(2048)
    batch = Batch(256, 2048) if HAVE_MMSG else None
    mark = bytes((tag,))
    tag_at = 12  # the first payload byte
    cpu0 = self_cpu()
    while True:
        now = time.monotonic()
        if now >= until:
            break
        for s in socks:
            if batch is not None:
                fd = s.fileno()
                for _ in range(1000):
                    r = batch.receive(fd)
                    if r <= 0:
                        break
                    # the tag byte of each of the r datagrams, one extended slice, counted in C
                    received += batch.buf[tag_at:r * batch.size:batch.size].count(mark)
                continue
            with contextlib.suppress(BlockingIOError):
                for _ in range(100_000):
                    s.recv_into(buf)
                    received += buf[tag_at] == tag
        # Nap instead of waiting in select(): packets pile up into big recvmmsg batches, and with no
        # reader asleep on the socket the relay's sendto has nobody to wake (a remote receiver would
        # cost it no wake-up either). The buffer holds far more than a nap's worth.
        time.sleep(SINK_NAP)
    conn.send((received, self_cpu() - cpu0))
    conn.close()


@dataclass
class Generator:
    """The callers' sockets (one per sender process) and the callees' (the sink's), bound once."""

    senders: int
    sinks: int
    cpus: set[int] | None  # the generator's CPUs when the relay has its own
    callers: list[socket.socket] = field(init=False)
    callees: list[socket.socket] = field(init=False)

    def __post_init__(self) -> None:
        self.steps_run = 0
        self.callers = [udp() for _ in range(self.senders)]
        self.callees = [udp() for _ in range(self.sinks)]

    def caller_port(self, stream: int) -> int:
        return self.callers[stream % self.senders].getsockname()[1]

    def callee_port(self, stream: int) -> int:
        return self.callees[stream % self.sinks].getsockname()[1]

    def run(self, targets: list[tuple[str, int]], rate: float, seconds: float, pid: int | None = None,
            relay_cpus: set[int] | None = None) -> Measure:
        """Offer `rate` packets/s over `targets` (stream i from caller socket i % senders) for `seconds`."""
        drain(self.callees)  # late packets of an earlier step would only cost the sink time
        self.steps_run += 1
        tag = self.steps_run % 255 + 1
        start = time.monotonic() + 0.3  # every child is up and waiting before the first packet
        stop = start + seconds + DRAIN_S
        procs, pipes = [], []
        rx, tx = CTX.Pipe(duplex=False)
        procs.append(CTX.Process(target=sink, args=(self.callees, tag, stop, tx, self.cpus), daemon=True))
        pipes.append(rx)
        for k, sock in enumerate(self.callers):
            mine = targets[k::self.senders]
            if not mine:
                continue
            rx, tx = CTX.Pipe(duplex=False)
            share = rate * len(mine) / len(targets)
            procs.append(CTX.Process(target=sender, daemon=True,
                                     args=(sock, mine, 0x10000 * (k + 1), share, tag, start, seconds, tx, self.cpus)))
            pipes.append(rx)
        for p in procs:
            p.start()
        while time.monotonic() < start:
            time.sleep(0.001)
        cpu0 = cpu_seconds(pid) if pid else 0.0
        stat0 = cpu_times()
        t0 = time.monotonic()
        while time.monotonic() < stop:
            time.sleep(0.01)
        relay_cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
        stat1 = cpu_times()
        window = time.monotonic() - t0
        results: list[Any] = []
        for p, pipe in zip(procs, pipes, strict=True):
            results.append(pipe.recv() if pipe.poll(10) else None)
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        if any(r is None for r in results):
            raise RuntimeError("a generator process did not report")
        received, sink_cpu = results[0]
        busy = {cpu: stat1[cpu][0] - stat0[cpu][0] for cpu in stat1}
        return Measure(sent=sum(r[0] for r in results[1:]), received=received, seconds=seconds, window=window,
                       relay_cpu=relay_cpu, sender_cpu=sum(r[2] for r in results[1:]), sink_cpu=sink_cpu,
                       machine_tasks=sum(stat1[c][1] - stat0[c][1] for c in stat1),
                       core_busy=sum(busy[c] for c in relay_cpus) if relay_cpus else float("nan"),
                       send_failed=sum(r[1] for r in results[1:]), target=rate)

    def close(self) -> None:
        for s in self.callers + self.callees:
            s.close()


# -- ng control ----------------------------------------------------------------------------------


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Ng:
    def __init__(self, port: int) -> None:
        self.addr = (HOST, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.n = 0

    def __call__(self, msg: dict, timeout: float = 2.0) -> dict:
        self.n += 1
        cookie = b"b%d" % self.n
        data = cookie + b" " + bencode.encode(msg)
        for _ in range(3):
            self.sock.settimeout(timeout)
            self.sock.sendto(data, self.addr)
            try:
                while True:
                    reply = self.sock.recv(65535)
                    got, _, body = reply.partition(b" ")
                    if got == cookie:
                        return bencode.decode(body)
            except TimeoutError:
                continue
        raise TimeoutError(f"no ng reply to {msg.get('command')}")

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if self({"command": "ping"}, timeout=0.3).get("result") == b"pong":
                    return
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.1)
        raise TimeoutError("relay did not answer ping")

    def close(self) -> None:
        self.sock.close()


def sdp(port: int) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=bench\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n").encode()


def media_port(sdp_bytes: bytes) -> int:
    for line in sdp_bytes.decode().splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise ValueError("no m=audio")


# -- relays --------------------------------------------------------------------------------------


@dataclass
class Relay:
    key: str
    name: str
    cmd: list[str]
    ng_port: int
    cwd: Path = ROOT
    env: dict[str, str] | None = None


def our_relay(streams: int, base_port: int, tree: Path | None = None) -> Relay:
    """This tree's relay, or (`tree`) the rtp_relay package found in another directory."""
    ng_port = free_port()
    cmd = [sys.executable, "-m", "rtp_relay", "--control", f"{HOST}:{ng_port}", "--address", HOST,
           "--ports", f"{base_port}-{base_port + 4 * streams + 99}", "--log-level", "warning"]
    if tree is None:
        return Relay("rtp_relay", "rtp_relay (Python, uvloop)", cmd, ng_port)
    # `python -m` looks in the working directory first; the rest (b2bua.logs, ...) comes from here.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return Relay("baseline", f"rtp_relay from {tree}", cmd, ng_port, cwd=tree, env=env)


def rtpengine(streams: int, base_port: int, threads: int, pidfile: str) -> Relay:
    ng_port = free_port()
    cmd = ["rtpengine", "--config-file=none", "--foreground", "--log-stderr", "--log-level=3",
           "--table=-1", f"--interface={HOST}", f"--listen-ng={HOST}:{ng_port}",
           f"--port-min={base_port}", f"--port-max={base_port + 4 * streams + 99}",
           f"--pidfile={pidfile}"]
    if threads:
        cmd.append(f"--num-threads={threads}")
    return Relay("rtpengine", f"rtpengine (userspace{f', {threads} thread' if threads else ''})", cmd, ng_port)


@contextlib.contextmanager
def started(relay: Relay, cpus: set[int] | None, deadline_s: float = 15.0
            ) -> Iterator[tuple[subprocess.Popen[bytes], Ng]]:
    log = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in the finally below
    # Pinned before exec, so every thread the relay starts later inherits the same core(s).
    proc = subprocess.Popen(relay.cmd, cwd=relay.cwd, env=relay.env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    ng = Ng(relay.ng_port)
    try:
        ng.wait_ready(time.monotonic() + deadline_s)
        yield proc, ng
    except Exception:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-2000:])
        raise
    finally:
        ng.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@dataclass
class Step:
    streams: int
    pps_per_stream: float

    @property
    def rate(self) -> float:
        return self.streams * self.pps_per_stream

    def __str__(self) -> str:
        return f"{self.streams} x {self.pps_per_stream:g}"


@dataclass
class Measure:
    sent: int
    received: int
    seconds: float  # the send window
    window: float  # the CPU sampling window: the send window and the drain after it
    relay_cpu: float  # CPU seconds of the relay process (utime + stime), all its threads
    sender_cpu: float
    sink_cpu: float
    machine_tasks: float  # user + nice + system seconds of every core (/proc/stat): all processes
    core_busy: float  # all busy seconds of the relay's own core(s) when it is pinned, softirq included
    send_failed: int = 0
    target: float = 0.0  # packets/s asked of the generator

    @property
    def offered_pps(self) -> float:
        return self.sent / self.seconds

    @property
    def pps(self) -> float:
        return self.received / self.seconds

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 100.0

    @property
    def cpu_us(self) -> float:
        return self.relay_cpu * 1e6 / self.received if self.received else float("nan")

    @property
    def core_us(self) -> float:
        return self.core_busy * 1e6 / self.received if self.received else float("nan")

    @property
    def gen_cpu(self) -> float:
        return self.sender_cpu + self.sink_cpu

    @property
    def relay_cores(self) -> float:
        return self.relay_cpu / self.window

    @property
    def gen_cores(self) -> float:
        return self.gen_cpu / self.window

    @property
    def foreign_cores(self) -> float:
        """Processes that are neither the relay nor the generator: other work on a shared machine."""
        return max(self.machine_tasks - self.relay_cpu - self.gen_cpu, 0.0) / self.window

    @property
    def disturbed(self) -> str:
        """Why this measure is not to be trusted, or ''."""
        if self.foreign_cores > FOREIGN_MAX:
            return f"other processes took {self.foreign_cores:.0%} CPU"
        if self.sent < 0.98 * self.target * self.seconds:
            return f"the generator offered only {self.offered_pps:,.0f} of {self.target:,.0f} pps"
        return ""


@dataclass
class Turn:
    setup_s: float
    rss_per_session_kb: float
    steps: list[Measure | None]  # None: not run, an earlier step already failed twice


def run_relay(relay: Relay, steps: list[Step], seconds: float, gen: Generator, cpus: set[int] | None,
              stop_after_fail: int = 2) -> Turn:
    """Start `relay`, set up the calls, climb the steps."""
    streams = max(s.streams for s in steps)
    with started(relay, cpus) as (proc, ng):
        pid = proc.pid
        rss_before = rss_kb(pid)
        t0 = time.monotonic()
        targets = []
        for i in range(streams):
            cid = f"bench-{i}"
            offer = ng({"command": "offer", "call-id": cid, "from-tag": "caller", "sdp": sdp(gen.caller_port(i))})
            if offer.get("result") != b"ok":
                raise RuntimeError(f"{relay.name}: offer {i} failed: {offer}")
            answer = ng({"command": "answer", "call-id": cid, "from-tag": "caller", "to-tag": "callee",
                         "sdp": sdp(gen.callee_port(i))})
            if answer.get("result") != b"ok":
                raise RuntimeError(f"{relay.name}: answer {i} failed: {answer}")
            targets.append((HOST, media_port(answer["sdp"])))
        setup_s = time.monotonic() - t0
        time.sleep(0.5)
        rss = (rss_kb(pid) - rss_before) / streams
        out: list[Measure | None] = []
        failing = 0
        for step in steps:
            if failing >= stop_after_fail:
                out.append(None)
                continue
            # This machine may be shared: a step disturbed by other processes (or by a generator that
            # fell behind) is run again, and the least disturbed attempt is kept.
            attempts: list[Measure] = []
            for _ in range(1 + RETRIES):
                m = gen.run(targets[:step.streams], step.rate, seconds, pid, cpus)
                attempts.append(m)
                print(f"  {relay.key:>9} {str(step):>10} pps: offered {m.offered_pps:>9,.0f} forwarded "
                      f"{m.pps:>9,.0f} loss {m.loss_pct:6.2f} % relay {m.cpu_us:5.2f} µs/pkt, core {m.core_us:5.2f} "
                      f"µs/pkt (relay {m.relay_cores:4.0%}, generator {m.gen_cores:4.0%}, foreign "
                      f"{m.foreign_cores:4.0%} CPU){'  ' + m.disturbed + ': again' if m.disturbed else ''}",
                      flush=True)
                if not m.disturbed:
                    break
            m = min(attempts, key=lambda a: (bool(a.disturbed), a.foreign_cores))
            out.append(m)
            failing = failing + 1 if m.loss_pct >= LOSS_OK else 0
        for i in range(streams):
            with contextlib.suppress(TimeoutError):
                ng({"command": "delete", "call-id": f"bench-{i}"}, timeout=1.0)
    return Turn(setup_s, rss, out)


def generator_alone(gen: Generator, streams: int, rate: float, seconds: float) -> Measure:
    """Senders straight into the sink's sockets: what the generator offers and sinks with no relay."""
    targets = [gen.callees[i % len(gen.callees)].getsockname() for i in range(streams)]
    return gen.run(targets, rate, seconds)


# -- report --------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def parse_cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


CLONE_NEWNET = 0x40000000


def private_loopback() -> None:
    """Move this process (and the relays and generator it starts) into a new network namespace."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    done = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, timeout=10)
    if done.returncode != 0:
        raise OSError(f"ip link set lo up: {done.stderr.decode(errors='replace').strip()}")


def packet_sockets() -> int:
    try:
        with open("/proc/net/packet") as f:
            return max(len(f.readlines()) - 1, 0)
    except OSError:
        return 0


def write_json(path: Path, relays: list[Relay], runs: dict[str, list[Turn]], steps: list[Step],
               summary: list[tuple], seconds: float, repeats: int, flat: Measure, skipped: str) -> None:
    """The figures of the report above, for bench/run.py's table."""
    out: dict[str, Any] = {"seconds": seconds, "repeats": repeats, "generator_flat_out_pps": flat.pps,
                           "skipped": skipped, "relays": {}}
    names = {r.name: r.key for r in relays}
    for name, sat, cpu_first, cpu_sat, core_sat, rss, setup, top_passed in summary:
        key = names[name]
        per_step = []
        for k, step in enumerate(steps):
            ms = [x for t in runs[key] if (x := t.steps[k]) is not None]
            per_step.append({"step": str(step), "rate": step.rate, "turns": len(ms),
                             "pps": [m.pps for m in ms], "loss_pct": [m.loss_pct for m in ms],
                             "cpu_us": [m.cpu_us for m in ms], "foreign_cores": [m.foreign_cores for m in ms]})
        out["relays"][key] = {"name": name, "saturation_pps": sat, "top_step_passed": top_passed,
                              "cpu_us_first_step": cpu_first, "first_step": str(steps[0]),
                              "cpu_us_at_saturation": cpu_sat,
                              "core_us_at_saturation": core_sat, "rss_kib_per_session": rss, "setup_s": setup,
                              "steps": per_step}
    path.write_text(json.dumps(out, indent=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default=DEFAULT_STEPS, help=f"STREAMSxPPS,... offered in turn ({DEFAULT_STEPS})")
    p.add_argument("--seconds", type=float, default=5.0, help="send window per step (1-60)")
    p.add_argument("--repeats", type=int, default=3, help="turns per relay, alternating A B A B (1-9)")
    p.add_argument("--senders", type=int, default=1, help="sender processes (1-8)")
    p.add_argument("--sinks", type=int, default=1, help="callee sockets the sink process reads (1-64)")
    p.add_argument("--base-port", type=int, default=16000, help="first relay port (4 per stream are used)")
    p.add_argument("--relay-cpus", default="auto",
                   help="pin the relay to these CPUs (e.g. 1 or 2-3) and the generator to the rest; "
                        "'auto': the last CPU when there are 2 or more; 'none': no pinning")
    p.add_argument("--rtpengine-threads", type=int, default=1, help="rtpengine --num-threads; 0: its default")
    p.add_argument("--baseline", metavar="DIR", type=Path,
                   help="also run the rtp_relay package found in DIR (e.g. a checkout of the previous "
                        "version), in the same turns, for before/after figures")
    p.add_argument("--skip-rtpengine", action="store_true")
    p.add_argument("--only", choices=["rtp_relay", "rtpengine"], help="run one relay only")
    p.add_argument("--json", metavar="FILE", type=Path,
                   help="also write the summary (per relay) and every step's medians to FILE as JSON")
    p.add_argument("--netns", action="store_true",
                   help="run in a network namespace of our own (needs root and `ip`): no other process's "
                        "traffic or sniffer on our loopback interface")
    args = p.parse_args()
    if args.netns:
        try:
            private_loopback()
        except OSError as exc:
            p.error(f"--netns: {exc}")
    sniffers = packet_sockets()
    if sniffers:
        print(f"warning: {sniffers} packet socket(s) open in this network namespace (a sniffer?): each gets a "
              "copy of every loopback packet, which slows every relay measured; --netns avoids them", flush=True)
    seconds = min(max(args.seconds, 1.0), 60.0)
    repeats = min(max(args.repeats, 1), 9)
    steps = []
    for item in args.steps.split(","):
        n, _, pps = item.strip().partition("x")
        steps.append(Step(min(max(int(n), 1), MAX_STREAMS), min(max(float(pps or 50), 1.0), 1000.0)))
    streams = max(s.streams for s in steps)
    all_cpus = os.sched_getaffinity(0)
    relay_cpus: set[int] | None = None
    if args.relay_cpus == "auto":
        relay_cpus = {max(all_cpus)} if len(all_cpus) >= 2 else None
    elif args.relay_cpus != "none":
        relay_cpus = parse_cpus(args.relay_cpus)
    gen_cpus = (all_cpus - relay_cpus) if relay_cpus else None
    if relay_cpus is not None and not gen_cpus:
        p.error("--relay-cpus leaves no CPU for the generator")
    if gen_cpus:
        os.sched_setaffinity(0, gen_cpus)  # this process, its children and the generator
    gen = Generator(min(max(args.senders, 1), 8), min(max(args.sinks, 1), 64), gen_cpus)

    pidfile = tempfile.NamedTemporaryFile(suffix=".pid", delete=False)  # noqa: SIM115
    pidfile.close()
    relays = [] if args.only == "rtpengine" else [our_relay(streams, args.base_port)]
    if args.baseline is not None:
        if not (args.baseline / "rtp_relay" / "__main__.py").is_file():
            p.error(f"--baseline: no rtp_relay package in {args.baseline}")
        relays.insert(0, our_relay(streams, args.base_port, args.baseline.resolve()))
    skipped = ""
    if args.skip_rtpengine or args.only == "rtp_relay":
        skipped = "rtpengine: skipped"
    elif shutil.which("rtpengine") is None:
        skipped = "rtpengine: skipped, not installed (Debian: apt-get install rtpengine)"
    else:
        relays.append(rtpengine(streams, args.base_port, args.rtpengine_threads, pidfile.name))

    runs: dict[str, list[Turn]] = {r.key: [] for r in relays}
    try:
        top = max(s.rate for s in steps)
        print(f"generator alone, senders -> sink, {seconds:g} s, on CPUs {sorted(gen_cpus or all_cpus)}:", flush=True)
        paced = generator_alone(gen, streams, top, seconds)
        flat = generator_alone(gen, streams, 10 * top, seconds)
        for label, m in (("paced at the top step", paced), ("flat out", flat)):
            sender_us, sink_us = 1e6 * m.sender_cpu / max(m.sent, 1), 1e6 * m.sink_cpu / max(m.received, 1)
            print(f"  {label}: offered {m.offered_pps:,.0f} pps, sunk {m.pps:,.0f} pps ({m.loss_pct:.2f} % lost); "
                  f"sender {sender_us:.2f} µs/pkt, sink {sink_us:.2f} µs/pkt, generator {m.gen_cores:.0%} CPU",
                  flush=True)
        for turn in range(repeats):
            for relay in relays:
                print(f"turn {turn + 1}/{repeats}: {relay.name}", flush=True)
                try:
                    runs[relay.key].append(run_relay(relay, steps, seconds, gen, relay_cpus))
                except Exception as exc:  # report and keep the other relay's figures
                    print(f"  failed: {exc}", flush=True)
    finally:
        gen.close()
        os.unlink(pidfile.name)

    pinning = (f"relay pinned to CPU {sorted(relay_cpus)}, generator to {sorted(gen_cpus or [])}" if relay_cpus
               else "no pinning")
    print(f"\n{os.cpu_count()} CPUs ({pinning}), 127.0.0.1, {PACKET}-byte RTP, {seconds:g} s per step, median of "
          f"{repeats} alternating turns; generator: {gen.senders} sender process(es) and 1 sink process, "
          f"flat out {flat.offered_pps:,.0f} pps offered, {flat.pps:,.0f} sunk\n")
    print("| step (streams x pps) | relay | offered pps | forwarded pps | loss % | relay µs/pkt | core µs/pkt | "
          "relay CPU | generator CPU | foreign CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    for relay in relays:
        turns = runs[relay.key]
        if not turns:
            continue
        saturation, sat_step = 0.0, -1
        for k, step in enumerate(steps):
            ms = [x for t in turns if (x := t.steps[k]) is not None]
            if not ms:
                continue
            loss = median([m.loss_pct for m in ms])
            # A step some turn skipped (two failures below it) counts as failed.
            if len(ms) == len(turns) and loss < LOSS_OK:
                saturation, sat_step = median([m.pps for m in ms]), k
            print(f"| {step} | {relay.name} | {median([m.offered_pps for m in ms]):,.0f} | "
                  f"{median([m.pps for m in ms]):,.0f} | {loss:.3f} | {median([m.cpu_us for m in ms]):.2f} | "
                  f"{median([m.core_us for m in ms]):.2f} | {median([m.relay_cores for m in ms]):.0%} | "
                  f"{median([m.gen_cores for m in ms]):.0%} | {median([m.foreign_cores for m in ms]):.0%} |")

        def at(k: int, key: str, turns: list[Turn] = turns) -> float:
            return median([getattr(t.steps[k], key) for t in turns if k >= 0 and t.steps[k] is not None])

        summary.append((relay.name, saturation, at(0, "cpu_us"), at(sat_step, "cpu_us"), at(sat_step, "core_us"),
                        median([t.rss_per_session_kb for t in turns]), median([t.setup_s for t in turns]),
                        sat_step == len(steps) - 1))
    print(f"\n| relay | saturation pps (< {LOSS_OK} % loss) | relay µs/pkt at {steps[0]} | "
          "relay µs/pkt at saturation | core µs/pkt at saturation | RSS KiB/session | setup s (all calls) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, sat, cpu_first, cpu_sat, core_sat, rss, setup, top_passed in summary:
        print(f"| {name} | {'>= ' if top_passed else ''}{sat:,.0f} | {cpu_first:.2f} | {cpu_sat:.2f} | "
              f"{core_sat:.2f} | {rss:.1f} | {setup:.1f} |")
    print("\nrelay µs/pkt: CPU time (utime + stime) of the relay process per forwarded packet; core µs/pkt: all busy "
          "time of its pinned core(s)\nper forwarded packet, softirq included; foreign CPU: processes that are neither "
          "relay nor generator (a step\nwith more than 5 % is measured again, up to 3 times).")
    if any(t for *_, t in summary):
        print("'>=': the top step passed, so the saturation rate is higher: raise --steps")
    if args.json is not None:
        write_json(args.json, relays, runs, steps, summary, seconds, repeats, flat, skipped)
    if skipped:
        print(f"\n{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
