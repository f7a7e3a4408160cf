"""Copy-on-write tables for per-call state that is almost always empty.

How this works: a call or a leg holds a few tables that only some calls ever write (a late offer
waiting for an ACK, released forks, relayed REFERs, a B leg's early dialogs). Each starts as
`EMPTY`, one shared read-only mapping, and every change replaces it with a new dict (`with_entry`,
`without_entry`); these tables hold an entry or two, so copying costs less than the 64 bytes an
empty dict of its own would cost every held call (thousands at once, for minutes).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")

EMPTY: Mapping[Any, Any] = MappingProxyType({})


def with_entry(table: Mapping[K, V], key: K, value: V) -> Mapping[K, V]:
    return {**table, key: value}


def without_entry(table: Mapping[K, V], key: K) -> Mapping[K, V]:
    return {k: v for k, v in table.items() if k != key} or EMPTY
