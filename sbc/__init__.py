"""sbc: a SIP Session Border Controller with encrypted signaling, on Twisted."""

__version__ = "0.1.0.dev0"
