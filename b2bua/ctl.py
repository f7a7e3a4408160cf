"""`b2bua-ctl`: the control API from a shell (list, show, place, hang up, hold, resume, transfer,
consult, follow events).

How this works: one HTTP request per command with the standard library's urllib (no dependency to
install on an operator's box), to `--url` or `$B2BUA_API_URL` (default http://127.0.0.1:9090, the
daemon's default `http.listen`), with `--token` or `$B2BUA_API_TOKEN` as the bearer token when one
is set. HTTP proxies from the environment are never used: the daemon is usually on loopback. Tables
for people, `--json` for scripts. `events` reads the server-sent event stream line by line and
prints one line per call event until interrupted (or `--count` events, or the stream ends).

Exit codes: 0 done; 1 the API refused (the message says why, e.g. `404: no call with id 'x'`) or an
event stream was cut off; 2 bad usage; 3 the API could not be reached or did not answer in time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:9090"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class CtlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Client:
    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def open(self, method: str, path: str, body: dict[str, Any] | None = None, accept: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            return self._opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise CtlError(_describe_error(exc), EXIT_REFUSED) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(f"cannot reach {self.base}: {reason}", EXIT_UNREACHABLE) from None

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self.open(method, path, body) as resp:
            try:
                return json.loads(resp.read())
            except (ValueError, OSError) as exc:
                raise CtlError(f"{self.base}{path}: unreadable answer ({exc})", EXIT_UNREACHABLE) from None


def _describe_error(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read())
    except (ValueError, OSError):
        payload = None
    if not isinstance(payload, dict) or "error" not in payload:
        return f"{exc.code}: {exc.reason}"
    text = f"{exc.code}: {payload['error']}"
    if payload.get("sip_status"):
        text += f" (SIP {payload['sip_status']})"
    for problem in payload.get("problems") or []:
        text += f"\n  {problem.get('field')}: {problem.get('message')}"
    return text


# -- output -----------------------------------------------------------------------------------------


def _short_time(value: str | None) -> str:
    return (value or "-").replace("T", " ")[:19]


def _party(p: dict[str, Any] | None) -> str:
    if not p:
        return "-"
    return f'"{p["display"]}" <{p["uri"]}>' if p.get("display") else p["uri"]


def _flags(call: dict[str, Any]) -> str:
    flags = [f"{leg['side']}-held" for leg in call["legs"] if leg.get("held")]
    flags += [f"{leg['side']}-holding" for leg in call["legs"] if leg.get("holding")]
    if call.get("transfer_in_progress"):
        flags.append("transferring")
    return ",".join(flags) or "-"


def print_calls(calls: list[dict[str, Any]], out: TextIO) -> None:
    if not calls:
        print("no calls", file=out)
        return
    rows = [("ID", "STATE", "CREATED", "ANSWERED", "FLAGS", "CALLER -> CALLEE")]
    for c in calls:
        rows.append((c["id"], c["state"], _short_time(c["created"]), _short_time(c["answered"]), _flags(c),
                     f"{c['caller']['uri']} -> {c['callee']['uri']}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + "  " + r[5], file=out)


def print_call(c: dict[str, Any], out: TextIO) -> None:
    lines = [
        ("id", c["id"]), ("state", c["state"]), ("created", c["created"]), ("answered", c["answered"] or "-"),
        ("caller", _party(c["caller"])), ("callee", _party(c["callee"])),
        ("media relay", c.get("media_relay") or "-"),
        ("transfer", "in progress" if c.get("transfer_in_progress") else "-"),
    ]
    for leg in c["legs"]:
        hold = ("held by us" if leg["held"] else "") + (" holding" if leg["holding"] else "")
        lines.append((f"leg {leg['side']}", f"{leg['sip_call_id']} local-tag={leg['local_tag']} "
                                            f"remote-tag={leg['remote_tag'] or '-'} dialog={leg['dialog']}"))
        lines.append(("", f"peer {leg['peer']}  party {_party(leg['remote_party'])}  {hold.strip() or 'not held'}"))
    for key, value in lines:
        print(f"{key:<12} {value}", file=out)


# -- commands ---------------------------------------------------------------------------------------


def _call_path(call_id: str, suffix: str = "") -> str:
    return "/v1/calls/" + urllib.parse.quote(call_id, safe="") + suffix


def cmd_calls(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    data = client.json("GET", "/v1/calls")
    if args.json:
        print(json.dumps(data, indent=2), file=out)
    else:
        print_calls(data["calls"], out)
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    data = client.json("GET", _call_path(args.id))
    if args.json:
        print(json.dumps(data, indent=2), file=out)
    else:
        print_call(data, out)
    return EXIT_OK


def cmd_hangup(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    body = {"reason": args.reason} if args.reason else None
    data = client.json("DELETE", _call_path(args.id), body)
    print(json.dumps(data, indent=2) if args.json else f"{data['id']}: hanging up ({data['state']})", file=out)
    return EXIT_OK


def cmd_hold(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    action = args.command  # "hold" or "resume"
    data = client.json("POST", _call_path(args.id, f"/{action}"), {"party": args.party})
    done = "on hold" if action == "hold" else "resumed"
    print(json.dumps(data, indent=2) if args.json else f"{data['id']}: party {args.party} {done}", file=out)
    return EXIT_OK


def cmd_dial(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"a": args.a, "b": args.b}
    if args.caller_id:
        body["caller_id"] = args.caller_id
    if args.ring_timeout:
        body["ring_timeout_s"] = args.ring_timeout
    data = client.json("POST", "/v1/calls", body)
    print(json.dumps(data, indent=2) if args.json else f"{data['id']}: calling {args.a}, then {args.b}", file=out)
    return EXIT_OK


def cmd_transfer(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"party": args.party}
    if args.to:
        body.update(type="blind", target=args.to)
    else:
        body.update(type="attended" if args.attended else "early", consult_call_id=args.attended or args.early,
                    consult_target=args.consult_target)
    if args.method:
        body["method"] = args.method
    if args.refer_wait:
        body["refer_wait"] = args.refer_wait
    data = client.json("POST", _call_path(args.id, "/transfer"), body)
    if args.json:
        print(json.dumps(data, indent=2), file=out)
    else:
        note = f" ({data['fallback']})" if data.get("fallback") else ""
        print(f"{args.id}: {data['type']} transfer of party {data['party']} to {data['target']} "
              f"under way by {data['method']}{note}", file=out)
    return EXIT_OK


def cmd_consult(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"action": args.action}
    if args.action == "start":
        if not args.target:
            raise CtlError("consult start needs a target", EXIT_USAGE)
        body.update(target=args.target, party=args.party)
    elif args.target:
        raise CtlError(f"consult {args.action} takes no target", EXIT_USAGE)
    data = client.json("POST", _call_path(args.id, "/consult"), body)
    where = data["consult"].replace("_", " ")
    print(json.dumps(data, indent=2) if args.json else f"{args.id}: {args.action} done ({where})", file=out)
    return EXIT_OK


def cmd_events(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    path = "/v1/events" + (f"?call={urllib.parse.quote(args.call, safe='')}" if args.call else "")
    with client.open("GET", path, accept="text/event-stream") as resp:
        try:
            return _follow(resp, args, out)
        except OSError as exc:
            raise CtlError(f"event stream cut off: {exc}", EXIT_REFUSED) from None


def _follow(resp: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Print the stream's events (SSE: `field: value` lines, a blank line ends an event)."""
    seen = 0
    event, data = "", ""
    for raw in resp:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith(":"):
            continue  # a comment: keepalive
        if line:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data = value
            continue
        if not data:
            event = ""
            continue
        if event in ("stream_overflow", "stream_closed"):
            reason = json.loads(data).get("reason", event)
            print(f"b2bua-ctl: event stream ended: {reason}", file=sys.stderr)
            return EXIT_REFUSED if event == "stream_overflow" else EXIT_OK
        _print_event(data, args.json, out)
        event, data = "", ""
        seen += 1
        if args.count and seen >= args.count:
            return EXIT_OK
    if args.call:
        return EXIT_OK  # a stream that follows one call ends with it
    print("b2bua-ctl: the event stream ended", file=sys.stderr)
    return EXIT_REFUSED


