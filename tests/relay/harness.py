"""Runs `python -m rtp_relay` as a subprocess on 127.0.0.1 and talks ng to it over UDP."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rtp_relay import bencode

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def udp_socket(host: str = HOST, timeout: float = 2.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(timeout)
    return s


class NgClient:
    def __init__(self, control: tuple[str, int]) -> None:
        self.control = control
        self.sock = udp_socket()
        self._cookies = itertools.count(1)

    def raw(self, data: bytes, timeout: float = 2.0) -> bytes:
        self.sock.settimeout(timeout)
        self.sock.sendto(data, self.control)
        return self.sock.recv(65535)

    def __call__(self, command: str, **fields: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {"command": command}
        msg.update({k.replace("_", "-"): v for k, v in fields.items()})
        cookie = f"{os.getpid()}_{next(self._cookies)}".encode()
        data = cookie + b" " + bencode.encode(msg)
        for _ in range(3):  # ng clients retransmit with the same cookie
            try:
                reply = self.raw(data, timeout=2.0)
            except TimeoutError:
                continue
            got, _, body = reply.partition(b" ")
            assert got == cookie
            return _text(bencode.decode(body))
        raise TimeoutError(f"no reply to {command}")

    def close(self) -> None:
        self.sock.close()


def _text(value: Any) -> Any:
    """bytes -> str recursively, for readable assertions (SDP stays decodable)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    return value


class RelayProcess:
    def __init__(self, *extra: str, pairs: int = 20) -> None:
        self.control = (HOST, free_udp_port())
        self.http = (HOST, free_tcp_port())
        base = random.randrange(20000, 32000, 2)  # below the ephemeral range
        self.port_range = (base, base + 2 * pairs - 1)
        self.args = [sys.executable, "-m", "rtp_relay", "--control", f"{HOST}:{self.control[1]}",
                     "--address", HOST, "--ports", f"{self.port_range[0]}-{self.port_range[1]}",
                     "--http", f"{HOST}:{self.http[1]}", "--log-level", "info", *extra]
        self.proc: subprocess.Popen[bytes] | None = None
        self.ng: NgClient | None = None

    def start(self) -> RelayProcess:
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.ng = NgClient(self.control)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited {self.proc.returncode}: {self.proc.stderr.read().decode()}")
            try:
                if self.ng.raw(b"ready d7:command4:pinge", timeout=0.2).endswith(b"4:ponge"):
                    return self
            except TimeoutError:
                pass
        raise RuntimeError("relay did not answer ping")

    def metrics(self) -> dict[str, float]:
        url = f"http://{self.http[0]}:{self.http[1]}/metrics"
        with urllib.request.urlopen(url, timeout=3) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self, timeout: float = 10.0) -> tuple[int, str, str]:
        assert self.proc is not None
        if self.ng is not None:
            self.ng.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out.decode(), err.decode()


@contextlib.contextmanager
def running_relay(*extra: str, pairs: int = 20) -> Iterator[RelayProcess]:
    relay = RelayProcess(*extra, pairs=pairs)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


def sdp(port: int, host: str = HOST, direction: str = "sendrecv") -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=fmtp:101 0-15\r\na={direction}\r\n").encode()


def rtp(seq: int, ssrc: int = 0x1111) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + bytes(160)


def media_port(sdp_text: str) -> int:
    for line in sdp_text.splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise AssertionError("no m=audio line")


def receive_all(sock: socket.socket, count: int, timeout: float = 3.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(2048))
        except TimeoutError:
            break
    return got


def nothing_arrives(sock: socket.socket, wait: float = 0.3) -> bool:
    sock.settimeout(wait)
    try:
        sock.recv(2048)
    except TimeoutError:
        return True
    return False
