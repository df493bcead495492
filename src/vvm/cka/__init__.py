"""CKA between layers of vision models: the public, Hydra-free API.

>>> from vvm.cka import cka, StreamingCKA
"""

from vvm.cka.functional import (
    centre_columns,
    cka,
    cka_from_hsic,
    gram,
    h_centre,
    hsic,
    hsic_biased,
    hsic_unbiased,
    linear_gram,
    rbf_from_linear,
    u_centre,
)
from vvm.cka.layers import PRESETS, layer_presets, resolve_layers
from vvm.cka.streaming import CKAResult, StreamingCKA

__all__ = [
    "PRESETS",
    "CKAResult",
    "StreamingCKA",
    "centre_columns",
    "cka",
    "cka_from_hsic",
    "gram",
    "h_centre",
    "hsic",
    "hsic_biased",
    "hsic_unbiased",
    "layer_presets",
    "linear_gram",
    "rbf_from_linear",
    "resolve_layers",
    "u_centre",
]
