"""The management CLI: :mod:`sbc.cli.commands` (pure sessions), :mod:`sbc.cli.server`
(the management socket) and :mod:`sbc.cli.client` (the ``sbc-cli`` console script).

Nothing is imported here so that the pure layer stays free of reactor imports.
"""
