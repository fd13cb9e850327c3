"""The baseline hashers: every method learns `fit(X)` and maps features to {-1,+1} codes with `encode(X)`.

Hashers by name (BGAN included) are in `bganhash.registry`.
"""

from bganhash.hashers.base import Hasher
from bganhash.hashers.itq import ITQ
from bganhash.hashers.lsh import LSH
from bganhash.hashers.pcah import PCAH
from bganhash.hashers.sh import SH
from bganhash.hashers.spherical import SphericalHashing

__all__ = ["ITQ", "LSH", "PCAH", "SH", "Hasher", "SphericalHashing"]
