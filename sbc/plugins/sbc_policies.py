"""The stock routing policies as Twisted plugins: default, round-robin, least-calls."""

from sbc.routing.policies import STOCK_FACTORIES

default, round_robin, least_calls = STOCK_FACTORIES
