"""What our user agents say they can do: the Allow list and the option tags we support.

How this works: every Contact-bearing request or response a leg sends advertises `ALLOW`; the core
answers OPTIONS with it and refuses a `Require` naming an option tag outside `SUPPORTED`
(RFC 3261 §8.2.2.3) with 420.
"""

from __future__ import annotations

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, MESSAGE, NOTIFY, PRACK, REFER"

# norefersub: RFC 4488 (a REFER without its implicit subscription); replaces: RFC 3891 (INVITE with
# Replaces, see replacement.py); tdialog: RFC 4538 (Target-Dialog).
SUPPORTED: frozenset[str] = frozenset({"norefersub", "replaces", "tdialog"})
