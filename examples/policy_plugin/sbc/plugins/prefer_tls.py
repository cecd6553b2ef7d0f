"""Twisted plugin dropin: makes the prefer-tls routing policy visible to sbc.

sbc looks for routing policies with
``twisted.plugin.getPlugins(IRoutingPolicyFactory, sbc.plugins)``, which
imports every module of every ``sbc/plugins/`` directory on ``sys.path``
(this one has no ``__init__.py``, on purpose) and keeps the module-level
objects that provide the interface. Keep this module small: it is imported
whenever sbc looks for policies.
"""

from sbc_prefer_tls import factory as prefer_tls

__all__ = ["prefer_tls"]
