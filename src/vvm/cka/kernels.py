"""Kernels as objects that own their parameters.

A kernel turns one side's stack of linear Grams (``[L, n, n]``: ``Xc Xcᵀ`` of each layer's centred features, what
the recorder hands on) into the kernel matrices CKA compares. A *side* is a group of layers that shares the
kernel's fitted parameters: ``x``/``y`` in a one- or two-model pass, a model key in a joint pass.

- ``linear``: the Gram itself;
- ``rbf``: ``exp(-‖x_i - x_j‖² / (2σ²))`` with one ``σ²`` per layer, owned by the kernel
  (:class:`~vvm.cka.bandwidth.Bandwidths`: fixed on the first batch and broadcast from rank 0 under DDP, or
  per batch); its parameters ``frac`` and ``bandwidth``.

A kernel's parameters are a frozen dataclass ``Params`` of :func:`~vvm.cka.params.option`\\ s on its class, as a
measure's are; every engine class and function takes ``kernel="<name>"`` and ``kernel_params={...}`` (plain
values, checked by :func:`make_kernel`) and passes the dict on untouched.

Adding a kernel: a class here (or in a module imported here) with a ``name``, its ``Params`` if it has any and
``__call__(side, linear)``, decorated ``@register_kernel``: ``cka.kernel=<name>`` exists from then on (the
settings' ``Kernel`` choice is built from :data:`KERNELS`, its parameters' settings from ``Params``), and
``vvm.cka.cka(x, y, kernel="<name>", kernel_params={...})`` takes it. Its parameters' documented defaults go
into the config's kernel defaults. Only CKA uses the kernel: RSA and mutual kNN read the linear Grams
(distances and cosine similarities of the features themselves).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from vvm.cka.bandwidth import BANDWIDTH_MODES, Bandwidths
from vvm.cka.functional import rbf_kernels, rbf_sigma2
from vvm.cka.params import NoParams, make_params, option
from vvm.cka.registry import Registry


class Kernel:
    """A kernel: ``kernel(side, linear)`` maps a side's linear Grams ``[L, n, n]`` to kernel matrices.

    ``Params``: its parameters (a frozen dataclass of options; :class:`~vvm.cka.params.NoParams` when it has
    none), held as ``self.params``. ``deprecated``: the old keyword arguments that named a parameter
    (``{"rbf_frac": "frac"}``), still accepted for one release with a ``FutureWarning``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    deprecated: ClassVar[dict[str, str]] = {}

    def __init__(self, params: Any = None) -> None:
        self.params = self.Params() if params is None else params

    @classmethod
    def create(cls, params: Mapping[str, Any] | None = None) -> Kernel:
        """The kernel with ``params`` (plain values, e.g. ``{"frac": 0.5}``), checked against ``Params``."""
        return cls(
            make_params(f"kernel.{cls.name}", cls.Params, dict(params or {}), label=f"kernel {cls.name!r}")
        )

    def describe(self) -> dict[str, Any]:
        """Its parameters as plain values."""
        return asdict(self.params)

    def __call__(self, side: str, linear: Tensor) -> Tensor:
        raise NotImplementedError

    def single(self, linear: Tensor) -> Tensor:
        """The kernel matrices of one call's own examples (:func:`vvm.cka.cka`, :func:`vvm.cka.gram`): nothing
        fitted is kept for other batches or shared with other processes."""
        return type(self)(self.params)("x", linear)

    def join(self, side: str, n_layers: int, *, device: torch.device, dtype: torch.dtype) -> None:
        """A rank whose first batch was skipped (too small) joins what other ranks do on theirs (nothing for a
        kernel without fitted parameters)."""

    @property
    def fitted(self) -> dict[str, Tensor]:
        """Per side, the parameters fitted on the data (RBF: ``σ²`` per layer); empty for a fixed kernel."""
        return {}

    @property
    def facts(self) -> dict[str, Any]:
        """What a CKA result records of the kernel besides its name (fields of :class:`~vvm.cka.CKAResult`)."""
        return {}


KERNELS: Registry[Kernel] = Registry("kernel", "{kind}={name!r} is not supported: use one of {known}")
register_kernel = KERNELS.register


@register_kernel
class LinearKernel(Kernel):
    """``K = Xc Xcᵀ``: the recorder's Gram as it is."""

    name = "linear"

    def __call__(self, side: str, linear: Tensor) -> Tensor:
        return linear


