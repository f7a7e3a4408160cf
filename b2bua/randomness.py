"""Random identifiers (tags, branches, Call-IDs, API ids, SDP session ids), read from the kernel in blocks.

How this works: every identifier the daemon makes up comes from the kernel's CSPRNG (`os.urandom`),
as `secrets` would draw it, but `os.urandom(n)` is one `getrandom` system call per identifier and a
call needs about nine (two tags, a Call-ID, a branch per client transaction, two SDP session ids,
an API id). `RandomPool` reads 4 KiB at a time and hands out consecutive slices, so the bytes are
the kernel's all the same and a system call serves a few hundred identifiers. No byte is handed
out twice. After a fork the child drops the parent's block (`os.register_at_fork`), so two processes
never make the same identifiers. Only the event loop's thread draws from the pool.
"""

from __future__ import annotations

import os

from mypy_extensions import mypyc_attr

BLOCK = 4096


@mypyc_attr(acyclic=True)
class RandomPool:
    __slots__ = ("_block", "_pos")

    def __init__(self) -> None:
        self._block = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        """`n` random bytes (n <= BLOCK), never handed out before."""
        pos = self._pos
        end = pos + n
        if end > len(self._block):
            self._block = os.urandom(max(BLOCK, n))
            pos, end = 0, n
        self._pos = end
        return self._block[pos:end]

    def drop(self) -> None:
        """Forget the block read so far (the next draw reads a new one)."""
        self._block = b""
        self._pos = 0


_POOL = RandomPool()
os.register_at_fork(after_in_child=_POOL.drop)


def random_bytes(n: int) -> bytes:
    return _POOL.take(n)


def random_hex(n: int) -> str:
    """`n` random bytes as 2n lower-case hex digits."""
    return _POOL.take(n).hex()
