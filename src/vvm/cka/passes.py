"""The recorder side of a pass, shared by every metric that rides on it: hooks on the models, the layers learnt
on the first batch, and per batch the Grams stacked in the order of the layer lists (:class:`~vvm.cka.measures.
Grams`), handed to the owner's ``on_batch``.

- :class:`StreamingPass`: one model, or two (``x`` rows, ``y`` columns); ``gy=None`` when the columns are the
  rows (one layer set of one model: a symmetric matrix from one product);
- :class:`JointPass`: several models, every layer of every model in one stack ``[ΣL, n, n]``, model after model
  (layers named ``<model>/<layer>``; each model is a side of its own, for the kernel's fitted parameters).

Each Gram leaves the recorder's dict as it is stacked, so a batch's Grams exist once while the owner works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Self

import torch
from torch import Tensor, nn

from vvm.cka.functional import RawParts
from vvm.cka.measures.base import Grams, Measure
from vvm.cka.presets import LayerSpec, resolve_layers
from vvm.cka.recorder import BatchKernels, BatchParts, KernelRecorder

SEP = "/"  # <model>/<layer>
Sides = list[tuple[str, int]]
OnBatch = Callable[[Grams, "Grams | None", bool, int], None]


Blocks = list[tuple[dict[str, Tensor], list[str]]]


def stack_grams(blocks: Blocks, keep: set[str] | None = None) -> Tensor:
    """``[ΣL, n, n]``: the Grams of every ``(per_layer, names)`` block, block after block, each in the order of
    its ``names``; each Gram is dropped from its ``per_layer`` dict once copied, except those in ``keep`` (still
    needed for the other side)."""
    first = next(per[names[0]] for per, names in blocks if names)
    total = sum(len(names) for _, names in blocks)
    out = torch.empty((total, *first.shape), dtype=first.dtype, device=first.device)
    i = 0
    for per, names in blocks:
        for name in names:
            out[i] = per[name] if name in (keep or ()) else per.pop(name)
            i += 1
    return out


def stack_parts(blocks: list[tuple[Mapping[str, RawParts], list[str]]]) -> RawParts:
    """The :class:`RawParts` of every block's layers, stacked in the order of :func:`stack_grams`."""
    return RawParts(
        *(torch.stack([getattr(per[n], f) for per, names in blocks for n in names]) for f in RawParts._fields)
    )


def expand(modules: list[str], names: list[str]) -> list[str]:
    """The recorded layer names (``name#i`` for a module that runs k times) of ``modules``, in order."""
    out: list[str] = []
    for m in modules:
        out.extend(n for n in names if n == m or n.rsplit("#", 1)[0] == m and "#" in n)
    return out


def torch_dtype(precision: str) -> torch.dtype:
    """The work dtype of a precision mode: float64 (``exact``) or float32 (``fast``)."""
    return torch.float64 if precision == "exact" else torch.float32


def recorder_options(measures: Mapping[str, Measure], precision: str) -> dict[str, Any]:
    """The recorder's options for a pass of ``measures``: the smallest batch any of them uses (and why), TF32
    Grams for ``fast``, the work dtype, the raw-Gram extras, float64 Grams (exact mode) and the features
    themselves if any measure needs them."""
    smallest = min(measures.values(), key=lambda m: m.min_n)
    return {
        "min_n": smallest.min_n,
        "min_reason": smallest.min_reason,
        "tf32": precision == "fast",
        "out_dtype": torch_dtype(precision),
        "raw": any(m.needs_raw for m in measures.values()),
        "pooled": any(m.pooled for m in measures.values()),
        "float64": precision == "exact" and any(m.needs_float64 for m in measures.values()),
        "features": any(m.needs_features for m in measures.values()),
    }


class Tracking:
    """What holds a pass (:class:`StreamingPass` or :class:`JointPass`) for its user (the CKA metrics, the
    measures' passes): the pass as ``_pass``, its recorder, the dtypes the hooks saw, and :meth:`track`."""

    def attach(self, plumbing: StreamingPass | JointPass) -> None:
        self._pass = plumbing
        self.recorder = plumbing.recorder
        self.activation_dtypes = self.recorder.activation_dtypes

    def compute(self) -> Any:
        return self.undefined_as_nan(super().compute())  # type: ignore[misc]

    def undefined_as_nan(self, res: Any) -> Any:
        """``res`` with NaN in the rows and columns (matrix and standard error) of the layers whose features were
        NaN or inf (the recorder warns, naming each): similarity is not defined for them."""
        rows, cols = self._pass.undefined(self.recorder.check_finite())
        for t in (res.matrix, res.stderr):
            t[[i for i, n in enumerate(res.layers_x) if n in rows], :] = float("nan")
            t[:, [j for j, n in enumerate(res.layers_y) if n in cols]] = float("nan")
        return res

    def begin_batch(self, index: int, batches: Any) -> None:
        """The batch-id protocol, before this process's ``index``-th batch of ``batches`` (a plan whose
        ``batch_info(index)`` is ``(global batch id, padding)``: :class:`vvm.data.batches.EvalBatches`): the
        recorder files the batch under its global id, and adds nothing from it when it is padding (a DDP rank
        with no batch left)."""
        batch_id, padding = batches.batch_info(index)
        self.recorder.set_next_batch_id(batch_id)
        if padding:
            self.recorder.mask_next_batch()

    @contextlib.contextmanager
    def track(self) -> Iterator[Self]:
        """Register the forward hooks for the duration of the block; they are removed on exit."""
        with self.recorder.track():
            yield self


