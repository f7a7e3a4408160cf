"""The pool of random bytes behind tags, branches and Call-IDs: no byte twice, none shared with a fork."""

from __future__ import annotations

import os

from b2bua import randomness
from b2bua.randomness import BLOCK, RandomPool, random_hex


def test_draws_are_consecutive_slices_of_one_kernel_read() -> None:
    pool = RandomPool()
    first, second = pool.take(3), pool.take(5)
    block = pool._block
    assert len(block) == BLOCK
    assert (first, second) == (block[:3], block[3:8])


def test_a_draw_that_does_not_fit_reads_a_new_block() -> None:
    pool = RandomPool()
    pool.take(BLOCK - 2)
    old = pool._block
    fresh = pool.take(4)
    assert pool._block is not old and fresh == pool._block[:4] and pool._pos == 4
    assert len(pool.take(BLOCK + 10)) == BLOCK + 10  # larger than a block: one read of its own


def test_hex_has_two_digits_per_byte_and_varies() -> None:
    ids = {random_hex(6) for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids)


def test_a_forked_child_does_not_repeat_the_parents_next_identifiers() -> None:
    random_hex(1)  # the pool holds a block now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next draw, then leave at once
        try:
            os.write(write_end, random_hex(16).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    child = os.read(read_end, 64).decode()
    os.close(read_end)
    assert len(child) == 32 and child != random_hex(16)
    assert randomness._POOL._pos > 0
