"""b2bua/native.py: a compiled parsing core is used only while it matches the sources."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from b2bua import native


def write_manifest(directory: Path, **changes: object) -> None:
    manifest = {"interpreter": native._interpreter(),
                "sources": {m: native._digest(native.source_of(m)) for m in native.MODULES}}
    manifest.update(changes)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / native.MANIFEST).write_text(json.dumps(manifest))


def test_every_compiled_module_has_its_source() -> None:
    for module in native.MODULES:
        assert native.source_of(module).is_file(), module


def test_a_build_of_the_current_sources_is_used(tmp_path: Path) -> None:
    write_manifest(tmp_path)
    assert native.check(tmp_path) == "compiled"


def test_no_build_means_source(tmp_path: Path) -> None:
    assert native.check(tmp_path).startswith("not built")


def test_a_changed_source_means_source(tmp_path: Path) -> None:
    write_manifest(tmp_path)
    manifest = json.loads((tmp_path / native.MANIFEST).read_text())
    manifest["sources"]["b2bua.sip.parser"] = "0" * 64
    (tmp_path / native.MANIFEST).write_text(json.dumps(manifest))
    assert native.check(tmp_path) == "stale: parser.py changed since the build"


def test_a_build_for_another_interpreter_means_source(tmp_path: Path) -> None:
    write_manifest(tmp_path, interpreter="cpython-312-linux")
    assert native.check(tmp_path).startswith("built for cpython-312-linux")


def test_a_broken_manifest_means_source(tmp_path: Path) -> None:
    (tmp_path / native.MANIFEST).write_text("{not json")
    assert native.check(tmp_path).startswith("unreadable manifest")


def test_activate_puts_a_usable_build_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("B2BUA_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("B2BUA_NATIVE", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(native, "_state", None)
    write_manifest(tmp_path)
    path = ["/src/b2bua/sip"]
    native.activate(path)
    assert path == [str(tmp_path / "b2bua" / "sip"), "/src/b2bua/sip"]
    assert native.state() == "compiled" and str(tmp_path) in sys.path


def test_activate_leaves_a_stale_build_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("B2BUA_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("B2BUA_NATIVE", raising=False)
    monkeypatch.setattr(native, "_state", None)
    write_manifest(tmp_path, sources={})
    path = ["/src/b2bua/sip"]
    native.activate(path)
    assert path == ["/src/b2bua/sip"] and native.state().startswith("stale")


def test_b2bua_native_0_turns_it_off(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("B2BUA_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("B2BUA_NATIVE", "0")
    monkeypatch.setattr(native, "_state", None)
    write_manifest(tmp_path)
    path = ["/src/b2bua/sip"]
    native.activate(path)
    assert path == ["/src/b2bua/sip"] and native.state() == "off (B2BUA_NATIVE=0)"


def test_this_run_reports_how_the_parsing_core_runs() -> None:
    import b2bua.sip.parser as parser

    compiled = not parser.__file__.endswith(".py")
    assert (native.state() == "compiled") == compiled
    if compiled:  # the build the suite runs on is the one make installed, of these sources
        assert Path(parser.__file__).is_relative_to(native.native_dir())
