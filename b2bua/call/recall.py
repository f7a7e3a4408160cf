"""Recall: a transfer failed after its transferor had gone: call the transferor back (`transfers.recall_transferor`).

How this works: RFC 5589 §6.2 returns the transferee to the transferor when the target fails, but
sometimes the transferor is no longer there: an early completion released it at once (RFC 5589
§7.4, the target then never answered or refused), or it hung up right after the 202. Without a
recall the transferee would be hung up. With one, the B2BUA places a blind transfer of its own,
with no REFER (`start_transfer`), back to the device the transferor used: the INVITE goes to the
Contact of the transferor's dialog, through the same next hop as that dialog's requests, and
carries the transferee's media offer (made sendrecv) on a new relay session. When the transferor
answers, the transferee is re-INVITEd onto its media as after any blind transfer. A recall that
fails (busy, no answer within `calls.no_answer_timeout_s`, unreachable) is not recalled again: the
transferee is hung up then. Its progress is logged as `transfer_progress` events with
`recall: true` and counted as `b2bua_transfers_total{kind="recall"}`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .transfer import Transfer
from .transfer_sink import EventSink, TransferTarget

if TYPE_CHECKING:
    from .call import Call


def recall_transferor(call: Call, failed: Transfer) -> bool:
    """Start calling `failed`'s transferor back for its transferee; False when that cannot be done."""
    transferor, transferee = failed.transferor, failed.transferee
    dialog = transferor.dialog
    if (call.transfer is not None or not call.state_is_confirmed() or dialog is None
            or not transferee.confirmed or transferee not in (call.a, call.b)):
        return False
    recall = Transfer(call, transferor, TransferTarget(dialog.remote_target), transferor.destination(),
                      sink=EventSink(call, {"recall": True}))
    recall.kind = "recall"
    call.transfer = recall
    call.ctx.log_event(call, "transferor_recalled", transferor=transferor.label, target=str(dialog.remote_target))
    recall.start()
    return True
