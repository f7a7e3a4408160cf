"""The daemon's cycle-collector settings (b2bua/collector.py): young passes only, the rest on a clock.

Each test restores the interpreter's own settings afterwards (thresholds, frozen objects), since
`configure` changes them for the whole test process.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from b2bua import collector


class Node:
    """A GC-tracked object, like a call's leg or transaction."""

    __slots__ = ("next",)

    def __init__(self, nxt: Node | None = None) -> None:
        self.next = nxt


@pytest.fixture
def configured() -> Iterator[list[int]]:
    """collector.configure() in effect; yields the generations of the passes run meanwhile."""
    saved = gc.get_threshold()
    passes: list[int] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    collector.configure()
    gc.callbacks.append(seen)
    try:
        yield passes
    finally:
        gc.callbacks.remove(seen)
        gc.unfreeze()
        gc.set_threshold(*saved)


def test_survivors_are_walked_by_young_passes_only(configured: list[int]) -> None:
    # Fifty young thresholds' worth of objects that stay alive, like calls held up: the
    # interpreter's defaults would run a middle-generation pass every ten young ones.
    kept = [Node() for _ in range(50 * collector.YOUNG)]
    assert configured, "young passes run by allocation count"
    assert set(configured) == {0}
    assert len(kept) == 50 * collector.YOUNG


def test_a_young_cycle_is_still_collected(configured: list[int]) -> None:
    a = Node()
    a.next = Node(a)
    del a
    before = len(configured)
    for _ in range(2 * collector.YOUNG):
        Node()  # allocated and freed: no pass is due from these alone
    garbage = [Node() for _ in range(2 * collector.YOUNG)]
    assert len(configured) > before
    assert not any(isinstance(o, Node) and isinstance(o.next, Node) and o.next.next is o
                   for o in gc.get_objects())
    del garbage


def test_collect_old_runs_a_full_pass_and_logs_it(configured: list[int]) -> None:
    class Log:
        def __init__(self) -> None:
            self.events: list[tuple[str, dict[str, Any]]] = []

        def info(self, event: str, **kw: Any) -> None:
            self.events.append((event, kw))

    loop = asyncio.new_event_loop()
    try:
        log = Log()
        old = collector.CollectOld(loop, log, interval=0.01)
        a = Node()
        a.next = Node(a)
        gc.collect(0)  # the pair survives a young pass, like a call's state...
        del a  # ...then becomes a cycle of garbage that no pass by allocation count looks at
        old.start()
        loop.run_until_complete(asyncio.sleep(0.05))
        old.stop()
    finally:
        loop.close()
    assert 2 in configured
    assert old.passes >= 1
    event, fields = log.events[0]
    assert event == "gc_old_generation" and fields["found"] >= 2
