"""The plugin package for routing policies (``IRoutingPolicyFactory`` providers).

Twisted's "alternate plugin package" pattern: besides this directory, every
directory ``sbc/plugins/`` (without an ``__init__.py``) on ``sys.path`` is
part of the package, so a third party adds a routing policy by installing a
module there; ``twisted.plugin.getPlugins(IRoutingPolicyFactory, sbc.plugins)``
finds it. See docs/routing.md.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
