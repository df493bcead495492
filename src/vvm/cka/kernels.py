"""Kernels as objects that own their parameters.

A kernel turns one side's stack of linear Grams (``[L, n, n]``: ``Xc Xcᵀ`` of each layer's centred features, what
the recorder hands on) into the kernel matrices CKA compares. A *side* is a group of layers that shares the
kernel's fitted parameters: ``x``/``y`` in a one- or two-model pass, a model key in a joint pass.

- ``linear``: the Gram itself;
- ``rbf``: ``exp(-‖x_i - x_j‖² / (2σ²))`` with one ``σ²`` per layer, owned by the kernel
  (:class:`~vvm.cka.bandwidth.Bandwidths`: fixed on the first batch and broadcast from rank 0 under DDP, or
  per batch).

Adding a kernel: a class here with a ``name``, ``__call__(side, linear)`` and keyword options prefixed with its
name (``rbf_frac``), decorated ``@register_kernel`` (``cka.kernel=<name>`` exists from then on: the settings'
``Kernel`` choice is built from :data:`KERNELS`); its options, if any, as fields of
:class:`vvm.settings.CKASettings` (and :meth:`~vvm.settings.CKASettings.engine_options`) with their documented
defaults in ``src/vvm/conf/cka/default.yaml``. Only CKA uses the kernel: RSA and mutual kNN read the linear
Grams (distances and cosine similarities of the features themselves).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from vvm.cka.bandwidth import Bandwidths
from vvm.cka.registry import Registry


class Kernel:
    """A kernel: ``kernel(side, linear)`` maps a side's linear Grams ``[L, n, n]`` to kernel matrices."""

    name: ClassVar[str] = ""

    def __call__(self, side: str, linear: Tensor) -> Tensor:
        raise NotImplementedError

    def join(self, side: str, n_layers: int, *, device: torch.device, dtype: torch.dtype) -> None:
        """A rank whose first batch was skipped (too small) joins what other ranks do on theirs (nothing for a
        kernel without fitted parameters)."""

    @property
    def fitted(self) -> dict[str, Tensor]:
        """Per side, the parameters fitted on the data (RBF: ``σ²`` per layer); empty for a fixed kernel."""
        return {}


KERNELS: Registry[Kernel] = Registry("kernel", "{kind}={name!r} is not supported: use one of {known}")
register_kernel = KERNELS.register


@register_kernel
class LinearKernel(Kernel):
    """``K = Xc Xcᵀ``: the recorder's Gram as it is."""

    name = "linear"

    def __init__(self, **_: Any) -> None:
        pass

    def __call__(self, side: str, linear: Tensor) -> Tensor:
        return linear


@register_kernel
class RBFKernel(Kernel):
    """``exp(-‖x_i - x_j‖² / (2σ²))``, ``σ² = rbf_frac² · median`` of the off-diagonal squared distances, one per
    layer: fixed on the first batch (``rbf_bandwidth="fixed"``) or re-estimated per batch (``per_batch``)."""

    name = "rbf"

    def __init__(self, *, rbf_frac: float = 1.0, rbf_bandwidth: str = "fixed", **_: Any) -> None:
        self.bandwidths = Bandwidths(rbf_frac, rbf_bandwidth)

    def __call__(self, side: str, linear: Tensor) -> Tensor:
        return self.bandwidths.kernels(side, linear)

    def join(self, side: str, n_layers: int, *, device: torch.device, dtype: torch.dtype) -> None:
        self.bandwidths.join(side, n_layers, device=device, dtype=dtype)

    @property
    def fitted(self) -> dict[str, Tensor]:
        return self.bandwidths.sigma2


check_kernel = KERNELS.check


def make_kernel(name: str, **options: Any) -> Kernel:
    """The kernel ``name`` with its options (each kernel takes the ones named for it, e.g. ``rbf_frac``)."""
    return KERNELS.make(name, **options)


def apply_kernel(
    kernel: Kernel, grams: Tensor, sides: list[tuple[str, int]], *, inplace: bool = False
) -> Tensor:
    """The kernel matrices of a stack ``[ΣL, n, n]`` made of ``sides`` (``(side, layers)`` blocks in order), one
    side at a time; the stack itself when the kernel leaves Grams as they are. ``inplace``: the kernels are
    written into ``grams`` side by side (one side's temporaries, not a second stack)."""
    if isinstance(kernel, LinearKernel):
        return grams
    if len(sides) == 1 and not inplace:
        return kernel(sides[0][0], grams)
    out = grams if inplace else torch.empty_like(grams)
    i = 0
    for side, count in sides:
        out[i : i + count] = kernel(side, grams[i : i + count])
        i += count
    return out


__all__ = [
    "KERNELS",
    "Kernel",
    "LinearKernel",
    "RBFKernel",
    "apply_kernel",
    "check_kernel",
    "make_kernel",
    "register_kernel",
]
