"""The memory allocator the daemon's interpreter runs on: the C library's malloc, and why.

How this works: CPython's own small-object allocator (pymalloc) carves objects out of 1 MiB arenas
and gives an arena back to the system only once every object in it is gone. After a load peak, a
few objects that outlive the peak (a table compacted, a timer handle, a log line's buffers) are
spread over most of the arenas the peak created and pin them all. Measured with bench/memory.py
after 20,000 held calls had ended and the settling pass had run (trim.py): RSS stayed 150 % above
its pre-load value, and still 36 % above once the pass emptied the attribute cache (trim.py),
with about a hundred objects from the peak left alive (tracemalloc). On glibc's malloc the same
pass gives back every page that holds nothing live (`malloc_trim`): RSS ends within a few percent
of its pre-load value (-1.1 % in three runs in a row). The price is a little CPU: at 600 calls/s
(four alternating rounds, medians) 0.99 ms per call against 0.92 ms on pymalloc.

The allocator is fixed when the interpreter starts (PYTHONMALLOC), so `choose()`, the first thing
the `b2bua` command runs, executes the same command line once more with PYTHONMALLOC=malloc: same
process id, so systemd, Docker and the tests see no difference. An allocator the environment
already names is the operator's choice and is kept (PYTHONMALLOC=pymalloc runs CPython's own).
The embedded RTP relay is started back on pymalloc (`relay_env`): it allocates per packet, and
its memory after a peak is its port table, not scattered call state.
"""

from __future__ import annotations

import os
import sys

CHOSEN_MARK = "B2BUA_ALLOCATOR_CHOSEN"  # set with PYTHONMALLOC when `choose` set it, not the operator


def choose() -> None:
    """Re-execute this command on the C library's malloc, unless an allocator is already named.
    Returns only when nothing was to be done or the exec failed (then pymalloc it is)."""
    if "PYTHONMALLOC" in os.environ or not sys.executable:
        return
    env = dict(os.environ, PYTHONMALLOC="malloc", **{CHOSEN_MARK: "1"})
    try:
        # sys.orig_argv keeps the interpreter's own options and how it was started (the console
        # script's path, or `-m b2bua`), so the new image runs exactly what was asked for.
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return


def relay_env() -> dict[str, str] | None:
    """The environment for the embedded relay's process: `choose`'s setting undone, or None
    (inherit ours) when the operator named the allocator."""
    if os.environ.get(CHOSEN_MARK) != "1":
        return None
    env = dict(os.environ)
    env.pop("PYTHONMALLOC", None)
    env.pop(CHOSEN_MARK, None)
    return env


def current() -> str:
    """The allocator in use, for the start-up log line."""
    return os.environ.get("PYTHONMALLOC") or "pymalloc"
