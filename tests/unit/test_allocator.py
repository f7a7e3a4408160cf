"""allocator.choose: re-execute once on malloc unless an allocator is named; the relay's environment."""

from __future__ import annotations

import sys

import pytest

from b2bua import allocator


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], dict[str, str]]]:
    seen: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: seen.append((path, argv, env)))
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    monkeypatch.delenv(allocator.CHOSEN_MARK, raising=False)
    return seen


def test_the_same_command_line_runs_again_on_malloc(execs) -> None:
    allocator.choose()
    [(path, argv, env)] = execs
    assert path == sys.executable and argv == [sys.executable, *sys.orig_argv[1:]]
    assert env["PYTHONMALLOC"] == "malloc" and env[allocator.CHOSEN_MARK] == "1"


def test_a_named_allocator_is_kept(execs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")
    allocator.choose()
    assert execs == []
    assert allocator.relay_env() is None  # the relay inherits the operator's choice
    assert allocator.current() == "pymalloc"


def test_a_failed_exec_leaves_pymalloc(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise OSError("exec refused")

    monkeypatch.setattr(allocator.os, "execve", refuse)
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    allocator.choose()  # returns: the daemon starts on pymalloc rather than not at all
    assert allocator.current() == "pymalloc"


def test_the_relay_gets_our_choice_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONMALLOC", "malloc")
    monkeypatch.setenv(allocator.CHOSEN_MARK, "1")
    monkeypatch.setenv("B2BUA_OTHER", "kept")
    env = allocator.relay_env()
    assert env is not None
    assert "PYTHONMALLOC" not in env and allocator.CHOSEN_MARK not in env and env["B2BUA_OTHER"] == "kept"
