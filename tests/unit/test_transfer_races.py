"""Races and odd orderings around transfers, the way real phones produce them, in virtual time.

Call 1: alice (the transferee, CALLER) -> bob (the transferor, behind the PBX). Call 2 (the
consultation): bob -> carol (the target, TARGET). bob's REFER on call 1 names call 2 (attended) or
call 2 while it still rings (early completion). At each stage one party does something unexpected
(hangs up, re-INVITEs, refers again, glares), the relay misbehaves or the daemon shuts down. The
invariant every test ends on (`Race.check_clean`): no exception escaped, every call ended once its
parties hung up (no calls, no legs, no relay sessions), every dialog a party had ended with a BYE
(ours or theirs), and we never sent BYE on a dialog the party had already ended.
"""

from __future__ import annotations

import pytest

from b2bua.sip.address import Address
from b2bua.sip.message import Request, Response
from rtp_relay import bencode

from .test_attended_transfer import BOB_SDP, CAROL_SDP2, answer, consult, refer_with_replaces, reinvites
from .test_call_media import CALLER_SDP, establish, media_port, relay_ports
from .test_replaces_invite import final, invite_with_replaces
from .test_transfer import TARGET, TARGET_SDP, refer_from_callee, sipfrags, wire
from .wire import CALLER, PBX, Wire, in_dialog, response_to

CONSULT = "consult-1@127.0.0.1"
PARTIES = (CALLER, PBX, TARGET)


class Race:
    """Call 1 up, call 2 (the consultation) up or ringing, and a ledger of who ended which dialog."""

    def __init__(self, w: Wire | None = None, *, early: bool = False) -> None:
        self.w = w or wire()
        self.a200, self.b_inv, self.b200 = establish(self.w)
        self.c200, self.c_inv = consult(self.w, answer=not early)
        self.early = early
        # Dialogs each party has with us: call-id -> the party.
        self.dialogs: dict[str, Address] = {self.a200.call_id: CALLER, self.b_inv.call_id: PBX}
        if not early:
            self.dialogs[CONSULT] = PBX
            self.dialogs[self.c_inv.call_id] = TARGET
        self.party_byes: dict[str, int] = {}  # call-id -> len(w.sent) when the party sent BYE
        self._cseq = 10
        self._answered: set[tuple[str, int, str, str]] = set()

    def seq(self) -> int:
        self._cseq += 1
        return self._cseq

    # -- bob ---------------------------------------------------------------------------------------

    def refer(self, cseq: int = 2) -> None:
        refer_with_replaces(self.w, self.b200, self.c200, cseq=cseq)
        assert [r.status for r in self.w.responses(PBX) if r.cseq.method == "REFER"][-1] == 202

    def bob_bye_call1(self) -> None:
        self._bye(in_dialog("BYE", self.b200, cseq=self.seq(), branch=f"z9hG4bKb1bye{self._cseq}",
                            from_side_is_to=True, via="127.0.0.1:5080"), PBX, self.b_inv.call_id)

    def bob_bye_consult(self) -> None:
        self._bye(in_dialog("BYE", self.c200, cseq=self.seq(), branch=f"z9hG4bKb2bye{self._cseq}",
                            from_side_is_to=False, via="127.0.0.1:5080"), PBX, CONSULT)

    # -- alice -------------------------------------------------------------------------------------

    def alice_bye(self) -> None:
        self._bye(in_dialog("BYE", self.a200, cseq=self.seq(), branch=f"z9hG4bKabye{self._cseq}",
                            from_side_is_to=False), CALLER, self.a200.call_id)

    def alice_reinvite(self, body: str = CALLER_SDP) -> int:
        cseq = self.seq()
        self.w.inject(in_dialog("INVITE", self.a200, cseq=cseq, branch=f"z9hG4bKare{cseq}", from_side_is_to=False,
                                extra="Content-Type: application/sdp\nContact: <sip:alice@127.0.0.1:5070>"),
                      CALLER, body=body)
        return cseq

    # -- carol -------------------------------------------------------------------------------------

    def carol_request(self, method: str, extra: str = "", body: str = "") -> int:
        cseq = self.seq()
        inv = self.c_inv
        text = f"""{method} sip:b2bua@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKcarol{method}{cseq}
From: {inv.headers.get("To")};tag=ctag
To: {inv.headers.get("From")}
Call-ID: {inv.call_id}
CSeq: {cseq} {method}
Max-Forwards: 70
Contact: <sip:carol@127.0.0.1:5090>""" + (f"\n{extra}" if extra else "")
        if method == "BYE":
            self._bye(text, TARGET, inv.call_id)
        else:
            self.w.inject(text, TARGET, body=body)
        return cseq

    def carol_answers(self) -> None:
        """Early: carol answers the consultation INVITE that now belongs to the transfer."""
        self.w.inject(response_to(self.c_inv, 200, "OK", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>",
                                  extra="Content-Type: application/sdp"), TARGET, body=TARGET_SDP)
        self.dialogs[self.c_inv.call_id] = TARGET

    def target_reinvite(self) -> Request:
        [t_reinv] = reinvites(self.w, TARGET, self.c_inv.call_id)
        return t_reinv

    def transferee_reinvite(self) -> Request:
        [a_reinv] = reinvites(self.w, CALLER, self.a200.call_id)
        return a_reinv

    # -- bookkeeping -------------------------------------------------------------------------------

    def _bye(self, text: str, source: Address, call_id: str) -> None:
        self.party_byes.setdefault(call_id, len(self.w.sent))
        self.w.inject(text, source)
        [resp] = [r for r in self.w.sent[self.party_byes[call_id]:]
                  if isinstance(r[0], Response) and r[0].cseq.method == "BYE" and r[0].call_id == call_id
                  and r[1] == source][:1]
        assert resp[0].status in (200, 481)

    def responses_to(self, dest: Address, call_id: str, method: str, cseq: int) -> list[int]:
        return [r.status for r in self.w.responses(dest)
                if r.call_id == call_id and r.cseq.method == method and r.cseq.seq == cseq]

    def settle(self) -> None:
        """Every party answers 200 to every BYE and NOTIFY we sent it (once per transaction)."""
        for _ in range(5):
            progress = False
            for dest in PARTIES:
                for method in ("BYE", "NOTIFY"):
                    for req in self.w.requests(dest, method):
                        key = (req.call_id, req.cseq.seq, method, str(dest))
                        if key in self._answered:
                            continue
                        self._answered.add(key)
                        progress = True
                        answer(self.w, req, dest)
            if not progress:
                return

    def daemon_byes(self) -> dict[str, list[int]]:
        """call-id -> the indexes in w.sent of the BYEs we sent on it."""
        out: dict[str, list[int]] = {}
        for i, (m, _) in enumerate(self.w.sent):
            if isinstance(m, Request) and m.method == "BYE":
                out.setdefault(m.call_id, []).append(i)
        return out

    def check_clean(self) -> None:
        self.settle()
        w = self.w
        assert not w.core.calls, "a call was left behind"
        assert not w.core._legs, "a leg was left registered"
        assert w.rtp is not None and not w.rtp.calls, "a relay session was left behind"
        ours = self.daemon_byes()
        left_up = [cid for cid in self.dialogs if cid not in ours and cid not in self.party_byes]
        assert not left_up, f"dialogs nobody ended: {left_up}"
        for cid, at in self.party_byes.items():
            late = [i for i in ours.get(cid, []) if i > at]
            assert not late, f"BYE sent on {cid} after the party had ended it"

    def hang_up_all_parties(self) -> None:
        """Whoever still has a dialog with us (not ended by anyone) hangs up now."""
        ours = self.daemon_byes()
        for cid in list(self.dialogs):
            if cid in ours or cid in self.party_byes:
                continue
            if cid == self.a200.call_id:
                self.alice_bye()
            elif cid == self.b_inv.call_id:
                self.bob_bye_call1()
            elif cid == CONSULT:
                self.bob_bye_consult()
            elif cid == self.c_inv.call_id:
                self.carol_request("BYE")
            self.settle()


