"""Ended calls are freed by reference counting alone: no reference cycle through a call's objects.

Why it matters: the daemon never runs the cycle collector's oldest generation by allocation count
(b2bua/collector.py), so an object of a call caught in a cycle would stay until the ten-minute
pass. Each case runs a whole call-flow test of the suite with the collector off, then asks the
collector what it would free: none of it may be a call-layer object (Call, Leg, Transfer, ...).
The fake wires a flow creates are kept alive meanwhile: what is still reachable from the core
(a call that goes on, a transaction waiting out its timer) is not garbage, cyclic or not.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest

from . import (
    test_api_originate,
    test_attended_transfer,
    test_call_flows,
    test_deflection,
    test_hold,
    test_replaces_invite,
    test_transfer,
)
from .wire import Wire

FLOWS: list[Callable[[], None]] = [
    test_call_flows.test_basic_call_relays_both_legs_and_ends_cleanly,
    test_call_flows.test_callee_hangs_up,
    test_call_flows.test_cancel_while_ringing,
    test_call_flows.test_busy_is_relayed_and_503_is_mapped,
    test_call_flows.test_no_answer_timeout_cancels_and_answers_408,
    test_call_flows.test_second_fork_answering_is_acked_and_released,
    test_transfer.test_blind_transfer_by_the_callee_rebridges_the_caller_to_the_target,
    test_transfer.test_a_target_that_never_answers_is_reported_408,
    test_attended_transfer.test_attended_transfer_joins_the_transferee_to_the_consulted_target,
    test_attended_transfer.test_early_completion_releases_the_transferor_and_joins_the_target_when_it_answers,
    test_deflection.test_the_target_answers_and_takes_the_phones_place,
    test_hold.test_hold_then_resume_the_caller,
    test_replaces_invite.test_an_invite_with_replaces_takes_the_named_legs_place,
    test_replaces_invite.test_pickup_answers_the_caller_and_the_picker_and_cancels_the_phone_that_rang,
    test_api_originate.test_click_to_dial_calls_a_without_sdp_then_b_with_a_offer_and_answers_a_in_the_ack,
    test_api_originate.test_b_busy_ends_a_with_an_answer_that_refuses_its_offer_and_a_bye,
    test_api_originate.test_originate_refusals,
]


@pytest.fixture
def collector_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Wire]]:
    wires: list[Wire] = []
    setup = Wire.__post_init__

    def keep(self: Wire) -> None:
        setup(self)
        wires.append(self)

    monkeypatch.setattr(Wire, "__post_init__", keep)
    gc.collect()
    gc.disable()
    try:
        yield wires
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def cyclic_call_objects() -> list[str]:
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = sorted({type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("b2bua.call.")})
    gc.set_debug(0)
    gc.garbage.clear()
    return found


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.__name__.removeprefix("test_"))
def test_the_flow_leaves_no_call_object_in_a_cycle(flow: Callable[[], None], collector_off: list[Wire]) -> None:
    flow()
    for wire in collector_off:
        wire.advance(3600)  # every timer runs out (and its heap entry, which holds its callback, goes)
    assert cyclic_call_objects() == []
