"""The embedded relay: an `rtp_relay` child process the daemon starts when no relay is configured.

How this works: the daemon binds the relay's ng control socket itself (127.0.0.1, a free port) and
hands it to the child by file descriptor (`--control-fd`), so there is no window in which another
process could take the port and the control address is known before the child runs. The child
runs `python -m rtp_relay` with the `media.embedded` settings and `--exit-with-parent`, so it never
outlives the daemon (and a restarted daemon starts with a fresh relay: nothing leaks). If the
child dies, the relay pool notices the silence and ends the calls it carried; this supervisor logs
the exit and starts a new child on the same socket, so new calls get media again within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import Any

from .. import allocator
from ..config import MediaSettings
from ..transport.udp import ask_receive_buffer

RESTART_DELAY_S = 1.0
STOP_GRACE_S = 5.0


class EmbeddedRelay:
    def __init__(self, media: MediaSettings, log: Any, log_level: str = "info") -> None:
        self.media = media
        self.log_level = log_level
        self.log = log
        self.restarts = 0
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def control_address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, receive_buffer: int = 0) -> tuple[str, int]:
        """Start the relay on a control socket of ours; `receive_buffer` > 0 is asked for it (a
        burst of offers at a high call rate overflows the kernel's default, see transport/udp.py)."""
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ask_receive_buffer(self._sock, receive_buffer)
        self._sock.bind(("127.0.0.1", 0))
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._supervise())
        return self.control_address

    def _argv(self) -> list[str]:
        assert self._sock is not None
        e = self.media.embedded
        # The relay's own media timeout flags a silent call; the daemon asks for the flag and hangs up.
        timeout = self.media.timeout_s or 86400.0
        argv = [sys.executable, "-m", "rtp_relay", "--control-fd", str(self._sock.fileno()),
                "--exit-with-parent", "--address", e.address, "--ports", e.ports,
                "--media-timeout", str(timeout), "--hold-timeout", str(e.hold_timeout_s),
                "--log-level", self.log_level]
        if e.advertised_address:
            argv += ["--advertised-address", e.advertised_address]
        return argv

    async def _spawn(self) -> None:
        assert self._sock is not None
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv(), pass_fds=(self._sock.fileno(),), stdin=asyncio.subprocess.DEVNULL,
            env=allocator.relay_env())
        self.log.info("embedded_relay_started", pid=self._proc.pid, control="{}:{}".format(*self.control_address),
                      ports=self.media.embedded.ports)

    async def _supervise(self) -> None:
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._stopping:
                return
            self.log.error("embedded_relay_exited", pid=proc.pid, returncode=code, restart_in_s=RESTART_DELAY_S)
            await asyncio.sleep(RESTART_DELAY_S)
            if self._stopping:
                return
            self.restarts += 1
            try:
                await self._spawn()
            except OSError as exc:
                self.log.error("embedded_relay_restart_failed", error=str(exc))
                await asyncio.sleep(RESTART_DELAY_S)

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._sock is not None:
            self._sock.close()
            self._sock = None