def completed(r: Race) -> None:
    """After an attended/early transfer completed: alice and carol talk; alice hangs up."""
    assert len(r.w.core.calls) == 1
    r.settle()
    r.alice_bye()
    # (not the BYE that released a second fork, tag ctag2, in the fork test)
    [t_bye] = [b for b in r.w.requests(TARGET, "BYE") if b.call_id == r.c_inv.call_id and b.to_tag != "ctag2"]
    assert t_bye


def relay_refuses(w: Wire, command: str, reason: str = "out of ports") -> None:
    """The in-process relay answers the next `command` with an ng error (it stays alive)."""
    assert w.control is not None
    real = w.control.receive

    def receive(data: bytes, addr: object, now: float) -> bytes | None:
        cookie, _, body = data.partition(b" ")
        msg = bencode.decode(body)
        if isinstance(msg, dict) and msg.get("command") == command.encode():
            w.control.receive = real  # type: ignore[union-attr,method-assign]
            return cookie + b" " + bencode.encode({"result": "error", "error-reason": reason})
        return real(data, addr, now)

    w.control.receive = receive  # type: ignore[method-assign]


# ================================================================================================
# The transferee (alice) hangs up
# ================================================================================================


def test_transferee_bye_before_the_relay_answered_the_offer_gives_the_consultation_back():
    r = Race()
    r.w.auto_pump = False
    r.refer()
    assert not reinvites(r.w, TARGET, r.c_inv.call_id)  # the offer is at the relay
    r.alice_bye()
    r.w.auto_pump = True
    r.w.pump()
    assert not reinvites(r.w, TARGET, r.c_inv.call_id)  # carol is left alone
    assert r.w.core.stats.transfers[("attended", "abandoned")] == 1
    r.settle()
    assert len(r.w.core.calls) == 1  # call 2 goes on
    assert CONSULT not in r.daemon_byes()
    r.hang_up_all_parties()
    r.check_clean()


def test_transferee_bye_while_the_target_reinvite_is_pending_and_the_target_refuses():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    r.alice_bye()
    answer(r.w, t_reinv, TARGET, status=488, reason="Not Acceptable Here")
    r.settle()
    assert len(r.w.core.calls) == 1  # carol stayed on the consultation media: call 2 goes on
    assert r.c_inv.call_id not in r.daemon_byes()
    r.hang_up_all_parties()
    r.check_clean()


def test_transferee_bye_while_the_target_reinvite_is_pending_and_it_times_out():
    r = Race()
    r.refer()
    r.target_reinvite()
    r.alice_bye()
    r.settle()
    r.w.advance(40)  # Timer B on our re-INVITE to carol
    r.settle()
    r.hang_up_all_parties()
    r.check_clean()


