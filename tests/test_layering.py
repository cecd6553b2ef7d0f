"""The dependency rule of docs/architecture.md, checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""

# Inner layers may use twisted.logger / twisted.plugin / defer / zope, but never
# a reactor, a protocol, an endpoint, TLS or the application framework.
FORBIDDEN_FOR_POLICY = (
    "twisted.internet.reactor",
    "twisted.internet.protocol",
    "twisted.internet.endpoints",
    "twisted.internet.ssl",
    "twisted.internet.tcp",
    "twisted.internet.udp",
    "twisted.application",
    "twisted.protocols.tls",
    "OpenSSL",
)


def imported_by(*modules: str) -> set[str]:
    """The module names present after importing ``modules`` in a fresh interpreter."""
    output = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(json.loads(output))


class LayeringTests(SynchronousTestCase):
    def test_sip_core_imports_no_twisted(self) -> None:
        """sbc.sip is sans-I/O: stdlib and attrs only."""
        loaded = imported_by(
            "sbc.sip", "sbc.sip.uri", "sbc.sip.message", "sbc.sip.framing", "sbc.sip.locate"
        )
        self.assertEqual(sorted(m for m in loaded if m.split(".")[0] == "twisted"), [])

    def test_policy_layer_imports_no_io(self) -> None:
        """Config (and later security/routing) never touch reactors, sockets or TLS."""
        loaded = imported_by(
            "sbc.config",
            "sbc.errors",
            "sbc.identity",
            "sbc.security",
            "sbc.adjacencies",
            "sbc.routing",
            "sbc.interfaces",
            "sbc.plugins.sbc_policies",
            "sbc.core",
            "sbc.flood",
            "sbc.cluster",
        )
        bad = sorted(
            m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_FOR_POLICY)
        )
        self.assertEqual(bad, [])

    def test_probe_sees_imports(self) -> None:
        """The probe itself works: importing the service does load twisted.application."""
        self.assertIn("twisted.application.service", imported_by("sbc.service"))
