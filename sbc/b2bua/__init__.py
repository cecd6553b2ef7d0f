"""The signaling B2BUA: calls made of an A-leg and B-legs tried in turn (docs/security-model.md)."""

from sbc.b2bua.call import (
    DEFAULT_CONTINUE_ON,
    Call,
    CallState,
    HuntPolicy,
    Leg,
    Relay,
    Target,
    contact_for,
    outbound_flow,
)
from sbc.b2bua.manager import CallManager, Locator, RouterFunction

__all__ = [
    "DEFAULT_CONTINUE_ON",
    "Call",
    "CallManager",
    "CallState",
    "HuntPolicy",
    "Leg",
    "Locator",
    "Relay",
    "RouterFunction",
    "Target",
    "contact_for",
    "outbound_flow",
]