class _Pass:
    """What both passes share: the layers are learnt from the recorder on the first batch, skipped or not."""

    on_skip: Callable[[int], None]

    def _learn(self) -> None:
        raise NotImplementedError

    def _skip(self, batch_id: int) -> None:
        self._learn()
        self.on_skip(batch_id)


class StreamingPass(_Pass):
    """Hooks on ``model`` (and ``other``); per batch ``on_batch(gx, gy, masked, batch_id)`` with the Grams of the
    ``layers`` (rows) and of the ``other_layers`` (columns; ``gy=None`` when they are the rows). ``on_layers(lx,
    ly)`` when the first batch renames the layers (a module that runs twice); ``on_skip(batch_id)`` for a batch
    the recorder skipped as smaller than ``min_n``."""

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec,
        *,
        other: nn.Module | None,
        other_layers: LayerSpec | None,
        on_batch: OnBatch,
        on_layers: Callable[[list[str], list[str]], None],
        on_skip: Callable[[int], None],
        **recorder: object,
    ) -> None:
        check_networks({"model": model, **({"other": other} if other is not None else {})})
        self.modules_x = resolve_layers(model, layers)
        y_net = other if other is not None else model
        self.modules_y = resolve_layers(y_net, layers if other_layers is None else other_layers)
        # with one model and one layer set, the matrix is symmetric and G_y is G_x
        self.symmetric = other is None and self.modules_y == self.modules_x
        self.two_models = other is not None
        self.layers_x, self.layers_y = list(self.modules_x), list(self.modules_y)
        self.on_batch, self.on_layers, self.on_skip = on_batch, on_layers, on_skip
        # kept out of any module tree: moving or saving a metric must not move or save the networks
        if self.two_models:
            nets, modules = {"x": model, "y": y_net}, {"x": self.modules_x, "y": self.modules_y}
        else:
            nets, modules = {"x": model}, {"x": list(dict.fromkeys(self.modules_x + self.modules_y))}
        self.recorder = KernelRecorder(nets, modules, self._batch, on_skip=self._skip, **recorder)  # type: ignore[arg-type]
        self._learnt = False

    @property
    def sides(self) -> tuple[Sides, Sides | None]:
        return [("x", len(self.layers_x))], None if self.symmetric else [("y", len(self.layers_y))]

    def undefined(self, bad: dict[str, dict[str, int]]) -> tuple[set[str], set[str]]:
        """The rows and columns of the layers the recorder found non-finite (``{side: {layer: batch}}``)."""
        rows = set(bad.get("x", {}))
        return rows, set(bad.get("y", {})) if self.two_models else rows

    def _learn(self) -> None:
        y_key = "y" if self.two_models else "x"
        if not self._learnt and self.recorder.layers is not None:
            self._learnt = True
            lx = expand(self.modules_x, self.recorder.layers["x"])
            ly = expand(self.modules_y, self.recorder.layers[y_key])
            if (lx, ly) != (self.layers_x, self.layers_y):
                self.layers_x, self.layers_y = lx, ly
                self.on_layers(lx, ly)

    def _batch(
        self,
        kernels: BatchKernels,
        masked: bool,
        batch_id: int,
        raw: BatchParts | None = None,
        features: BatchKernels | None = None,
    ) -> None:
        self._learn()
        y_key = "y" if self.two_models else "x"
        keep = set(self.layers_y) if y_key == "x" and not self.symmetric else set()
        sx, sy = self.sides
        gx = Grams(
            stack_grams([(kernels["x"], self.layers_x)], keep),
            sx,
            raw and stack_parts([(raw["x"], self.layers_x)]),
            features and [features["x"][n] for n in self.layers_x],
        )
        gy = None
        if sy is not None:
            parts = raw and stack_parts([(raw[y_key], self.layers_y)])
            feats = features and [features[y_key][n] for n in self.layers_y]
            gy = Grams(stack_grams([(kernels[y_key], self.layers_y)]), sy, parts, feats)
        self.on_batch(gx, gy, masked, batch_id)