def test_transferee_bye_after_the_target_answered_but_before_the_relay_answered():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    r.w.auto_pump = False
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)  # carol moved to the new session; the answer is at the relay
    r.alice_bye()
    r.w.auto_pump = True
    r.w.pump()
    r.settle()
    # carol no longer has media with bob: the consultation cannot resume, as when her 200 comes later.
    assert {CONSULT, r.c_inv.call_id} <= set(r.daemon_byes())
    r.check_clean()


def test_transferee_bye_while_its_own_reinvite_is_pending():
    r = Race()
    r.refer()
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    a_reinv = r.transferee_reinvite()
    r.alice_bye()
    assert r.c_inv.call_id in r.daemon_byes()  # carol, now bridged to alice, is released
    answer(r.w, a_reinv, CALLER, status=487, reason="Request Terminated")
    r.check_clean()
    assert r.w.core.stats.transfers[("attended", "abandoned")] == 1


def test_transferee_bye_then_a_late_200_to_its_reinvite():
    r = Race()
    r.refer()
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    a_reinv = r.transferee_reinvite()
    r.alice_bye()
    answer(r.w, a_reinv, CALLER, CALLER_SDP)  # alice's phone answered before it saw its own BYE done
    r.settle()
    r.check_clean()


def test_early_completion_transferee_bye_before_the_target_answers_cancels_it():
    r = Race(early=True)
    r.refer()
    r.settle()
    r.alice_bye()
    [cancel] = r.w.requests(TARGET, "CANCEL")
    answer(r.w, cancel, TARGET)
    r.w.inject(response_to(r.c_inv, 487, "Request Terminated", to_tag="ctag"), TARGET)
    r.check_clean()
    assert r.w.core.stats.transfers[("early", "abandoned")] == 1


def test_early_completion_transferee_bye_then_the_200_crosses_the_cancel():
    r = Race(early=True)
    r.refer()
    r.settle()
    r.alice_bye()
    r.carol_answers()  # crossed our CANCEL: ACKed and hung up
    assert [a.cseq.seq for a in r.w.requests(TARGET, "ACK")] == [1]
    assert r.c_inv.call_id in r.daemon_byes()
    r.check_clean()


def test_early_completion_transferee_bye_while_the_target_reinvite_is_pending():
    r = Race(early=True)
    r.refer()
    r.settle()
    r.carol_answers()
    t_reinv = r.target_reinvite()
    r.alice_bye()
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    r.settle()
    assert r.c_inv.call_id in r.daemon_byes()
    r.check_clean()


def test_early_completion_transferee_bye_after_the_target_answered_before_the_relay_did():
    r = Race(early=True)
    r.refer()
    r.settle()
    r.w.auto_pump = False
    r.carol_answers()
    r.alice_bye()
    r.w.auto_pump = True
    r.w.pump()
    r.settle()
    assert r.c_inv.call_id in r.daemon_byes()
    r.check_clean()


# ================================================================================================
# The target (carol) hangs up
# ================================================================================================


def test_target_bye_before_the_relay_answered_fails_the_transfer_and_ends_the_consultation():
    r = Race()
    r.w.auto_pump = False
    r.refer()
    r.carol_request("BYE")
    r.w.auto_pump = True
    r.w.pump()
    assert not reinvites(r.w, TARGET, r.c_inv.call_id)
    assert sipfrags(r.w)[-1][0].startswith("SIP/2.0 481")
    assert CONSULT in r.daemon_byes()  # bob's consultation leg has nobody left
    r.settle()
    assert len(r.w.core.calls) == 1  # alice and bob go on
    r.hang_up_all_parties()
    r.check_clean()


def test_target_bye_while_its_reinvite_is_pending():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    r.carol_request("BYE")
    answer(r.w, t_reinv, TARGET, status=481, reason="Call/Transaction Does Not Exist")
    assert sipfrags(r.w)[-1][0].startswith("SIP/2.0 481")
    r.settle()
    assert len(r.w.core.calls) == 1 and CONSULT in r.daemon_byes()
    assert r.a200.call_id not in r.daemon_byes()
    r.hang_up_all_parties()
    r.check_clean()


def test_target_bye_after_its_200_but_before_the_relay_answered():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    r.w.auto_pump = False
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    r.carol_request("BYE")
    r.w.auto_pump = True
    r.w.pump()
    r.settle()
    for a_reinv in reinvites(r.w, CALLER, r.a200.call_id):
        answer(r.w, a_reinv, CALLER, CALLER_SDP)
    r.settle()
    # The target is gone and the transferor released: alice must be hung up, not left alone.
    assert r.a200.call_id in r.daemon_byes()
    r.check_clean()


def test_target_bye_while_the_transferees_reinvite_is_pending():
    r = Race()
    r.refer()
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    a_reinv = r.transferee_reinvite()
    r.carol_request("BYE")
    assert r.a200.call_id in r.daemon_byes()
    answer(r.w, a_reinv, CALLER, CALLER_SDP)
    r.check_clean()


