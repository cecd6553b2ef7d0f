"""State shared by several SBC nodes: registrations and active-call counts (docs/scaling.md).

Pure, like the rest of the policy layer: :mod:`sbc.cluster.store` holds the
logic, :mod:`sbc.cluster.codec` the records; the Redis connection itself is
:mod:`sbc.transport.redis`.
"""

from sbc.cluster.codec import RemoteRelayed
from sbc.cluster.store import (
    HEARTBEAT_INTERVAL,
    SharedLocationService,
    SharedStore,
    StoreClient,
    StoreState,
    StoreUnavailableError,
)

__all__ = [
    "HEARTBEAT_INTERVAL",
    "RemoteRelayed",
    "SharedLocationService",
    "SharedStore",
    "StoreClient",
    "StoreState",
    "StoreUnavailableError",
]
