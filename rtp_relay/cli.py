"""Command line: `python -m rtp_relay --control HOST:PORT --address IP --ports LOW-HIGH ...`.

How this works: flags become the fields of one `RelaySettings` (config.py); a bad value is
reported naming the field and the process exits 2 before binding anything. A port already in use
for the control or HTTP address, or a `--control-fd` that is not a bound UDP socket, exits 1. The
loop is uvloop; logs are JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from b2bua.logs import configure_logging

from .config import ConfigError, load_settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtp_relay", description="RTP relay controlled over rtpengine's ng protocol")
    p.add_argument("--control", metavar="HOST:PORT", help="ng control address, UDP (default 127.0.0.1:2223)")
    p.add_argument("--control-fd", metavar="N",
                   help="serve ng on this inherited, already bound UDP socket instead of binding --control")
    p.add_argument("--exit-with-parent", action="store_true", default=None,
                   help="exit (as on SIGTERM) when the parent process exits, e.g. as a B2BUA's embedded relay")
    p.add_argument("--address", metavar="IP", help="address media sockets bind to (default 127.0.0.1)")
    p.add_argument("--advertised-address", metavar="IP",
                   help="address written into SDP (default: --address; required when that is a wildcard)")
    p.add_argument("--ports", metavar="LOW-HIGH", help="RTP/RTCP port range (default 30000-39999)")
    p.add_argument("--http", metavar="HOST:PORT", help="serve /metrics and /healthz here (default: off)")
    p.add_argument("--media-timeout", metavar="S", help="seconds without media before a call is timed out (60)")
    p.add_argument("--hold-timeout", metavar="S", help="the same for streams on hold; 0 disables (3600)")
    p.add_argument("--timeout-delete", metavar="S",
                   help="seconds a timed-out call is kept (visible over ng) before the relay deletes it; "
                        "0 keeps it until deleted (60)")
    p.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error (info)")
    return p


def main(argv: list[str] | None = None) -> int:
    parent_pid = os.getppid()  # as early as possible: the parent we must not outlive
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = load_settings(values)
    except ConfigError as exc:
        print(f"rtp_relay: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    import uvloop

    from .daemon import RelayDaemon
    from .parent import ParentWatch

    watch = None
    if settings.exit_with_parent:
        watch = ParentWatch(parent_pid)
        watch.arm()
    try:
        return uvloop.run(RelayDaemon(settings, watch).run())
    except OSError as exc:
        print(f"rtp_relay: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