@register_kernel
class RBFKernel(Kernel):
    """``exp(-‖x_i - x_j‖² / (2σ²))``, ``σ² = frac² · median`` of the off-diagonal squared distances, one per
    layer: fixed on the first batch (``bandwidth="fixed"``) or re-estimated per batch (``per_batch``)."""

    @dataclass(frozen=True)
    class Params:
        frac: float = option(1.0, above=0.0, why="sigma^2 = frac^2 * median squared distance")
        bandwidth: str = option(
            "fixed", choices=BANDWIDTH_MODES, why="fixed (one sigma^2 per layer) | per_batch"
        )

    name = "rbf"
    deprecated = {"rbf_frac": "frac", "rbf_bandwidth": "bandwidth"}

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.bandwidths = Bandwidths(float(self.params.frac), self.params.bandwidth)

    def __call__(self, side: str, linear: Tensor) -> Tensor:
        return self.bandwidths.kernels(side, linear)

    def single(self, linear: Tensor) -> Tensor:
        return rbf_kernels(linear, rbf_sigma2(linear, float(self.params.frac)))

    def join(self, side: str, n_layers: int, *, device: torch.device, dtype: torch.dtype) -> None:
        self.bandwidths.join(side, n_layers, device=device, dtype=dtype)

    @property
    def fitted(self) -> dict[str, Tensor]:
        return self.bandwidths.sigma2

    @property
    def facts(self) -> dict[str, Any]:
        return {"rbf_bandwidth": self.params.bandwidth}


check_kernel = KERNELS.check


def make_kernel(name: str, params: Mapping[str, Any] | None = None, **deprecated: Any) -> Kernel:
    """The kernel ``name`` with its parameters ``params`` (plain values, e.g. ``{"frac": 0.5}`` for ``rbf``);
    an unknown name or parameter, or a value out of range, is a ``ValueError`` naming it."""
    check_kernel(name)
    return KERNELS[name].create(kernel_params(name, params, deprecated))


def kernel_params(
    kernel: str, params: Mapping[str, Any] | None, options: dict[str, Any]
) -> dict[str, Any] | None:
    """``params`` with the deprecated keyword arguments (``rbf_frac=``, ``rbf_bandwidth=``: every kernel's
    ``deprecated``) popped from ``options`` and folded in, with a ``FutureWarning`` that names
    ``kernel_params``; those of another kernel than ``kernel`` are dropped (they never had an effect). The one
    place the old keywords are read: every engine entry point passes its keyword arguments through here."""
    by = {key: name for name, cls in KERNELS.items() for key in cls.deprecated}
    old = {key: options.pop(key) for key in list(options) if key in by}
    if not old:
        return None if params is None else dict(params)
    spelled = {KERNELS[by[key]].deprecated[key]: value for key, value in old.items()}
    other = sorted({by[key] for key in old} - {kernel})
    warnings.warn(
        f"{', '.join(f'{key}=' for key in old)} is deprecated and will be removed in the next release: pass "
        f"kernel_params={spelled!r}" + (f" (no effect with kernel={kernel!r})" if other else ""),
        FutureWarning,
        stacklevel=caller_level(),
    )
    new = {KERNELS[kernel].deprecated[key]: value for key, value in old.items() if by[key] == kernel}
    twice = sorted(set(new) & set(params or {}))
    if twice:
        raise ValueError(
            f"{', '.join(twice)} given twice (a deprecated keyword and kernel_params): pass it once"
        )
    return {**(params or {}), **new}


def unexpected(options: Mapping[str, Any]) -> None:
    """A ``TypeError`` naming keyword arguments left over once the deprecated ones were taken."""
    if options:
        raise TypeError(
            f"unexpected keyword argument {', '.join(f'{k}=' for k in options)}: a kernel's parameters go in "
            "kernel_params={...} (e.g. kernel='rbf', kernel_params={'frac': 0.5})"
        )


def caller_level() -> int:
    """The ``stacklevel`` of a warning raised here that points at the first caller outside vvm."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(root):
        frame, level = frame.f_back, level + 1
    return level


def param_names(kernel: str) -> list[str]:
    """The names of ``kernel``'s parameters."""
    check_kernel(kernel)
    return [f.name for f in fields(KERNELS[kernel].Params)]


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
    "kernel_params",
    "make_kernel",
    "param_names",
    "register_kernel",
    "unexpected",
]
