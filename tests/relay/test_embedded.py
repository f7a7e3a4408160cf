"""The relay as a B2BUA's embedded child: an inherited control socket, and no life after the parent.

A stand-in parent (a small Python process) binds the ng control socket itself, starts the relay
with `--control-fd N --exit-with-parent` passing that descriptor down, closes its own copy and
sleeps. The test talks ng to the address the parent bound, sets up a call so media ports are held,
then SIGKILLs the parent (no cleanup runs in it) and expects the relay to shut down gracefully on
its own within a few seconds, releasing the control and media ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from .harness import HOST, ROOT, NgClient, media_port, sdp, udp_socket

PARENT = textwrap.dedent("""
    import socket, subprocess, sys, time
    log_path, ports = sys.argv[1], sys.argv[2]
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl.bind(("127.0.0.1", 0))  # bound before the child exists: no port race
    with open(log_path, "wb") as log:
        relay = subprocess.Popen(
            [sys.executable, "-m", "rtp_relay", "--control-fd", str(ctl.fileno()), "--exit-with-parent",
             "--address", "127.0.0.1", "--ports", ports, "--log-level", "info"],
            pass_fds=[ctl.fileno()], stdout=log, stderr=subprocess.STDOUT)
    port = ctl.getsockname()[1]
    ctl.close()  # the relay owns the socket now
    print(relay.pid, port, flush=True)
    time.sleep(60)  # until the test kills us
""")


def exited(pid: int) -> bool:
    """True once `pid` is gone or a zombie (re-parented to an init that may not reap it at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def log_events(path: Path) -> dict[str, dict]:
    events = {}
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            events[record.get("event", "")] = record
    return events


def test_inherited_control_socket_and_exit_with_parent(tmp_path: Path) -> None:
    log = tmp_path / "relay.log"
    base = 20000 + 2 * (os.getpid() % 4000)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(log), f"{base}-{base + 39}"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    relay_pid = 0
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().decode()  # the parent prints at once, well before its 60 s sleep
        relay_pid, control_port = (int(x) for x in line.split())
        pinger = NgClient((HOST, control_port))
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the relay answers on the socket the parent bound
                with contextlib.suppress(TimeoutError):
                    if pinger.raw(b"p1 d7:command4:pinge", timeout=0.2) == b"p1 d6:result4:ponge":
                        break
            else:
                raise AssertionError(f"no pong: {log.read_text()}")
        finally:
            pinger.close()  # late pongs to retried pings stay on this socket
        ng = NgClient((HOST, control_port))
        try:
            caller = udp_socket()
            offer = ng("offer", call_id="embedded", from_tag="a", sdp=sdp(caller.getsockname()[1]))
            assert offer["result"] == "ok", offer
            held = media_port(offer["sdp"])
            assert not bindable(held) and not bindable(control_port)
            caller.close()
        finally:
            ng.close()

        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=5)
        deadline = time.monotonic() + 5
        while not exited(relay_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exited(relay_pid), f"relay outlived its parent: {log.read_text()}"
        events = log_events(log)
        started = events["relay_started"]
        assert started["control"] == f"{HOST}:{control_port}" and started["exit_with_parent"] == "prctl"
        stopped = events["relay_stopped"]  # a graceful SIGTERM shutdown, not a kill
        assert stopped["ports_released"] == 4 and stopped["leak"] is None, stopped
        assert bindable(held) and bindable(control_port)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=5)
        if relay_pid and not exited(relay_pid):
            os.kill(relay_pid, signal.SIGKILL)


def test_control_fd_must_be_a_bound_udp_socket() -> None:
    def run(*flags: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "rtp_relay", "--address", HOST, "--ports", "20000-20009",
                               *flags], cwd=ROOT, capture_output=True, timeout=20, pass_fds=pass_fds)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((HOST, 0))
        r = run("--control-fd", str(tcp.fileno()), pass_fds=(tcp.fileno(),))
        assert r.returncode == 1 and b"not a UDP socket" in r.stderr, r.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unbound:
        r = run("--control-fd", str(unbound.fileno()), pass_fds=(unbound.fileno(),))
        assert r.returncode == 1 and b"not bound" in r.stderr, r.stderr
    with open(os.devnull, "rb") as not_a_socket:
        r = run("--control-fd", str(not_a_socket.fileno()), pass_fds=(not_a_socket.fileno(),))
        assert r.returncode == 1 and b"cannot start" in r.stderr, r.stderr
    r = run("--control", f"{HOST}:2223", "--control-fd", "3")
    assert r.returncode == 2 and b"exclusive" in r.stderr, r.stderr


def test_polling_fallback_notices_the_parent_going() -> None:
    """Without prctl the daemon's once-a-second tick compares getppid() with the parent it started under."""
    from rtp_relay.config import load_settings
    from rtp_relay.daemon import RelayDaemon
    from rtp_relay.parent import ParentWatch

    ppids = iter([4242, 4242])  # checked at start-up and on the first tick; then re-parented to init

    watch = ParentWatch(4242, getppid=lambda: next(ppids, 1))  # never armed: as where prctl is missing
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl.bind((HOST, 0))
    settings = load_settings({"control_fd": ctl.fileno(), "address": HOST, "ports": "20000-20009",
                              "exit_with_parent": True})
    daemon = RelayDaemon(settings, watch)
    started = time.monotonic()
    try:
        rc = asyncio.run(asyncio.wait_for(daemon.run(), timeout=10))
    finally:
        ctl.detach()  # the daemon owned and closed the descriptor; closing it again could hit a reused fd
    assert rc == 0 and 1.0 <= time.monotonic() - started < 5
    assert next(ppids, None) is None


def test_prctl_arms_the_parent_death_signal() -> None:
    """In a throwaway child (prctl would otherwise stick to the test process): PR_GET_PDEATHSIG reads it back."""
    code = textwrap.dedent("""
        import ctypes, signal
        from rtp_relay.parent import set_parent_death_signal
        assert set_parent_death_signal()
        got = ctypes.c_int()
        assert ctypes.CDLL(None).prctl(2, ctypes.byref(got), 0, 0, 0) == 0  # PR_GET_PDEATHSIG
        print(got.value == signal.SIGTERM)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=20)
    assert r.stdout.strip() == b"True", r.stderr
