"""Builds the compiled modules of b2bua/native.py: `python -m b2bua.native_build [status]`.

How this works: the build copies the sources of both packages into `<native dir>/tree` (mypyc
names modules after their paths relative to the working directory and type-checks what it finds
there; the packages' own directory may be site-packages, full of other modules), compiles the
modules in `native.MODULES` with mypyc and a C compiler (the `native` extra: mypy and setuptools,
needed at build time only), and writes the manifest that `native.check` compares with the sources
at every start. `status` prints what `check` says without starting anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from .native import MANIFEST, MODULES, ROOT, check, interpreter_tag, native_dir, source_name, source_of, sources

# The type checker's settings for the build: pyproject.toml's [tool.mypy] less the package list
# (a site-packages install has no pyproject.toml; tests/unit/test_native.py keeps the two equal).
MYPY_SETTINGS: dict[str, object] = {
    "python_version": "3.11",
    "plugins": ["pydantic.mypy"],
    "ignore_missing_imports": True,
    "check_untyped_defs": True,
    "warn_unused_ignores": True,
}


def _mypy_ini() -> str:
    def ini(value: object) -> str:
        return ", ".join(value) if isinstance(value, list) else str(value)
    return "[mypy]\n" + "".join(f"{key} = {ini(value)}\n" for key, value in MYPY_SETTINGS.items())


def build(directory: Path) -> None:
    """Compile MODULES into `directory` and write the manifest (needs mypy and a C compiler)."""
    from mypyc.build import mypycify  # build-time only
    from setuptools import Distribution

    directory.mkdir(parents=True, exist_ok=True)
    # A tree of the two packages' sources only (see the module's docstring).
    tree = directory / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    digests = {}
    for path in sources():
        # The manifest hashes the very bytes compiled: a source edited during the build reads stale.
        data = path.read_bytes()
        copy = tree / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(data)
        digests[source_name(path)] = hashlib.sha256(data).hexdigest()
    (tree / "mypy.ini").write_text(_mypy_ini())
    compiled = [str(source_of(m).relative_to(ROOT)) for m in MODULES]
    cwd = Path.cwd()
    os.chdir(tree)
    try:
        modules = mypycify(["--config-file", "mypy.ini", *compiled], opt_level="3",
                           target_dir=str(directory / "src"))
        dist = Distribution({"name": "b2bua-native", "ext_modules": modules})
        cmd = dist.get_command_obj("build_ext")
        setattr(cmd, "build_lib", str(directory))  # noqa: B010 - typed differently across setuptools
        setattr(cmd, "build_temp", str(directory / "tmp"))  # noqa: B010
        cmd.ensure_finalized()
        cmd.run()
    finally:
        os.chdir(cwd)
    manifest = {"interpreter": interpreter_tag(), "modules": list(MODULES), "sources": digests}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in ([], ["build"]):
        build(native_dir())
        print(f"b2bua.native_build: compiled {', '.join(MODULES)} into {native_dir()}")
        return 0
    if args[:1] == ["status"]:
        print(check(native_dir()))
        return 0
    print("usage: python -m b2bua.native_build [build|status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
