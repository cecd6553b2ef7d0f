"""Tests for sbc.routing, sbc.interfaces and the sbc.plugins package."""
