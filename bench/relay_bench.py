"""Load benchmark of the RTP relay, beside Debian's rtpengine (userspace) when it is installed.

How this works: for each relay under test the bench starts the daemon on 127.0.0.1, sets up N calls
over the ng protocol (offer + answer), then sends one RTP stream per call, 172-byte packets (12-byte
header + 160 bytes of G.711) at 50 packets/s each, for T seconds. All callers share one sending
socket and all callees one receiving socket (the relay tells streams apart by its own ports), so
this one process can source and sink tens of thousands of packets per second. It reports packets
forwarded per second, loss, the relay's CPU time per forwarded packet (utime + stime from
/proc/<pid>/stat over the send window, all threads) and its resident memory per call (VmRSS after
the calls are set up minus before). Everything stays on 127.0.0.1; every phase has a deadline.

    python bench/relay_bench.py [--streams 1000] [--seconds 10] [--skip-rtpengine]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rtp_relay import bencode  # noqa: E402

HOST = "127.0.0.1"
PACKET = 172
PTIME = 0.020
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    name: str
    streams: int
    seconds: float
    sent: int
    received: int
    cpu_s: float
    rss_per_call_kb: float
    setup_s: float
    note: str = ""

    @property
    def pps(self) -> float:
        return self.received / self.seconds if self.seconds else 0.0

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    @property
    def cpu_us_per_packet(self) -> float:
        return self.cpu_s * 1e6 / self.received if self.received else float("nan")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


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


def big_buffers(sock: socket.socket) -> None:
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # SO_RCVBUFFORCE / SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, 8 << 20)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)


def run_load(name: str, pid: int, ng: Ng, streams: int, seconds: float) -> Result:
    send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    send.bind((HOST, 0))
    recv.bind((HOST, 0))
    big_buffers(send)
    big_buffers(recv)
    caller_port, callee_port = send.getsockname()[1], recv.getsockname()[1]
    rss_before = rss_kb(pid)
    t0 = time.monotonic()
    targets = []
    for i in range(streams):
        cid = f"bench-{i}"
        offer = ng({"command": "offer", "call-id": cid, "from-tag": "caller", "sdp": sdp(caller_port)})
        if offer.get("result") != b"ok":
            raise RuntimeError(f"{name}: offer {i} failed: {offer}")
        answer = ng({"command": "answer", "call-id": cid, "from-tag": "caller", "to-tag": "callee",
                     "sdp": sdp(callee_port)})
        if answer.get("result") != b"ok":
            raise RuntimeError(f"{name}: answer {i} failed: {answer}")
        targets.append((HOST, media_port(answer["sdp"])))
    setup_s = time.monotonic() - t0
    rss_calls = rss_kb(pid)

    packets = [bytearray(struct.pack("!BBHII", 0x80, 0, 0, 0, 0x10000 + i) + bytes(PACKET - 12))
               for i in range(streams)]
    send.setblocking(False)
    recv.setblocking(False)
    sent = received = 0
    buf = bytearray(2048)
    cpu0 = cpu_seconds(pid)
    start = time.monotonic()
    end = start + seconds
    tick = 0
    pack_into = struct.pack_into
    while True:
        now = time.monotonic()
        if now >= end:
            break
        seq, ts = tick & 0xFFFF, (tick * 160) & 0xFFFFFFFF
        for pkt, addr in zip(packets, targets, strict=True):
            pack_into("!HI", pkt, 2, seq, ts)
            try:
                send.sendto(pkt, addr)
                sent += 1
            except BlockingIOError:
                pass  # our own send buffer is full: counted as not sent, not as relay loss
        tick += 1
        next_tick = start + tick * PTIME
        while True:
            try:
                while True:
                    recv.recv_into(buf)
                    received += 1
            except BlockingIOError:
                pass
            remaining = next_tick - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 0.002))
    drain_until = time.monotonic() + 1.0
    while time.monotonic() < drain_until:
        try:
            recv.recv_into(buf)
            received += 1
        except BlockingIOError:
            time.sleep(0.005)
    elapsed = time.monotonic() - start - 1.0
    cpu = cpu_seconds(pid) - cpu0
    for i in range(streams):
        with contextlib.suppress(TimeoutError):
            ng({"command": "delete", "call-id": f"bench-{i}"}, timeout=1.0)
    send.close()
    recv.close()
    behind = f"sender reached {sent / (streams * seconds / PTIME):.0%} of the target rate"
    return Result(name, streams, min(elapsed, seconds), sent, received, cpu,
                  (rss_calls - rss_before) / streams, setup_s, behind)


@contextlib.contextmanager
def started(cmd: list[str], ng_port: int, deadline_s: float = 15.0):  # type: ignore[no-untyped-def]
    log = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in the finally below
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    ng = Ng(ng_port)
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


def bench_ours(streams: int, seconds: float, base_port: int) -> Result:
    ng_port = free_port()
    cmd = [sys.executable, "-m", "rtp_relay", "--control", f"{HOST}:{ng_port}", "--address", HOST,
           "--ports", f"{base_port}-{base_port + 4 * streams + 99}", "--log-level", "warning"]
    with started(cmd, ng_port) as (proc, ng):
        return run_load("rtp_relay (Python, uvloop)", proc.pid, ng, streams, seconds)


def bench_rtpengine(streams: int, seconds: float, base_port: int) -> Result:
    ng_port = free_port()
    pidfile = tempfile.NamedTemporaryFile(suffix=".pid", delete=False)  # noqa: SIM115
    pidfile.close()
    cmd = ["rtpengine", "--config-file=none", "--foreground", "--log-stderr", "--log-level=3",
           "--table=-1", f"--interface={HOST}", f"--listen-ng={HOST}:{ng_port}",
           f"--port-min={base_port}", f"--port-max={base_port + 4 * streams + 99}",
           f"--pidfile={pidfile.name}"]
    try:
        with started(cmd, ng_port) as (proc, ng):
            return run_load("rtpengine (userspace)", proc.pid, ng, streams, seconds)
    finally:
        os.unlink(pidfile.name)


def table(results: list[Result]) -> str:
    rows = ["| relay | streams | packets/s forwarded | loss % | relay CPU µs/packet | RSS KiB/call | setup s | note |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        rows.append(f"| {r.name} | {r.streams} | {r.pps:,.0f} | {r.loss_pct:.2f} | {r.cpu_us_per_packet:.1f} | "
                    f"{r.rss_per_call_kb:.1f} | {r.setup_s:.1f} | {r.note} |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=1000, help="concurrent calls, one 50 pps stream each")
    p.add_argument("--seconds", type=float, default=10.0, help="send window per relay (max 60)")
    p.add_argument("--base-port", type=int, default=24000, help="first relay port (4 per stream are used)")
    p.add_argument("--skip-rtpengine", action="store_true")
    args = p.parse_args()
    seconds = min(max(args.seconds, 1.0), 60.0)
    streams = min(max(args.streams, 1), 4000)
    results = [bench_ours(streams, seconds, args.base_port)]
    skipped = ""
    if args.skip_rtpengine:
        skipped = "rtpengine: skipped (--skip-rtpengine)"
    elif shutil.which("rtpengine") is None:
        skipped = "rtpengine: skipped, not installed (Debian: apt-get install rtpengine)"
    else:
        try:
            results.append(bench_rtpengine(streams, seconds, args.base_port))
        except Exception as exc:  # report and keep our figures
            skipped = f"rtpengine: failed to run: {exc}"
    print(f"\n{streams} streams x 50 pps x {PACKET} B for {seconds:g} s per relay, 127.0.0.1, "
          f"{os.cpu_count()} CPUs\n")
    print(table(results))
    if skipped:
        print(f"\n{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
