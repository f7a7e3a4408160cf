"""`Value`: the base of the small immutable records the SIP stack and the SDP code pass around.

How this works: a subclass assigns its fields once, in its own `__init__` (annotated `Final`, so
mypy refuses any later assignment), and `key()` returns them in the order `__init__` takes them.
`Value` derives equality, hashing and `repr` from `key()`, as a frozen dataclass would; the repr is
the constructor call that rebuilds the value (`SipUri('sip', 'bob', None, 'h', 5060, (), ())`).

Why not `@dataclass(frozen=True)`: the mypyc build (`b2bua/native.py`) compiles a class's own
methods but not the ones `dataclasses` generates at import time. Those stay interpreted Python, and a
frozen one sets every field through `object.__setattr__`. A URI, a Via or a name-addr is built for
every header parsed, and compared for every dialog and transaction matched. Measured before this
base (compiled daemon under SIPp): 8 interpreted `__init__` and 7 interpreted `__eq__` per call,
1.2 us to build one `SipUri`. Written out, they compile to C.
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr


@mypyc_attr(acyclic=True)
class Value:
    """Equality, hash and repr from `key()`; a subclass supplies `__slots__`, `__init__` and `key`."""

    __slots__ = ()

    def key(self) -> tuple[Any, ...]:
        """The fields' values, in the order `__init__` takes them."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Value)
        return self.key() == other.key()

    def __ne__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Value)
        return self.key() != other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({', '.join(map(repr, self.key()))})"
