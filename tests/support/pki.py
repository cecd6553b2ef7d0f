"""Per-run test PKI, written into a trial temporary directory (never committed)."""

from __future__ import annotations

import os

from sbc.labpki import write_lab_pki


def lab_pki(directory: str) -> dict[str, str]:
    """Write the lab PKI into ``directory`` and return the paths by stem."""
    directory = os.path.abspath(directory)
    write_lab_pki(directory)
    paths = {}
    for stem in ("ca", "sbc", "peer", "client"):
        paths[stem] = os.path.join(directory, stem + ".pem")
        paths[stem + "-key"] = os.path.join(directory, stem + ".key")
    return paths
