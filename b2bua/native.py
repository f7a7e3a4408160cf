"""The SIP stack's hot modules compiled to C with mypyc, used only while the build matches the sources.

How this works: `python -m b2bua.native_build` (run by `make install` and the Dockerfile) compiles
the modules in `MODULES` (the SIP parser and message model, transactions, dialogs, the timer heap,
the SDP handling every call goes through and the core that dispatches to calls) with mypyc
into a directory of their own, `<venv>/native` (`B2BUA_NATIVE_DIR` overrides it), beside a
manifest holding the SHA-256 of every source of the two packages (the compiled modules were
type-checked against all of them). The source tree never holds a compiled file. When `b2bua` or
`rtp_relay` is imported, `install` checks the manifest: when it names the running interpreter and
every hash still matches, an import finder placed first hands out the compiled modules, all of
them or none (they call each other in C, so a mix of compiled and source classes would not
work); otherwise the sources run, and `state()` says why (not built, a source changed since the
build, `B2BUA_NATIVE=0`). So an edited source is never shadowed by an old build, and a machine
without a C compiler runs the same code, slower.

The compiled modules are the same source, type-checked by mypy: the sources must stay within what
mypyc compiles (no `cls.__new__`, no instance `__dict__` tricks, no multiple assignment in a class
body, exceptions derived from Exception or ValueError), and `Final` attributes are read-only at run
time in the compiled build. A hot class is written out rather than made a dataclass: the methods
`dataclasses` generates stay interpreted (value.py). The message model's value classes (messages,
headers, URIs, addresses) are marked `@mypyc_attr(acyclic=True)`: they hold only strings, numbers
and other such values, so the cycle collector need not track them (a young pass at 600 calls/s
walked 4,468 objects, 2,760 with them untracked); such a class must never hold anything that could
point back at it (a transaction, a call), or the cycle would never be freed. A compiled class cannot
be weakly referenced, so a leg holds its call strongly and the call breaks that cycle when it ends
(call/leg.py). Measured on the benchmark machine (callgrind, the daemon under SIPp): 3.41 M
instructions per call from source, 2.47 M with the parser compiled, 2.27 M adding transactions,
dialogs and timers, 2.12 M adding the SDP modules, 2.02 M adding the core, 1.91 M adding the call
and its legs, 1.86 M with the log timestamp made without datetime (logs.py), 1.69 M with the value
records written out (value.py), 1.65 M with identifiers drawn from a pool (randomness.py), 1.63 M
adding the socket-to-core bridge (driver.py, transport/udp.py).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent  # holds the packages b2bua and rtp_relay
PACKAGES = ("b2bua", "rtp_relay")
# Compiled together (mypyc calls between them in C); all or none are used.
MODULES = (
    "b2bua.value",
    "b2bua.randomness",
    "b2bua.sip.uri",
    "b2bua.sip.headers",
    "b2bua.sip.message",
    "b2bua.sip.parser",
    "b2bua.sip.address",
    "b2bua.sip.scheduler",
    "b2bua.sip.dialog",
    "b2bua.sip.transaction",
    "rtp_relay.sdp",
    "b2bua.media.leg_sdp",
    "b2bua.call.sdp_path",
    "b2bua.call.header_policy",
    "b2bua.call.outgoing_invite",
    "b2bua.call.small_tables",
    "b2bua.call.leg",
    "b2bua.call.call",
    "b2bua.call.originate",
    "b2bua.core",
    "b2bua.transport.udp",
    "b2bua.driver",
)
MANIFEST = "manifest.json"
_state: str | None = None


def native_dir() -> Path:
    return Path(os.environ.get("B2BUA_NATIVE_DIR") or Path(sys.prefix) / "native")


def source_of(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def sources() -> list[Path]:
    """Every source the build depends on: the compiled modules and what they were checked against."""
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def source_name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interpreter_tag() -> str:
    return f"{sys.implementation.cache_tag}-{sys.platform}"


def check(directory: Path) -> str:
    """"compiled" when `directory` holds a build of the current sources for this interpreter,
    else the reason it cannot be used."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return "not built (make install builds it)"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if manifest.get("interpreter") != interpreter_tag():
        return f"built for {manifest.get('interpreter')}, running {interpreter_tag()}"
    if manifest.get("modules") != list(MODULES):
        return "stale: built for another list of modules"
    built = manifest.get("sources", {})
    current = sources()
    for path in current:
        if built.get(source_name(path)) != digest(path):
            return f"stale: {source_name(path)} changed since the build"
    if len(built) != len(current):
        return "stale: a source was removed since the build"
    return "compiled"


class CompiledFinder:
    """Finds the compiled build of the modules in MODULES (and nothing else) in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in MODULES:
            return None
        *packages, name = fullname.split(".")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = self.directory.joinpath(*packages, name + suffix)
            if candidate.is_file():
                return importlib.util.spec_from_file_location(fullname, candidate)
        return None


def install() -> None:
    """Decide once per process whether the compiled modules are used; if so, put their finder
    first. Called by the `__init__` of both packages, before any compiled module is imported."""
    global _state
    if _state is not None:
        return
    if os.environ.get("B2BUA_NATIVE", "1") == "0":
        _state = "off (B2BUA_NATIVE=0)"
        return
    directory = native_dir()
    _state = check(directory)
    if _state == "compiled":
        if str(directory) not in sys.path:
            sys.path.append(str(directory))  # mypyc's shared runtime module lives at the top
        sys.meta_path.insert(0, CompiledFinder(directory))


def state() -> str:
    """How the compiled modules run: "compiled", or why the sources run instead."""
    return _state or "not imported"