def test_early_completion_target_answers_then_hangs_up_before_the_reinvite():
    r = Race(early=True)
    r.refer()
    r.settle()
    r.w.auto_pump = False
    r.carol_answers()
    r.carol_request("BYE")
    r.w.auto_pump = True
    r.w.pump()
    r.settle()
    assert r.a200.call_id in r.daemon_byes()  # nobody left for alice
    r.check_clean()
    assert r.w.core.stats.transfers[("early", "failed")] == 1


def test_early_completion_target_bye_while_its_reinvite_is_pending():
    r = Race(early=True)
    r.refer()
    r.settle()
    r.carol_answers()
    t_reinv = r.target_reinvite()
    r.carol_request("BYE")
    answer(r.w, t_reinv, TARGET, status=481, reason="Call/Transaction Does Not Exist")
    r.settle()
    assert r.a200.call_id in r.daemon_byes()
    r.check_clean()


# ================================================================================================
# The transferor (bob) hangs up its consultation leg, or call 1 right after the 202
# ================================================================================================


@pytest.mark.parametrize("stage", ["before_relay", "target_reinvite", "transferee_reinvite"])
def test_transferor_consultation_bye_at_each_stage(stage):
    r = Race()
    if stage == "before_relay":
        r.w.auto_pump = False
        r.refer()
        r.bob_bye_consult()
        r.w.auto_pump = True
        r.w.pump()
        t_reinv = r.target_reinvite()
        answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    elif stage == "target_reinvite":
        r.refer()
        t_reinv = r.target_reinvite()
        r.bob_bye_consult()
        answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    else:
        r.refer()
        answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
        r.bob_bye_consult()  # crosses our BYE (481 is fine)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    assert r.w.core.stats.transfers[("attended", "completed")] == 1
    completed(r)
    r.check_clean()


def test_transferor_consultation_bye_then_the_target_refuses():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    r.bob_bye_consult()
    answer(r.w, t_reinv, TARGET, status=486, reason="Busy Here")
    r.settle()
    assert r.c_inv.call_id in r.daemon_byes()  # the consultation has lost bob: carol is hung up
    assert len(r.w.core.calls) == 1
    r.hang_up_all_parties()
    r.check_clean()


def test_transferor_bye_on_call1_right_after_the_202():
    r = Race()
    r.refer()
    r.bob_bye_call1()
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    assert r.w.core.stats.transfers[("attended", "completed")] == 1
    completed(r)
    r.check_clean()


def test_transferor_bye_on_call1_then_the_target_refuses():
    r = Race()
    r.refer()
    r.bob_bye_call1()
    answer(r.w, r.target_reinvite(), TARGET, status=603, reason="Decline")
    r.settle()
    assert r.a200.call_id in r.daemon_byes()  # alice has nobody left
    assert len(r.w.core.calls) == 1  # the consultation goes on
    r.hang_up_all_parties()
    r.check_clean()


def test_transferor_bye_on_call1_before_the_relay_answered():
    r = Race()
    r.w.auto_pump = False
    r.refer()
    r.bob_bye_call1()
    r.w.auto_pump = True
    r.w.pump()
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()


def test_early_completion_transferor_bye_on_call1_crossing_ours():
    r = Race(early=True)
    r.refer()
    r.bob_bye_call1()  # crosses the BYE the early completion sent it
    r.carol_answers()
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()


# ================================================================================================
# Glare and re-INVITEs from the parties while the transfer runs
# ================================================================================================


def test_491_on_the_target_reinvite_is_retried():
    r = Race()
    r.refer()
    first = r.target_reinvite()
    answer(r.w, first, TARGET, status=491, reason="Request Pending")
    r.w.advance(2.2)
    again = [t for t in reinvites(r.w, TARGET, r.c_inv.call_id) if t.cseq.seq != first.cseq.seq]
    assert len(again) == 1 and again[0].body == first.body
    answer(r.w, again[0], TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()


def test_491_on_the_target_reinvite_then_the_transferee_hangs_up_during_the_wait():
    r = Race()
    r.refer()
    answer(r.w, r.target_reinvite(), TARGET, status=491, reason="Request Pending")
    r.alice_bye()
    r.w.advance(2.2)
    assert len(reinvites(r.w, TARGET, r.c_inv.call_id)) == 1  # not retried for nobody
    r.settle()
    assert len(r.w.core.calls) == 1  # the consultation goes on as it was
    r.hang_up_all_parties()
    r.check_clean()


def test_491_on_the_target_reinvite_then_the_target_hangs_up_during_the_wait():
    r = Race()
    r.refer()
    answer(r.w, r.target_reinvite(), TARGET, status=491, reason="Request Pending")
    r.carol_request("BYE")
    r.w.advance(2.2)
    assert len(reinvites(r.w, TARGET, r.c_inv.call_id)) == 1
    r.settle()
    assert CONSULT in r.daemon_byes()
    r.hang_up_all_parties()
    r.check_clean()


def test_491_on_the_transferees_reinvite_is_retried():
    r = Race()
    r.refer()
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    first = r.transferee_reinvite()
    answer(r.w, first, CALLER, status=491, reason="Request Pending")
    r.w.advance(2.2)
    second = [a for a in reinvites(r.w, CALLER, r.a200.call_id) if a.cseq.seq != first.cseq.seq]
    assert len(second) == 1 and second[0].body == first.body
    answer(r.w, second[0], CALLER, CALLER_SDP)
    assert r.w.core.stats.transfers[("attended", "completed")] == 1
    completed(r)
    r.check_clean()


def test_491_on_the_transferees_reinvite_then_it_hangs_up_during_the_wait():
    r = Race()
    r.refer()
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, status=491, reason="Request Pending")
    r.alice_bye()
    r.w.advance(2.2)
    assert len(reinvites(r.w, CALLER, r.a200.call_id)) == 1
    r.check_clean()


