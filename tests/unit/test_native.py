"""b2bua/native.py: the compiled modules are used only while the build matches the sources."""

from __future__ import annotations

import importlib.machinery
import json
import sys
from pathlib import Path

import pytest

from b2bua import native


def write_manifest(directory: Path, **changes: object) -> None:
    manifest = {"interpreter": native.interpreter_tag(), "modules": list(native.MODULES),
                "sources": {native.source_name(p): native.digest(p) for p in native.sources()}}
    manifest.update(changes)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / native.MANIFEST).write_text(json.dumps(manifest))


def fresh_process_state(monkeypatch, directory: Path, native_env: str | None = None) -> list:
    """As if no module of ours had been imported yet: `install` decides again."""
    monkeypatch.setenv("B2BUA_NATIVE_DIR", str(directory))
    if native_env is None:
        monkeypatch.delenv("B2BUA_NATIVE", raising=False)
    else:
        monkeypatch.setenv("B2BUA_NATIVE", native_env)
    monkeypatch.setattr(native, "_state", None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    meta_path = [finder for finder in sys.meta_path if not isinstance(finder, native.CompiledFinder)]
    monkeypatch.setattr(sys, "meta_path", meta_path)
    return meta_path


def test_every_compiled_module_has_its_source() -> None:
    for module in native.MODULES:
        assert native.source_of(module).is_file(), module
        assert native.source_of(module) in native.sources()


def test_a_build_of_the_current_sources_is_used(tmp_path: Path) -> None:
    write_manifest(tmp_path)
    assert native.check(tmp_path) == "compiled"


def test_no_build_means_source(tmp_path: Path) -> None:
    assert native.check(tmp_path).startswith("not built")


@pytest.mark.parametrize("source", [
    "b2bua/sip/parser.py",  # compiled
    "b2bua/call/call.py",  # not compiled, but the compiled modules were type-checked against it
])
def test_a_changed_source_means_source(tmp_path: Path, source: str) -> None:
    write_manifest(tmp_path)
    manifest = json.loads((tmp_path / native.MANIFEST).read_text())
    manifest["sources"][source] = "0" * 64
    (tmp_path / native.MANIFEST).write_text(json.dumps(manifest))
    assert native.check(tmp_path) == f"stale: {source} changed since the build"


def test_a_new_or_removed_source_means_source(tmp_path: Path) -> None:
    write_manifest(tmp_path)
    manifest = json.loads((tmp_path / native.MANIFEST).read_text())
    del manifest["sources"]["b2bua/trim.py"]
    (tmp_path / native.MANIFEST).write_text(json.dumps(manifest))
    assert native.check(tmp_path) == "stale: b2bua/trim.py changed since the build"
    manifest["sources"]["b2bua/trim.py"] = native.digest(native.ROOT / "b2bua" / "trim.py")
    manifest["sources"]["b2bua/gone.py"] = "0" * 64
    (tmp_path / native.MANIFEST).write_text(json.dumps(manifest))
    assert native.check(tmp_path) == "stale: a source was removed since the build"


def test_a_build_of_another_module_list_means_source(tmp_path: Path) -> None:
    write_manifest(tmp_path, modules=["b2bua.sip.parser"])
    assert native.check(tmp_path) == "stale: built for another list of modules"


def test_a_build_for_another_interpreter_means_source(tmp_path: Path) -> None:
    write_manifest(tmp_path, interpreter="cpython-312-linux")
    assert native.check(tmp_path).startswith("built for cpython-312-linux")


def test_a_broken_manifest_means_source(tmp_path: Path) -> None:
    (tmp_path / native.MANIFEST).write_text("{not json")
    assert native.check(tmp_path).startswith("unreadable manifest")


def test_install_puts_a_finder_of_a_usable_build_first(tmp_path: Path, monkeypatch) -> None:
    meta_path = fresh_process_state(monkeypatch, tmp_path)
    write_manifest(tmp_path)
    native.install()
    assert native.state() == "compiled" and str(tmp_path) in sys.path
    finder = meta_path[0]
    assert isinstance(finder, native.CompiledFinder)
    native.install()  # once per process
    assert sum(isinstance(f, native.CompiledFinder) for f in meta_path) == 1


def test_the_finder_hands_out_compiled_modules_only(tmp_path: Path) -> None:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (tmp_path / "rtp_relay").mkdir()
    (tmp_path / "rtp_relay" / f"sdp{suffix}").write_bytes(b"")
    (tmp_path / "rtp_relay" / f"session{suffix}").write_bytes(b"")  # not in MODULES
    finder = native.CompiledFinder(tmp_path)
    spec = finder.find_spec("rtp_relay.sdp")
    assert spec is not None and spec.origin == str(tmp_path / "rtp_relay" / f"sdp{suffix}")
    assert finder.find_spec("rtp_relay.session") is None
    assert finder.find_spec("b2bua.sip.parser") is None  # in MODULES, but not in this directory


def test_install_leaves_a_stale_build_alone(tmp_path: Path, monkeypatch) -> None:
    meta_path = fresh_process_state(monkeypatch, tmp_path)
    write_manifest(tmp_path, sources={})
    native.install()
    assert native.state().startswith("stale")
    assert not any(isinstance(f, native.CompiledFinder) for f in meta_path)


def test_b2bua_native_0_turns_it_off(tmp_path: Path, monkeypatch) -> None:
    meta_path = fresh_process_state(monkeypatch, tmp_path, native_env="0")
    write_manifest(tmp_path)
    native.install()
    assert native.state() == "off (B2BUA_NATIVE=0)"
    assert not any(isinstance(f, native.CompiledFinder) for f in meta_path)


def test_this_run_uses_all_compiled_modules_or_none() -> None:
    import importlib

    files = {m: importlib.import_module(m).__file__ or "" for m in native.MODULES}
    compiled = {m for m, f in files.items() if not f.endswith(".py")}
    assert compiled in (set(), set(native.MODULES)), files
    assert (native.state() == "compiled") == bool(compiled)
    if compiled:  # the build the suite runs on is the one make installed, of these sources
        assert all(Path(f).is_relative_to(native.native_dir()) for f in files.values())


def test_the_build_type_checks_with_the_projects_mypy_settings() -> None:
    import configparser
    import tomllib

    from b2bua import native_build

    project = tomllib.loads((native.ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert {k: v for k, v in project.items() if k != "packages"} == native_build.MYPY_SETTINGS
    ini = configparser.ConfigParser()
    ini.read_string(native_build._mypy_ini())
    assert ini["mypy"]["plugins"] == "pydantic.mypy" and ini["mypy"].getboolean("check_untyped_defs")


def test_compiled_messages_are_not_tracked_by_the_cycle_collector() -> None:
    """The message model's value classes are `acyclic` in the build (native.py): a parsed
    message and the values parsed from it cost the young collections nothing. From source every
    instance is tracked, so there the test only checks that the flag is what the build says."""
    import gc

    from b2bua.sip.parser import parse_message

    msg = parse_message(
        b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
        b"From: <sip:alice@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: c1\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    values = [msg, msg.headers, msg.uri, msg.from_, msg.from_.uri, msg.top_via, msg.cseq]
    compiled = native.state() == "compiled"
    assert [gc.is_tracked(v) for v in values] == [not compiled] * len(values)