def _print_event(data: str, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(data, file=out, flush=True)
        return
    try:
        ev = json.loads(data)
        fields = " ".join(f"{k}={v}" for k, v in (ev.get("fields") or {}).items())
        print(f"{_short_time(ev.get('time'))}  {ev.get('call')}  {ev.get('event')}  {fields}".rstrip(),
              file=out, flush=True)
    except (ValueError, AttributeError):
        print(data, file=out, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="b2bua-ctl", description="Control calls through the b2bua daemon's HTTP API.",
        epilog="exit codes: 0 done, 1 refused by the API, 2 bad usage, 3 API unreachable")
    p.add_argument("--url", default=os.environ.get("B2BUA_API_URL", DEFAULT_URL),
                   help=f"the daemon's HTTP address (env B2BUA_API_URL; default {DEFAULT_URL})")
    p.add_argument("--token", default=os.environ.get("B2BUA_API_TOKEN"),
                   help="bearer token, when the daemon has api.token set (env B2BUA_API_TOKEN)")
    p.add_argument("--timeout", type=float, default=90.0,
                   help="seconds to wait for an answer (a hold waits for the phone's, a consult start for "
                        "the target's: use more than the ring time; default 90)")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("calls", help="list the calls in progress").set_defaults(fn=cmd_calls)
    show = sub.add_parser("show", help="show one call")
    show.add_argument("id")
    show.set_defaults(fn=cmd_show)
    hang = sub.add_parser("hangup", help="hang a call up (BYE on both legs)")
    hang.add_argument("id")
    hang.add_argument("--reason", help="text for the Reason header of the BYEs")
    hang.set_defaults(fn=cmd_hangup)
    for name, what in (("hold", "put one party on hold (re-INVITE, sendonly)"),
                       ("resume", "take one party off hold (re-INVITE, sendrecv)")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("id")
        cmd.add_argument("--party", choices=["a", "b"], default="a",
                         help="a: the caller (default), b: the callee")
        cmd.set_defaults(fn=cmd_hold)
    dial = sub.add_parser("dial", help="click-to-dial: call party A, and once it answers, party B")
    dial.add_argument("a", help="called first (e.g. the operator's phone): sip:/tel: URI, user or number")
    dial.add_argument("b", help="called once A answered, and bridged to A")
    dial.add_argument("--caller-id", help="the From shown to A (default: B)")
    dial.add_argument("--ring-timeout", type=float, help="seconds each party may ring")
    dial.set_defaults(fn=cmd_dial)
    xfer = sub.add_parser("transfer", help="transfer one party of a call (blind, attended, early)")
    xfer.add_argument("id")
    how = xfer.add_mutually_exclusive_group(required=True)
    how.add_argument("--to", metavar="TARGET", help="blind: call TARGET (URI, user or number)")
    how.add_argument("--attended", metavar="CONSULT_ID", help="join to the answered consultation call")
    how.add_argument("--early", metavar="CONSULT_ID", help="join to the consultation call that still rings")
    xfer.add_argument("--party", choices=["a", "b"], default="a",
                      help="the party transferred: a, the caller (default), or b; the other is released")
    xfer.add_argument("--method", choices=["rebridge", "refer"], help="default: the daemon's api.transfer_method")
    xfer.add_argument("--refer-wait", choices=["attended", "unattended"],
                      help="method refer: done on the final NOTIFY (attended) or on the REFER's 202")
    xfer.add_argument("--consult-target", choices=["a", "b"], default="b",
                      help="the target's party in the consultation call (default b, its callee)")
    xfer.set_defaults(fn=cmd_transfer)
    cons = sub.add_parser("consult", help="supervised transfer: start (hold and call), complete, cancel, swap")
    cons.add_argument("id")
    cons.add_argument("action", choices=["start", "complete", "cancel", "swap"])
    cons.add_argument("target", nargs="?", help="start: whom to consult")
    cons.add_argument("--party", choices=["a", "b"], default="a", help="start: the party held (default a)")
    cons.set_defaults(fn=cmd_consult)
    ev = sub.add_parser("events", help="follow call events (Ctrl-C to stop)")
    ev.add_argument("--call", help="only this call's events (ends with the call)")
    ev.add_argument("--count", type=int, default=0, help="stop after this many events")
    ev.set_defaults(fn=cmd_events)
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    if not args.url.startswith(("http://", "https://")):
        print(f"b2bua-ctl: --url must start with http:// or https:// (got {args.url!r})", file=sys.stderr)
        return EXIT_USAGE
    client = Client(args.url, args.token, args.timeout)
    try:
        return int(args.fn(client, args, out))
    except CtlError as exc:
        print(f"b2bua-ctl: {exc}", file=sys.stderr)
        return exc.code
    except TimeoutError:
        print(f"b2bua-ctl: no answer from {args.url} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