def hook_target(model: nn.Module) -> nn.Module:
    """The network whose modules are hooked: ``model.net`` for a wrapper that preprocesses its inputs itself
    (vvm's ``VisionModel``: a ``net`` and a ``preprocess``), else ``model``."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) and callable(getattr(model, "preprocess", None)) else model


def spec_of(layers: LayerSpec | Mapping[str, LayerSpec], key: str) -> LayerSpec:
    if isinstance(layers, Mapping):
        if key not in layers:
            raise ValueError(f"no layer spec for model {key!r}: layers has {sorted(layers)}")
        return layers[key]
    return layers


def joint_names(modules: Mapping[str, list[str]]) -> list[str]:
    return [f"{k}{SEP}{name}" for k, names in modules.items() for name in names]


def hook_targets(models: object) -> dict[str, nn.Module]:
    """``{key: hook_target(network)}`` of a joint pass's ``models``, which must be a mapping of networks on one
    device: a one-sentence error naming the argument otherwise."""
    if not isinstance(models, Mapping):
        raise TypeError(
            f"models must be a mapping {{name: network}}, not a {type(models).__name__}: pass "
            "JointCKA({'r18': r18, 'vit': vit}) (the names label the blocks of the result)"
        )
    check_networks({f"models[{k!r}]": m for k, m in models.items()})
    return {k: hook_target(m) for k, m in models.items()}


def check_networks(nets: Mapping[str, object]) -> None:
    """Each of ``nets`` (``{argument: value}``) is a ``torch.nn.Module``, and they hold their weights on one
    device: else a one-sentence error naming the argument and what to pass."""
    for arg, net in nets.items():
        if not isinstance(net, nn.Module):
            what = f"{type(net).__name__} {net!r}"[:80]
            raise TypeError(
                f"{arg} must be a torch.nn.Module (a built network, e.g. torchvision.models.resnet18()), not the "
                f"{what}; layers are named by the second argument"
            )
    devices = {arg: t.device for arg, net in nets.items() for t in [*net.parameters(), *net.buffers()][:1]}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{arg} on {d}" for arg, d in devices.items())
        raise ValueError(
            f"the networks are on different devices ({where}): every one sees the same batch, so move them to one "
            "device first (net.to(device))"
        )


def check_model_keys(models: Mapping[str, object]) -> None:
    if not models:
        raise ValueError("a joint pass needs at least one model")
    bad = [k for k in models if not isinstance(k, str) or SEP in k or not k]
    if bad:
        raise ValueError(f"model keys must be non-empty strings without {SEP!r}: {bad}")


class JointPass(_Pass):
    """Hooks on every model of ``models`` (``{key: network}``, already the hook targets); per batch
    ``on_batch(g, None, masked, batch_id)`` with every layer of every model in one stack, model after model.
    ``on_layers(names)`` when the first batch renames the layers; ``on_skip(batch_id)`` as StreamingPass."""

    def __init__(
        self,
        nets: Mapping[str, nn.Module],
        layers: LayerSpec | Mapping[str, LayerSpec],
        *,
        on_batch: OnBatch,
        on_layers: Callable[[list[str]], None],
        on_skip: Callable[[int], None],
        **recorder: object,
    ) -> None:
        check_model_keys(nets)
        self.model_layers = {k: resolve_layers(nets[k], spec_of(layers, k)) for k in nets}
        self.on_batch, self.on_layers, self.on_skip = on_batch, on_layers, on_skip
        self.recorder = KernelRecorder(
            dict(nets), self.model_layers, self._batch, on_skip=self._skip, **recorder
        )  # type: ignore[arg-type]
        self._learnt = False

    @property
    def names(self) -> list[str]:
        return joint_names(self.model_layers)

    @property
    def models(self) -> list[str]:
        return list(self.model_layers)

    @property
    def model_index(self) -> Tensor:
        """``[ΣL]``: the model (its position in :attr:`models`) of every row/column."""
        sizes = [len(v) for v in self.model_layers.values()]
        return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))

    @property
    def sides(self) -> Sides:
        return [(k, len(v)) for k, v in self.model_layers.items()]

    def undefined(self, bad: dict[str, dict[str, int]]) -> tuple[set[str], set[str]]:
        """The rows and columns (``<model>/<layer>``) of the layers the recorder found non-finite."""
        names = {f"{key}{SEP}{name}" for key, per in bad.items() for name in per}
        return names, names

    def _learn(self) -> None:
        if self._learnt:
            return
        self._learnt = True
        learnt = self.recorder.layers
        if learnt is not None and learnt != self.model_layers:
            self.model_layers = {k: list(learnt[k]) for k in self.model_layers}
            self.on_layers(self.names)

    def _batch(
        self,
        kernels: BatchKernels,
        masked: bool,
        batch_id: int,
        raw: BatchParts | None = None,
        features: BatchKernels | None = None,
    ) -> None:
        self._learn()
        order = list(self.model_layers.items())
        out = stack_grams([(kernels[key], names) for key, names in order])
        parts = None if raw is None else stack_parts([(raw[key], names) for key, names in order])
        feats = features and [features[key][n] for key, names in order for n in names]
        self.on_batch(Grams(out, self.sides, parts, feats), None, masked, batch_id)


__all__ = [
    "SEP",
    "JointPass",
    "StreamingPass",
    "Tracking",
    "check_model_keys",
    "check_networks",
    "hook_targets",
    "expand",
    "hook_target",
    "joint_names",
    "recorder_options",
    "spec_of",
    "stack_grams",
    "stack_parts",
    "torch_dtype",
]
