"""Tests for sbc.transport."""
