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

from vvm.cka.functional import (
    centre_columns,
    cka_from_hsic,
    h_centre,
    hsic,
    hsic_biased,
    hsic_unbiased,
    linear_gram,
    rbf_from_linear,
    u_centre,
)
from vvm.cka.joint import JointCKA, JointResult
from vvm.cka.kernels import KERNELS, make_kernel
from vvm.cka.measures import MEASURES, MeasureResult
from vvm.cka.metric import HSICMetric
from vvm.cka.pair import cka, gram
from vvm.cka.presets import PRESETS, layer_presets, resolve_layers
from vvm.cka.recorder import KernelRecorder
from vvm.cka.result import CKAResult
from vvm.cka.similarity import JointMeasureResult, JointSimilarity, StreamingSimilarity
from vvm.cka.streaming import StreamingCKA

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
