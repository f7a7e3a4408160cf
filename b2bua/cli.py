"""Command line: `b2bua [--config FILE] [--listen HOST:PORT] [--next-hop HOST:PORT[;transport=tcp]] ...`.

How this works: flags are folded into the same pydantic validation as the file and the environment
(see config.py), so a bad flag is reported exactly like a bad file entry, naming the field, and the
process exits with status 2 before binding anything. The event loop is uvloop.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import allocator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="b2bua", description="SIP B2BUA: transfer server and call-center router")
    p.add_argument("--config", metavar="FILE", help="TOML (.toml) or YAML configuration file")
    p.add_argument("--listen", metavar="HOST:PORT", action="append",
                   help="SIP listen address, UDP and TCP (repeatable; default 127.0.0.1:5060)")
    p.add_argument("--next-hop", metavar="HOST:PORT[;transport=tcp]",
                   help="default destination of calls (default 127.0.0.1:5080)")
    p.add_argument("--http", metavar="HOST:PORT", help="address for /metrics and /healthz (default 127.0.0.1:9090)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--check-config", action="store_true", help="validate the configuration, print it, and exit")
    return p


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.listen:
        out.setdefault("sip", {})["listen"] = args.listen
    if args.next_hop:
        out.setdefault("routing", {})["next_hop"] = args.next_hop
    if args.http:
        out.setdefault("http", {})["listen"] = args.http
    if args.log_level:
        out.setdefault("log", {})["level"] = args.log_level
    return out


def main(argv: list[str] | None = None) -> int:
    # Imported here, not at the top: `entry` re-executes the interpreter before anything heavy
    # (pydantic alone takes a fifth of a second) is loaded for nothing.
    from .config import ConfigError, load_settings
    from .logs import configure_logging

    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config, overrides=_flag_overrides(args))
    except ConfigError as exc:
        print(f"b2bua: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(settings.model_dump_json(indent=2))
        return 0
    configure_logging(settings.log.level)
    import uvloop

    from .app import Daemon

    try:
        return uvloop.run(Daemon(settings).run())
    except OSError as exc:
        print(f"b2bua: cannot start: {exc}", file=sys.stderr)
        return 1


def entry() -> int:
    """The `b2bua` command: on the C library's malloc (allocator.py), then `main`."""
    allocator.choose()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
