"""The daemon process: on the C library's malloc, its relay on pymalloc (b2bua/allocator.py), its
hot modules compiled when the build matches the sources (b2bua/native.py), and the SIP UDP
receive buffer it asks the kernel for (b2bua/transport/udp.py)."""

from __future__ import annotations

import json
import os
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

pytestmark = pytest.mark.sipp


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def relay_pid(pid: int) -> int:
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"rtp_relay" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError("no embedded relay among the daemon's children")


def started_line(daemon) -> dict:
    deadline = time.monotonic() + 5  # /healthz may answer a moment before the line is written
    while time.monotonic() < deadline:
        for line in daemon.stdout_path.read_text().splitlines():
            if '"started"' in line:
                return json.loads(line)
        time.sleep(0.05)
    raise AssertionError("no started line")


@pytest.mark.skipif("PYTHONMALLOC" in os.environ, reason="the test run itself names an allocator")
def test_the_daemon_runs_on_malloc_and_its_relay_on_pymalloc(start_daemon, needs_daemon):
    daemon = start_daemon()
    assert environ(daemon.proc.pid).get("PYTHONMALLOC") == "malloc"
    assert "PYTHONMALLOC" not in environ(relay_pid(daemon.proc.pid))
    assert started_line(daemon)["allocator"] == "malloc"


def test_an_allocator_the_operator_names_is_kept(start_daemon, needs_daemon):
    daemon = start_daemon(env={"PYTHONMALLOC": "pymalloc"})
    assert environ(daemon.proc.pid).get("PYTHONMALLOC") == "pymalloc"
    assert environ(relay_pid(daemon.proc.pid)).get("PYTHONMALLOC") == "pymalloc"
    assert started_line(daemon)["allocator"] == "pymalloc"


def test_the_daemon_and_its_relay_run_the_compiled_modules_when_they_are_built(start_daemon, needs_daemon):
    from b2bua import native

    if native.check(native.native_dir()) != "compiled":
        pytest.skip(f"no usable build here: {native.check(native.native_dir())}")
    daemon = start_daemon()
    assert started_line(daemon)["native"] == "compiled"
    # One library in the build directory holds every compiled module (a module imported by
    # another compiled one is set up inside it, without its own small loader library).
    for pid in (daemon.proc.pid, relay_pid(daemon.proc.pid)):
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert any(line.endswith("__mypyc" + suffix) and str(native.native_dir()) in line
                   for line in maps.splitlines() for suffix in EXTENSION_SUFFIXES), pid


def test_b2bua_native_0_runs_the_sources(start_daemon, needs_daemon):
    daemon = start_daemon(env={"B2BUA_NATIVE": "0"})
    assert started_line(daemon)["native"] == "off (B2BUA_NATIVE=0)"
    for pid in (daemon.proc.pid, relay_pid(daemon.proc.pid)):
        assert "__mypyc" not in Path(f"/proc/{pid}/maps").read_text()


def test_a_capped_receive_buffer_is_reported(start_daemon, needs_daemon):
    cap = int(Path("/proc/sys/net/core/rmem_max").read_text())
    if 2 * cap > 1 << 30:
        pytest.skip("net.core.rmem_max is above what the setting accepts")
    too_big = 2 * cap
    daemon = start_daemon(env={"B2BUA_SIP__UDP_RECEIVE_BUFFER_BYTES": str(too_big)})
    started_line(daemon)
    warnings = [json.loads(line) for line in daemon.stdout_path.read_text().splitlines()
                if "udp_receive_buffer_capped" in line]
    assert warnings and warnings[0]["asked"] == too_big and warnings[0]["granted"] < too_big
