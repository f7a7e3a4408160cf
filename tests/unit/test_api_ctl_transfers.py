"""`b2bua-ctl dial`, `transfer` and `consult` against the API on a real 127.0.0.1 server (see test_api_ctl.py)."""

from __future__ import annotations

from .test_api import eventually, run, served
from .test_api_ctl import ctl_run
from .test_api_originate import a_answers
from .test_api_originate import wire as dial_wire
from .test_api_transfers import target_answers
from .test_call_media import establish
from .test_transfer import TARGET, wire
from .wire import CALLER


def test_transfer_by_ctl():
    async def scenario() -> None:
        w = wire()
        async with served(w) as api:
            establish(w)
            cid = api.call_id()
            code, out = await ctl_run(api, "transfer", cid, "--to", "carol")
            assert (code, out) == (0, f"{cid}: blind transfer of party a to sip:carol@127.0.0.1 under way by "
                                      "rebridge\n")
            target_answers(w, w.requests(TARGET, "INVITE")[0], 486, "Busy Here")
            code, out = await ctl_run(api, "transfer", cid, "--attended", "nosuch")
            assert code == 1 and out == ""
            code, out = await ctl_run(api, "--json", "transfer", cid, "--to", "carol", "--party", "b")
            assert code == 0 and '"party": "b"' in out
    run(scenario)


def test_dial_and_consult_usage_by_ctl(capsys):
    async def scenario() -> None:
        w = dial_wire()
        async with served(w) as api:
            code, out = await ctl_run(api, "dial", "alice", "carol", "--ring-timeout", "20")
            assert code == 0 and out.endswith(": calling alice, then carol\n")
            a_answers(w, w.requests(CALLER, "INVITE")[0])
            await eventually(lambda: w.requests(TARGET, "INVITE"))
            cid = out.split(":")[0]
            assert (await ctl_run(api, "consult", cid, "start"))[0] == 2
            assert (await ctl_run(api, "consult", cid, "swap", "carol"))[0] == 2
            code, _ = await ctl_run(api, "consult", cid, "complete")
            assert code == 1  # no consultation: 409
    run(scenario)
    err = capsys.readouterr().err
    assert "consult start needs a target" in err and "409: no consultation is under way on this call" in err
