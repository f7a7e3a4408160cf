"""`b2bua-ctl` (b2bua/ctl.py) against the API on a real 127.0.0.1 server; the client runs in a thread
(it is blocking urllib) while the loop serves it and the test plays the phones on the fake wire."""

from __future__ import annotations

import asyncio
import io
import json
import socket

import pytest

from b2bua import ctl

from .test_api import TOKEN, Api, eventually, run, served, wire_with_token
from .test_api_events import hang_up_by_caller
from .test_call_flows import establish
from .test_hold import HELD_ANSWER, reply
from .wire import CALLER, PBX, Wire


async def ctl_run(api: Api | None, *argv: str, url: str | None = None) -> tuple[int, str]:
    out = io.StringIO()
    args = ["--url", url or (api.base if api else ""), "--timeout", "5", *argv]
    code = await asyncio.to_thread(ctl.main, args, out)
    return code, out.getvalue()


def test_list_show_hangup(capsys):
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            assert await ctl_run(api, "calls") == (0, "no calls\n")
            a200, _, _ = establish(w)
            cid = api.call_id()
            code, out = await ctl_run(api, "calls")
            header, row = out.splitlines()
            assert code == 0 and header.split()[:5] == ["ID", "STATE", "CREATED", "ANSWERED", "FLAGS"]
            assert row.startswith(cid) and "confirmed" in row
            assert row.endswith("sip:alice@127.0.0.1:5070 -> sip:bob@127.0.0.1:5060")
            code, out = await ctl_run(api, "show", cid)
            assert code == 0 and f"id           {cid}" in out
            assert 'caller       "Alice" <sip:alice@127.0.0.1:5070>' in out and a200.call_id in out
            code, out = await ctl_run(api, "--json", "show", cid)
            assert code == 0 and json.loads(out)["id"] == cid
            code, out = await ctl_run(api, "hangup", cid, "--reason", "end of shift")
            assert (code, out) == (0, f"{cid}: hanging up (ending)\n")
            [bye] = w.requests(CALLER, "BYE")
            assert bye.headers.get("Reason") == 'SIP;cause=200;text="end of shift"'
    run(scenario)


def test_hold_and_resume():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            establish(w)
            cid = api.call_id()
            pending = asyncio.ensure_future(ctl_run(api, "hold", cid, "--party", "b"))
            await eventually(lambda: len(w.requests(PBX, "INVITE")) == 2)
            reply(w, w.requests(PBX, "INVITE")[1], 200, body=HELD_ANSWER)
            assert await pending == (0, f"{cid}: party b on hold\n")
            pending = asyncio.ensure_future(ctl_run(api, "resume", cid, "--party", "b"))
            await eventually(lambda: len(w.requests(PBX, "INVITE")) == 3)
            reply(w, w.requests(PBX, "INVITE")[2], 200, body=HELD_ANSWER.replace("a=recvonly\r\n", ""))
            assert await pending == (0, f"{cid}: party b resumed\n")
    run(scenario)


def test_errors_are_explained_with_exit_codes(capsys):
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            assert await ctl_run(api, "show", "nope") == (1, "")
            assert "b2bua-ctl: 404: no call with id 'nope'" in capsys.readouterr().err
            establish(w)
            assert (await ctl_run(api, "resume", api.call_id()))[0] == 1
            assert "b2bua-ctl: 409: party a is not on hold" in capsys.readouterr().err
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        assert (await ctl_run(None, "calls", url=f"http://127.0.0.1:{port}"))[0] == 3
        assert "cannot reach" in capsys.readouterr().err
        assert (await ctl_run(None, "calls", url="127.0.0.1:9090"))[0] == 2
    run(scenario)


def test_token_from_the_environment(capsys, monkeypatch):
    async def scenario() -> None:
        w = wire_with_token()
        async with served(w) as api:
            monkeypatch.delenv("B2BUA_API_TOKEN", raising=False)
            assert (await ctl_run(api, "calls"))[0] == 1
            assert "401: a bearer token is required" in capsys.readouterr().err
            monkeypatch.setenv("B2BUA_API_TOKEN", TOKEN)
            assert await ctl_run(api, "calls") == (0, "no calls\n")
            assert (await ctl_run(api, "--token", "wrong-token-0123456789", "calls"))[0] == 1
            assert "401: the bearer token is not valid" in capsys.readouterr().err
    run(scenario)


def test_follow_events():
    async def scenario() -> None:
        w = Wire()
        async with served(w) as api:
            pending = asyncio.ensure_future(ctl_run(api, "events", "--count", "2"))
            await eventually(lambda: api.ctx.hub.clients)
            a200, _, _ = establish(w)
            code, out = await pending
            cid = api.call_id()
            lines = out.splitlines()
            assert code == 0 and len(lines) == 2
            assert f"  {cid}  call_started  b_call_id=" in lines[0]
            assert lines[1].endswith(f"  {cid}  call_answered")
            # --json and --call: raw data lines, and the command ends with the call.
            pending = asyncio.ensure_future(ctl_run(api, "--json", "events", "--call", cid))
            await eventually(lambda: any(c.call == cid for c in api.ctx.hub.clients))
            hang_up_by_caller(w, a200)
            code, out = await pending
            assert code == 0 and [json.loads(line)["event"] for line in out.splitlines()] == [
                "bye_received", "call_ended"]
    run(scenario)


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exc:
        ctl.main(["frobnicate"], io.StringIO())
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        ctl.main(["hold", "abc", "--party", "c"], io.StringIO())
    assert exc.value.code == 2
