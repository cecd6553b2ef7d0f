"""Sans-I/O SIP core: bytes in, typed messages out (stdlib + attrs only, no Twisted)."""

from sbc.sip.framing import KEEPALIVE_PING, StreamFramer
from sbc.sip.headers import STAR, CSeq, Headers, NameAddr, Via, Warning, canonical_name
from sbc.sip.message import Request, Response, parse_message, response_to
from sbc.sip.uri import URI, parse_uri

__all__ = [
    "KEEPALIVE_PING",
    "STAR",
    "URI",
    "CSeq",
    "Headers",
    "NameAddr",
    "Request",
    "Response",
    "StreamFramer",
    "Via",
    "Warning",
    "canonical_name",
    "parse_message",
    "parse_uri",
    "response_to",
]
