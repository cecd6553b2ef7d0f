"""sbc.auth is policy-layer code: no reactor, socket or TLS import."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.test_layering import FORBIDDEN_FOR_POLICY, imported_by


class AuthLayeringTests(SynchronousTestCase):
    def test_auth_imports_no_io(self) -> None:
        loaded = imported_by("sbc.auth", "sbc.auth.passwd")
        bad = sorted(
            m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_FOR_POLICY)
        )
        self.assertEqual(bad, [])
        self.assertIn("sbc.auth.digest", loaded)
