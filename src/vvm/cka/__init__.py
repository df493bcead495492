"""CKA between layers of vision models: the public, Hydra-free API.

>>> from vvm.cka import cka, StreamingCKA

Layout: ``functional`` (the math on tensors), ``batch_sums`` (what the result metrics share), ``precision``
(autocast and TF32 sealed off), ``bandwidth`` (one RBF kernel per layer), ``kernels`` (kernel objects that own their
parameters), ``pair`` (CKA of one pair of representations: :func:`cka`, :func:`gram`), ``recorder`` (forward hooks
-> per-batch kernels), ``passes`` (the recorder side of a pass: layers learnt, Grams stacked), ``metric`` (float64
states, update, compute), ``streaming`` (one or two models), ``joint`` (every layer of several models against every
other, one product), ``measures`` (CKA, RSA, mutual kNN: one file each and a registry), ``similarity`` (several
measures in one pass), ``correspondence`` (layer identification and best matches of a cross-model block),
``presets`` (which layers), ``result`` (what compute returns), ``registry`` (kernels and measures by name).

>>> from vvm.cka import StreamingSimilarity   # measures=["cka", "rsa", "knn"] in one pass
"""

import importlib
from typing import Any

# name -> the module that defines it. Imported on first use (PEP 562), so that ``import vvm.cka.params`` (and
# the settings, which list kernels and measures by name) import neither torchmetrics nor the passes; ``from
# vvm.cka import cka, StreamingCKA`` works as ever.
_WHERE = {
    **dict.fromkeys(
        [
            "centre_columns",
            "cka_from_hsic",
            "h_centre",
            "hsic",
            "hsic_biased",
            "hsic_unbiased",
            "linear_gram",
            "rbf_from_linear",
            "u_centre",
        ],
        "functional",
    ),
    "JointCKA": "joint",
    "JointResult": "joint",
    "KERNELS": "kernels",
    "make_kernel": "kernels",
    "MEASURES": "measures",
    "MeasureResult": "measures",
    "HSICMetric": "metric",
    "cka": "pair",
    "gram": "pair",
    "PRESETS": "presets",
    "layer_presets": "presets",
    "resolve_layers": "presets",
    "KernelRecorder": "recorder",
    "CKAResult": "result",
    "JointMeasureResult": "similarity",
    "JointSimilarity": "similarity",
    "StreamingSimilarity": "similarity",
    "StreamingCKA": "streaming",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "KERNELS",
    "MEASURES",
    "PRESETS",
    "CKAResult",
    "HSICMetric",
    "JointCKA",
    "JointMeasureResult",
    "JointResult",
    "JointSimilarity",
    "KernelRecorder",
    "MeasureResult",
    "StreamingCKA",
    "StreamingSimilarity",
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
    "make_kernel",
    "rbf_from_linear",
    "resolve_layers",
    "u_centre",
]
