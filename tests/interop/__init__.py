"""Interop tests: the real daemon against real SIP/TLS peers on 127.0.0.1."""
