"""The SBC's registrar: bindings with absolute expiry and the REGISTER logic."""

from sbc.interfaces import ILocationService
from sbc.registrar.bindings import Binding, LocationService, aor_key
from sbc.registrar.registrar import Registrar, RegistrarSettings

__all__ = [
    "Binding",
    "ILocationService",
    "LocationService",
    "Registrar",
    "RegistrarSettings",
    "aor_key",
]
