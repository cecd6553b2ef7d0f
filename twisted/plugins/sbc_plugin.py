"""Registers ``twistd sbc``. There is deliberately no __init__.py beside this file."""

from twisted.application.service import ServiceMaker

sbc = ServiceMaker(
    "sbc",
    "sbc.tap",
    "SIP Session Border Controller with encrypted signaling",
    "sbc",
)