def test_target_reinvite_during_the_transfer_is_refused_491():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    cseq = r.carol_request("INVITE", "Content-Type: application/sdp", TARGET_SDP)
    assert r.responses_to(TARGET, r.c_inv.call_id, "INVITE", cseq)[-1] == 491
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    a_reinv = r.transferee_reinvite()
    cseq = r.carol_request("INVITE", "Content-Type: application/sdp", TARGET_SDP)  # now on call 1
    assert r.responses_to(TARGET, r.c_inv.call_id, "INVITE", cseq)[-1] == 491
    answer(r.w, a_reinv, CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()


def test_transferee_reinvite_while_its_own_reinvite_is_pending_is_refused_491():
    r = Race()
    r.refer()
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    a_reinv = r.transferee_reinvite()
    cseq = r.alice_reinvite()
    assert r.responses_to(CALLER, r.a200.call_id, "INVITE", cseq)[-1] == 491
    answer(r.w, a_reinv, CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()


def test_transferee_reinvite_while_the_target_is_being_reinvited():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    cseq = r.alice_reinvite(CALLER_SDP.replace("m=audio 4000", "m=audio 4002"))  # e.g. a session refresh
    to_bob = [i for i in r.w.requests(PBX, "INVITE") if i.call_id == r.b_inv.call_id and i.cseq.seq > 1]
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    a_reinv = r.transferee_reinvite()
    answer(r.w, a_reinv, CALLER, status=491, reason="Request Pending")  # alice has her own INVITE out
    for inv in to_bob:  # bob, being released, still answers the relayed re-INVITE
        answer(r.w, inv, PBX, BOB_SDP)
    assert r.responses_to(CALLER, r.a200.call_id, "INVITE", cseq)[-1] >= 200  # alice's INVITE got its final
    r.w.advance(2.2)
    for again in reinvites(r.w, CALLER, r.a200.call_id)[1:]:
        answer(r.w, again, CALLER, CALLER_SDP)
    assert r.w.core.stats.transfers[("attended", "completed")] == 1
    assert r.w.rtp is not None
    [rcall] = r.w.rtp.calls.values()
    # alice talks to carol: the relay's two ends are alice (4000 or 4002) and carol (7002), not bob (6100).
    ends = {ep.signalled_rtp[1] for st in rcall.streams for ep in (st.a, st.b)}
    assert 7002 in ends and 6100 not in ends
    completed(r)
    r.check_clean()


# ================================================================================================
# A second REFER; daemon shutdown; the relay
# ================================================================================================


def test_a_second_refer_on_call1_and_a_refer_on_the_lent_consultation_are_refused():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    refer_with_replaces(r.w, r.b200, r.c200, cseq=3)
    assert [x.status for x in r.w.responses(PBX) if x.cseq.method == "REFER" and x.cseq.seq == 3] == [491]
    # bob's phone tries the other direction on the consultation call (now lent to the transfer).
    replaces = f"{r.b_inv.call_id.replace('@', '%40')}%3Bto-tag%3D{r.b_inv.from_tag}%3Bfrom-tag%3Dbtag"
    r.w.inject(in_dialog("REFER", r.c200, cseq=r.seq(), branch="z9hG4bKcref", from_side_is_to=False,
                         via="127.0.0.1:5080",
                         extra=f"Refer-To: <sip:alice@127.0.0.1?Replaces={replaces}>\n"
                               "Contact: <sip:bob@127.0.0.1:5080>"), PBX)
    [status] = [x.status for x in r.w.responses(PBX) if x.cseq.method == "REFER" and x.call_id == CONSULT]
    assert status >= 400
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    refer_with_replaces(r.w, r.b200, r.c200, cseq=4)  # during the join: bob's leg is released already
    assert [x.status for x in r.w.responses(PBX) if x.cseq.method == "REFER" and x.cseq.seq == 4][-1] >= 400
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    assert r.w.core.stats.transfers[("attended", "completed")] == 1
    completed(r)
    r.check_clean()


def test_a_refer_on_the_consultation_naming_call1_while_call1_transfers_is_refused():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    # The mirror REFER arrives on the consultation's other leg... from carol (she "transfers" bob to alice).
    cseq = r.carol_request("REFER", "Refer-To: <sip:alice@127.0.0.1>")
    assert r.responses_to(TARGET, r.c_inv.call_id, "REFER", cseq)[-1] >= 400
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()


@pytest.mark.parametrize("stage", [
    "before_relay", "target_reinvite", "transferee_reinvite", "early_ringing",
    "early_target_reinvite",
])
def test_daemon_shutdown_in_the_middle_of_a_transfer(stage):
    r = Race(early=stage.startswith("early"))
    pending: list[tuple[Request, Address]] = []
    if stage == "before_relay":
        r.w.auto_pump = False
        r.refer()
    elif stage == "target_reinvite":
        r.refer()
        pending.append((r.target_reinvite(), TARGET))
    elif stage == "transferee_reinvite":
        r.refer()
        answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
        pending.append((r.transferee_reinvite(), CALLER))
    elif stage == "early_ringing":
        r.refer()
    else:
        r.refer()
        r.carol_answers()
        pending.append((r.target_reinvite(), TARGET))
    r.w.core.stop_accepting()
    r.w.core.hangup_all("shutdown")
    r.w.auto_pump = True
    r.w.pump()
    for req, dest in pending:
        answer(r.w, req, dest, status=481, reason="Call/Transaction Does Not Exist")
    if stage == "early_ringing":
        [cancel] = r.w.requests(TARGET, "CANCEL")
        answer(r.w, cancel, TARGET)
        r.w.inject(response_to(r.c_inv, 487, "Request Terminated", to_tag="ctag"), TARGET)
    r.settle()
    r.check_clean()  # nobody hung up: everything was ended by us
    assert not r.party_byes


def test_relay_refusing_the_new_sessions_offer_fails_the_transfer_and_keeps_both_calls():
    r = Race()
    relay_refuses(r.w, "offer")
    r.refer()
    assert not reinvites(r.w, TARGET, r.c_inv.call_id)
    assert sipfrags(r.w)[-1][0].startswith("SIP/2.0 503")
    assert len(r.w.core.calls) == 2 and r.w.core.stats.transfers[("attended", "failed")] == 1
    r.settle()
    r.hang_up_all_parties()
    r.check_clean()


def test_relay_refusing_the_answer_ends_everything_cleanly():
    r = Race()
    r.refer()
    relay_refuses(r.w, "answer")
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    assert r.w.core.stats.transfers[("attended", "bridge_failed")] == 1
    r.settle()
    r.check_clean()


def test_relay_going_down_during_an_attended_transfer():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    r.w.relay_down = True
    r.w.advance(6)  # declared down: both calls' sessions are on it
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    r.settle()
    r.w.advance(6)
    r.settle()
    assert not r.w.core.calls
    assert not r.w.core._legs
    ours = r.daemon_byes()
    assert all(cid in ours or cid in r.party_byes for cid in r.dialogs)


# ================================================================================================
# INVITE with Replaces, CANCEL, retransmitted 2xx
# ================================================================================================


def test_invite_with_replaces_for_legs_of_a_transfer_in_progress_is_refused():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    invite_with_replaces(r.w, r.b_inv, call_id="r1@x")  # bob's call-1 leg: the transferor
    assert [x.status for x in final(r.w, call_id="r1@x")] == [491]
    # bob's consultation leg (lent to the transfer), named as its Replaces would name it.
    r.w.inject(f"""INVITE sip:carol@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKrepl2
From: <sip:dave@127.0.0.1>;tag=davetag
To: <sip:carol@127.0.0.1:5060>
Call-ID: r2@x
CSeq: 1 INVITE
Max-Forwards: 70
Contact: <sip:dave@127.0.0.1:5080>
Replaces: {CONSULT};to-tag={r.c200.to_tag};from-tag=bobtag2
Require: replaces
Content-Type: application/sdp""", PBX, body=BOB_SDP)
    [st] = [x.status for x in final(r.w, call_id="r2@x")]
    assert st >= 400
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()


def test_cancel_of_an_invite_with_replaces_before_the_relay_answered():
    w = wire()
    a200, b_inv, _ = establish(w)
    w.auto_pump = False
    invite_with_replaces(w, b_inv)
    w.inject("""CANCEL sip:alice@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKrepl-dave-1@127.0.0.1
From: <sip:dave@127.0.0.1>;tag=davetag
To: <sip:alice@127.0.0.1:5060>
Call-ID: dave-1@127.0.0.1
CSeq: 1 CANCEL
Max-Forwards: 70""", PBX)
    w.auto_pump = True
    w.pump()
    assert [x.status for x in final(w)] == [200, 487]
    assert not reinvites(w, CALLER, a200.call_id)  # alice never moved
    assert w.rtp is not None and len(w.rtp.calls) == 1  # the replacement's offer was released
    assert len(w.core.calls) == 1
    w.inject(in_dialog("BYE", a200, cseq=3, branch="z9hG4bKabye", from_side_is_to=False))
    [bye] = w.requests(PBX, "BYE")
    assert bye.call_id == b_inv.call_id
    answer(w, bye, PBX)
    assert not w.core.calls and not w.core._legs and not w.rtp.calls


def test_retransmitted_2xx_to_our_reinvites_are_acked_again_not_processed_again():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)  # carol did not get our ACK
    t_acks = [a for a in r.w.requests(TARGET, "ACK") if a.cseq.seq == t_reinv.cseq.seq]
    assert len(t_acks) == 2
    a_reinv = r.transferee_reinvite()  # only one re-INVITE of alice
    answer(r.w, a_reinv, CALLER, CALLER_SDP)
    answer(r.w, a_reinv, CALLER, CALLER_SDP)
    a_acks = [a for a in r.w.requests(CALLER, "ACK") if a.cseq.seq == a_reinv.cseq.seq]
    assert len(a_acks) == 2
    assert len(reinvites(r.w, CALLER, r.a200.call_id)) == 1
    assert r.w.core.stats.transfers[("attended", "completed")] == 1
    assert len(r.w.core.calls) == 1 and len(r.w.rtp.calls) == 1
    assert media_port(a_reinv.body)[1] in relay_ports(r.w)
    completed(r)
    r.check_clean()


def test_retransmitted_2xx_after_the_transfer_and_call_ended():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    a_reinv = r.transferee_reinvite()
    answer(r.w, a_reinv, CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()
    before = len(r.w.requests(TARGET, "BYE"))
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    answer(r.w, a_reinv, CALLER, CALLER_SDP)
    # Late duplicates: at most re-ACKed, never a new BYE or re-INVITE for dialogs already ended.
    assert len(r.w.requests(TARGET, "BYE")) == before
    assert not r.w.core.calls


def test_early_completion_retransmitted_200_from_the_target_is_acked_again():
    r = Race(early=True)
    r.refer()
    r.carol_answers()
    r.carol_answers()
    assert [a.cseq.seq for a in r.w.requests(TARGET, "ACK")] == [1, 1]
    assert len(reinvites(r.w, TARGET, r.c_inv.call_id)) == 1
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()


def test_early_completion_a_second_fork_answering_is_acked_and_released():
    r = Race(early=True)
    r.refer()
    r.carol_answers()
    r.w.inject(response_to(r.c_inv, 200, "OK", to_tag="ctag2", contact="<sip:carol2@127.0.0.1:5090>",
                           extra="Content-Type: application/sdp"), TARGET, body=TARGET_SDP)
    assert [a.to_tag for a in r.w.requests(TARGET, "ACK")] == ["ctag", "ctag2"]
    assert [b.to_tag for b in r.w.requests(TARGET, "BYE")] == ["ctag2"]
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()


def test_blind_transfer_a_second_fork_answering_is_acked_and_released():
    w = wire()
    _, _, b200 = establish(w)
    refer_from_callee(w, b200)
    [t_inv] = w.requests(TARGET, "INVITE")
    for tag in ("ctag", "ctag2"):
        w.inject(response_to(t_inv, 200, "OK", to_tag=tag, contact="<sip:carol@127.0.0.1:5090>",
                             extra="Content-Type: application/sdp"), TARGET, body=TARGET_SDP)
    assert [a.to_tag for a in w.requests(TARGET, "ACK")] == ["ctag", "ctag2"]
    assert [b.to_tag for b in w.requests(TARGET, "BYE")] == ["ctag2"]


def test_early_completion_target_bye_after_its_reinvite_200_but_before_the_relay_answered():
    r = Race(early=True)
    r.refer()
    r.settle()
    r.carol_answers()
    t_reinv = r.target_reinvite()
    r.w.auto_pump = False
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    r.carol_request("BYE")
    r.w.auto_pump = True
    r.w.pump()
    for a_reinv in reinvites(r.w, CALLER, r.a200.call_id):
        answer(r.w, a_reinv, CALLER, CALLER_SDP)
    r.settle()
    assert r.a200.call_id in r.daemon_byes()
    r.check_clean()


def test_early_completion_the_transferor_cancels_its_consultation_after_the_refer():
    r = Race(early=True)
    r.refer()
    r.w.inject("""CANCEL sip:carol@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKconsult
From: <sip:bob@127.0.0.1>;tag=bobtag2
To: <sip:carol@127.0.0.1:5060>
Call-ID: consult-1@127.0.0.1
CSeq: 1 CANCEL
Max-Forwards: 70""", PBX)
    assert not r.w.requests(TARGET, "CANCEL")  # the ringing INVITE is the transfer's now
    r.carol_answers()
    answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    completed(r)
    r.check_clean()


def test_blind_transfer_target_bye_after_its_200_but_before_the_relay_answered():
    w = wire()
    a200, b_inv, b200 = establish(w)
    refer_from_callee(w, b200)
    [t_inv] = w.requests(TARGET, "INVITE")
    w.auto_pump = False
    w.inject(response_to(t_inv, 200, "OK", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>",
                         extra="Content-Type: application/sdp"), TARGET, body=TARGET_SDP)
    w.inject(f"""BYE sip:b2bua@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKcarolbye
From: {t_inv.headers.get("To")};tag=ctag
To: {t_inv.headers.get("From")}
Call-ID: {t_inv.call_id}
CSeq: 1 BYE
Max-Forwards: 70""", TARGET)
    w.auto_pump = True
    w.pump()
    for a_reinv in reinvites(w, CALLER, a200.call_id):
        answer(w, a_reinv, CALLER, CALLER_SDP)
    for dest in PARTIES:
        for req in w.requests(dest, "BYE") + w.requests(dest, "NOTIFY"):
            answer(w, req, dest)
    assert a200.call_id in {b.call_id for b in w.requests(CALLER, "BYE")}  # nobody left for alice


def test_transferee_and_target_both_hang_up_while_the_target_reinvite_is_pending():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    r.alice_bye()
    r.carol_request("BYE")
    answer(r.w, t_reinv, TARGET, status=481, reason="Call/Transaction Does Not Exist")
    r.settle()
    assert CONSULT in r.daemon_byes()  # bob is the only one left: released
    r.check_clean()


def test_transferor_hangs_up_both_calls_while_the_target_reinvite_is_pending():
    r = Race()
    r.refer()
    t_reinv = r.target_reinvite()
    r.bob_bye_call1()
    r.bob_bye_consult()
    answer(r.w, t_reinv, TARGET, CAROL_SDP2)
    answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
    assert r.w.core.stats.transfers[("attended", "completed")] == 1
    completed(r)
    r.check_clean()


def test_refer_naming_a_consultation_with_a_replacement_in_progress_is_refused():
    r = Race()
    # dave (via the PBX) replaces bob's consultation leg: carol, who stays, is re-INVITEd.
    r.w.inject(f"""INVITE sip:carol@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKrepl9
From: <sip:dave@127.0.0.1>;tag=davetag
To: <sip:carol@127.0.0.1:5060>
Call-ID: r9@x
CSeq: 1 INVITE
Max-Forwards: 70
Contact: <sip:dave@127.0.0.1:5080>
Replaces: {CONSULT};to-tag={r.c200.to_tag};from-tag=bobtag2
Require: replaces
Content-Type: application/sdp""", PBX, body=BOB_SDP)
    assert len(reinvites(r.w, TARGET, r.c_inv.call_id)) == 1
    refer_with_replaces(r.w, r.b200, r.c200)
    assert [x.status for x in r.w.responses(PBX) if x.cseq.method == "REFER"] == [491]
    assert len(reinvites(r.w, TARGET, r.c_inv.call_id)) == 1


def test_refer_while_the_transferors_hold_reinvite_to_the_transferee_is_pending():
    r = Race()
    r.w.inject(in_dialog("INVITE", r.b200, cseq=2, branch="z9hG4bKhold1", from_side_is_to=True, via="127.0.0.1:5080",
                         extra="Content-Type: application/sdp\nContact: <sip:bob@127.0.0.1:5080>"),
               PBX, body=BOB_SDP + "a=sendonly\r\n")
    [hold] = reinvites(r.w, CALLER, r.a200.call_id)
    refer_with_replaces(r.w, r.b200, r.c200, cseq=3)
    [status] = [x.status for x in r.w.responses(PBX) if x.cseq.method == "REFER"]
    if status == 202:
        answer(r.w, r.target_reinvite(), TARGET, CAROL_SDP2)
        assert len(reinvites(r.w, CALLER, r.a200.call_id)) == 1, "a second INVITE to alice while one is pending"
    answer(r.w, hold, CALLER, CALLER_SDP + "a=recvonly\r\n")
    assert [x.status for x in r.w.responses(PBX) if x.cseq.method == "INVITE" and x.cseq.seq == 2]
    if status == 202:
        for again in reinvites(r.w, CALLER, r.a200.call_id)[1:]:
            answer(r.w, again, CALLER, CALLER_SDP)
        assert r.w.core.stats.transfers[("attended", "completed")] == 1
        completed(r)
    else:
        r.hang_up_all_parties()
    r.check_clean()


def test_refer_while_the_transferors_hold_reinvite_to_the_target_is_pending():
    r = Race()
    r.w.inject(in_dialog("INVITE", r.c200, cseq=2, branch="z9hG4bKhold2", from_side_is_to=False, via="127.0.0.1:5080",
                         extra="Content-Type: application/sdp\nContact: <sip:bob@127.0.0.1:5080>"),
               PBX, body=BOB_SDP + "a=sendonly\r\n")
    [hold] = reinvites(r.w, TARGET, r.c_inv.call_id)
    refer_with_replaces(r.w, r.b200, r.c200)
    [status] = [x.status for x in r.w.responses(PBX) if x.cseq.method == "REFER"]
    assert len(reinvites(r.w, TARGET, r.c_inv.call_id)) == 1, "a second INVITE to carol while one is pending"
    answer(r.w, hold, TARGET, TARGET_SDP + "a=recvonly\r\n")
    assert [a for a in r.w.requests(TARGET, "ACK") if a.cseq.seq == hold.cseq.seq], "carol's 200 not ACKed"
    assert [x for x in r.w.responses(PBX) if x.call_id == CONSULT and x.cseq.seq == 2 and x.status >= 200]
    if status == 202:
        answer(r.w, reinvites(r.w, TARGET, r.c_inv.call_id)[-1], TARGET, CAROL_SDP2)
        answer(r.w, r.transferee_reinvite(), CALLER, CALLER_SDP)
        completed(r)
    else:
        r.hang_up_all_parties()
    r.check_clean()


def test_early_completion_of_a_delayed_offer_consultation():
    w = wire()
    a200, _, b200 = establish(w)
    w.inject("""INVITE sip:carol@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKconsultlo
From: <sip:bob@127.0.0.1>;tag=bobtag2
To: <sip:carol@127.0.0.1:5060>
Call-ID: consult-1@127.0.0.1
CSeq: 1 INVITE
Max-Forwards: 70
Contact: <sip:bob@127.0.0.1:5080>""", PBX)
    [c_inv] = w.requests(TARGET, "INVITE")
    assert c_inv.body == b""
    w.inject(response_to(c_inv, 180, "Ringing", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>"), TARGET)
    [ringing] = w.responses(PBX, 180)
    refer_with_replaces(w, b200, ringing)
    [status] = [x.status for x in w.responses(PBX) if x.cseq.method == "REFER"]
    if status != 202:
        return  # refusing this early completion is a fine answer too
    w.inject(response_to(c_inv, 200, "OK", to_tag="ctag", contact="<sip:carol@127.0.0.1:5090>",
                         extra="Content-Type: application/sdp"), TARGET, body=TARGET_SDP)
    [ack] = w.requests(TARGET, "ACK")
    assert ack.body, "the ACK to carol's offer carries no answer"
