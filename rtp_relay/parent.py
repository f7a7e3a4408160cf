"""Tie the relay's life to its parent's (`--exit-with-parent`), for a relay embedded in a B2BUA.

How this works: an embedded relay holds ports its parent handed out; if the parent dies (even by
SIGKILL, which runs no cleanup) the relay must not linger holding them. On Linux,
`prctl(PR_SET_PDEATHSIG, SIGTERM)` asks the kernel to send us SIGTERM when the parent goes, and
SIGTERM is the daemon's normal, graceful shutdown. `ParentWatch.gone()` compares `os.getppid()`
with the parent we started under (an orphan is re-parented to init or a subreaper); the daemon
calls it right after its signal handlers are in place (a parent that died before prctl was armed
sends no signal) and then once a second from its tick, which is the whole mechanism where prctl is
unavailable and costs one syscall a second where it is not. Caveat of prctl: the signal fires
when the parent *thread* that forked us exits, so a parent should spawn the relay from a
long-lived thread (its event loop thread), not from a pool worker that may be retired.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel for `sig` when our parent exits; False when this platform cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return bool(prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)


class ParentWatch:
    """Knows the parent we started under and whether it is still our parent."""

    def __init__(self, parent_pid: int, getppid: Callable[[], int] = os.getppid) -> None:
        self.parent_pid = parent_pid
        self._getppid = getppid
        self.signalled = False  # True once prctl is armed, for the start-up log

    def arm(self) -> None:
        self.signalled = set_parent_death_signal()

    def gone(self) -> bool:
        return self._getppid() != self.parent_pid
