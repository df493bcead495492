"""Which modules CKA records: exact names, glob patterns, or a model's named presets.

:func:`resolve_layers` expands a layer spec; :func:`layer_presets` gives a network's presets: its own
``layer_presets()`` when it defines one (vvm's CIFAR networks), otherwise :func:`generic_presets`.

Layer presets (``blocks``, ``all``, ``term_project``) for networks without their own ``layer_presets()``: timm
models (ViTs, ConvNeXts, ResNets...), torchvision models, your own modules.

Rules, by module name and type (names are ``net.named_modules()`` names, in registration order):

- ``blocks``: the stem (``stem``, ``patch_embed``, ``conv_stem``, ``conv1``, ``features.0``... the first
  top-level child), every block of the block containers (the children of modules named ``stages``, ``blocks``,
  ``layers``, ``layerN``, ``features``, at the finest level: ``stages.2.blocks.5`` rather than ``stages.2``, and
  the blocks of a stage that is a plain ``nn.Sequential``: ``blocks.3.0`` rather than ``blocks.3``), the
  final norm (``norm``, ``fc_norm``) and the classifier (``pretrained_cfg["classifier"]`` or ``head``/``fc``/
  ``classifier``). For a timm VisionTransformer: ``patch_embed``, ``blocks.0`` .. ``blocks.N``, ``norm``, ``head``.
- ``all``: every conv, linear, norm, activation and pool, plus attention and MLP sub-layers as units (for a ViT:
  ``blocks.N.norm1``, ``.attn.qkv``, ``.attn``, ``.attn.proj``, ``.norm2``, ``.mlp.fc1``, ``.mlp.act``,
  ``.mlp.fc2``, ``.mlp``...). ``nn.Identity`` and dropout placeholders are left out: their output repeats their
  input.
- ``term_project``: the term project notebooks' choice, modules whose own name (last dotted component) contains ``bn``, ``relu``,
  ``avgpool``, ``fc``, ``maxpool`` (their ResNets) or ``norm``, ``qkv``, ``act``, ``proj``, ``drop_path`` (their
  ViT). ``nn.Identity`` modules are kept only as ``drop_path``: the term project listed drop_path (with a zero drop rate an
  Identity whose output is the residual branch), while Identity stand-ins that newer timm versions add
  (``attn.q_norm``, ``attn.k_norm``, ``attn.norm``, ``mlp.norm``, ``norm_pre``, ``fc_norm``) would only repeat
  their input.

Only modules that run are listed: a forward pass on the ``meta`` device (shapes only, no compute, no memory,
the real weights untouched) records which modules run and whether their output is batch-first; a module that
does not run (``attn.attn_drop`` under timm's fused attention, an unused head) or whose output does not put the
batch first is dropped. If that dry run fails (an op without a meta kernel, data-dependent control flow) the
presets follow the structural rules alone, with a warning.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules import activation as _act

from vvm.cka.functional import representation

__all__ = [
    "PRESETS",
    "LayerSpec",
    "classifier_name",
    "dry_run",
    "generic_presets",
    "layer_presets",
    "resolve_layers",
]

PRESETS = ("blocks", "all", "term_project")
# presets renamed since: the old name is an error that names the new one
RENAMED_PRESETS = {"seed": "term_project"}
LayerSpec = str | Sequence[str]

TERM_PROJECT_KEYS = ("bn", "relu", "avgpool", "fc", "maxpool", "norm", "qkv", "act", "proj", "drop_path")

# torch's public layer classes (their lazy variants are subclasses)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_LINEAR = (nn.Linear,)
_NORM = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
_POOL = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.LPPool3d,
)
_ACT = tuple(
    cls
    for cls in vars(_act).values()
    if isinstance(cls, type)
    and issubclass(cls, nn.Module)
    and cls is not _act.MultiheadAttention
    and cls.__module__ == _act.__name__
)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)

# containers whose children are the network's blocks
_BLOCK_CONTAINER = re.compile(r"^(stages|blocks|layers|layer\d+|features|encoder_layers|res_layers)$")
_STEM_NAMES = ("stem", "patch_embed", "conv_stem", "stem_conv", "embeddings", "conv_proj")
_HEAD_NAMES = ("head", "fc", "classifier", "last_linear")
_FINAL_NORMS = ("norm", "fc_norm", "final_norm", "norm_head")
_COMPOSITE = re.compile(r"attention|attn|mlp|feedforward|ffn", re.IGNORECASE)
_NOT_COMPOSITE = re.compile(r"head|block|stage|layer|sequential|modulelist|embed", re.IGNORECASE)

_DRY_BATCH = 7  # a batch size that no channel/token/spatial dimension of a sane network shares


def _is_typed_layer(module: nn.Module) -> bool:
    """A conv, linear, norm, activation or pool (by type, or a timm/other leaf with such a class name)."""
    if isinstance(module, nn.Identity) or isinstance(module, _DROPOUT):
        return False
    if isinstance(module, _CONV + _LINEAR + _NORM + _POOL + _ACT):
        return True
    cls = type(module)
    leaf = not any(True for _ in module.children())
    if leaf and cls.__module__.startswith("timm.layers.activations"):
        return True
    name = cls.__name__
    return leaf and bool(re.search(r"Norm|Pool|Conv|Linear", name))


def _is_composite(module: nn.Module) -> bool:
    """An attention or MLP sub-layer (timm ``Attention``, ``Mlp``, ``GluMlp``...), recorded as one unit."""
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.MultiheadAttention)):
        return False
    name = type(module).__name__
    return bool(_COMPOSITE.search(name)) and not _NOT_COMPOSITE.search(name)


def _dry_input_size(net: nn.Module, input_size: int | Sequence[int] | None) -> tuple[int, int, int]:
    if input_size is not None:
        if isinstance(input_size, int):
            return (3, input_size, input_size)
        size = tuple(int(s) for s in input_size)
        return size if len(size) == 3 else (3, *size[-2:])
    patch_embed = getattr(net, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        return (3, int(h), int(w))
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    if cfg.get("input_size"):
        return tuple(int(s) for s in cfg["input_size"])
    return (3, 224, 224)


_DRY_RUN_FAILED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # the networks already warned about


def dry_run(
    net: nn.Module, input_size: int | Sequence[int] | None = None
) -> tuple[dict[str, int], set[str]] | None:
    """Run ``net`` once on the ``meta`` device and return (calls per module name, names whose output is not
    batch-first or holds no tensor), or ``None`` when the network cannot run on ``meta``.

    The network's own parameters and buffers are replaced by meta tensors for the call
    (``torch.func.functional_call``), so nothing is computed or changed; the pass runs in eval mode, as CKA does.
    """
    size = _dry_input_size(net, input_size)
    calls: dict[str, int] = {}
    not_batch_first: set[str] = set()

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            t = representation(output)
            if t is None or t.shape[0] != _DRY_BATCH:
                not_batch_first.add(name)

        return hook

    modes = {m: m.training for m in net.modules()}
    handles = [m.register_forward_hook(make_hook(n)) for n, m in net.named_modules() if n]
    try:
        state = {
            n: torch.empty_like(t, device="meta")
            for n, t in [
                *net.named_parameters(remove_duplicate=False),
                *net.named_buffers(remove_duplicate=False),
            ]
        }
        x = torch.empty(_DRY_BATCH, *size, device="meta")
        net.eval()
        with torch.no_grad():
            torch.func.functional_call(net, state, (x,), strict=False)
    except Exception as err:  # noqa: BLE001 - any failure means: fall back to the structural rules
        if net in _DRY_RUN_FAILED:  # said once per network (a pass resolves its rows and columns apart)
            return None
        _DRY_RUN_FAILED.add(net)
        warnings.warn(
            f"layer presets of {type(net).__name__}: the dry run on the meta device failed ({type(err).__name__}: "
            f"{err}); the presets follow the module structure only and may list a module that does not run",
            stacklevel=3,
        )
        return None
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return calls, not_batch_first


def _structural_exclusions(net: nn.Module) -> set[str]:
    """Modules known not to run, for when the dry run is impossible: attention dropout under fused attention."""
    out: set[str] = set()
    for name, module in net.named_modules():
        if getattr(module, "fused_attn", False) and isinstance(getattr(module, "attn_drop", None), nn.Module):
            out.add(f"{name}.attn_drop" if name else "attn_drop")
    return out


def _block_names(net: nn.Module, names: list[str]) -> list[str]:
    """Children of block containers, at the finest level (no listed block is an ancestor of another)."""
    modules = dict(net.named_modules())
    found: list[str] = []
    for name in names:
        if _BLOCK_CONTAINER.match(name.rsplit(".", 1)[-1]):
            for child, module in modules[name].named_children():
                if type(module) in (nn.Sequential, nn.ModuleList):
                    # a stage held as a plain list of blocks (timm EfficientNet's blocks.3 = blocks.3.0 ...)
                    found.extend(f"{name}.{child}.{grandchild}" for grandchild, _ in module.named_children())
                else:
                    found.append(f"{name}.{child}")
    found = [n for n in names if n in set(found)]  # registration order, no duplicates
    return [n for n in found if not any(other.startswith(n + ".") for other in found)]


def _first_of(names: Sequence[str], candidates: Sequence[str], modules: dict[str, nn.Module]) -> str | None:
    for c in candidates:
        if c in names and not isinstance(modules[c], (nn.Identity, *_DROPOUT)):
            return c
    return None


def _blocks_preset(net: nn.Module, names: list[str], modules: dict[str, nn.Module]) -> list[str]:
    """The ``blocks`` preset by structure alone: stem, the finest blocks, final norm, classifier."""
    top = [n for n in names if "." not in n]
    blocks: list[str] = []
    stem = _first_of(top, _STEM_NAMES, modules)
    body = _block_names(net, names)
    if stem is None and body:
        # top-level children before the first block container (conv1 bn1 relu maxpool of a torchvision ResNet):
        first_body_top = body[0].split(".", 1)[0]
        before = top[: top.index(first_body_top)] if first_body_top in top else []
        # the last of them is the stem's output (maxpool of a torchvision ResNet)
        stem = next(
            (
                n
                for n in reversed(before)
                if _is_typed_layer(modules[n]) or any(True for _ in modules[n].children())
            ),
            None,
        )
    if stem is not None and stem not in body:
        blocks.append(stem)
    blocks.extend(body)
    if not body:
        # no recognised block containers: the top-level children themselves
        blocks.extend(n for n in top if n != stem and not isinstance(modules[n], (nn.Identity, *_DROPOUT)))
    final_norm = _first_of(top, _FINAL_NORMS, modules)
    if final_norm is not None and final_norm not in blocks:
        blocks.append(final_norm)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") if isinstance(cfg.get("classifier"), str) else None
    head = classifier if classifier in modules else _first_of(top, _HEAD_NAMES, modules)
    if head is not None and not isinstance(modules[head], nn.Identity) and head not in blocks:
        blocks.append(head)
    return list(dict.fromkeys(blocks))


def classifier_name(net: nn.Module) -> str | None:
    """The module name of ``net``'s classifier: timm's ``pretrained_cfg["classifier"]``, else the first
    top-level ``head``/``fc``/``classifier``/``last_linear`` that is not a placeholder; None when there is none."""
    modules = dict(net.named_modules())
    cfg = getattr(net, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") if isinstance(cfg.get("classifier"), str) else None
    top = [n for n in modules if n and "." not in n]
    head = classifier if classifier in modules else _first_of(top, _HEAD_NAMES, modules)
    return None if head is None or isinstance(modules[head], nn.Identity) else head


def generic_presets(net: nn.Module, input_size: int | Sequence[int] | None = None) -> dict[str, list[str]]:
    """The ``blocks``, ``all`` and ``term_project`` presets of ``net`` by the rules of this module's docstring.

    ``input_size`` (an int or ``(C, H, W)``) is the input of the dry run; by default the ViT's
    ``patch_embed.img_size``, else timm's ``pretrained_cfg["input_size"]``, else 3x224x224.
    """
    modules = dict(net.named_modules())
    names = [n for n in modules if n]
    ran = dry_run(net, input_size)
    if ran is None:
        skip = _structural_exclusions(net)

        def usable(n: str) -> bool:
            return n not in skip
    else:
        calls, not_batch_first = ran

        def usable(n: str) -> bool:
            return calls.get(n, 0) > 0 and n not in not_batch_first

    blocks = [n for n in _blocks_preset(net, names, modules) if usable(n)]

    every = [n for n in names if (_is_typed_layer(modules[n]) or _is_composite(modules[n])) and usable(n)]

    def term_project_match(n: str) -> bool:
        own = n.rsplit(".", 1)[-1]
        if not any(k in own for k in TERM_PROJECT_KEYS):
            return False
        if isinstance(modules[n], nn.Identity) and "drop_path" not in own:
            return False
        return not any(True for _ in modules[n].children()) or _is_typed_layer(modules[n])

    chosen = [n for n in names if term_project_match(n) and usable(n)]
    return {"blocks": blocks, "all": every, "term_project": chosen}


def layer_presets(model: nn.Module) -> dict[str, list[str]]:
    """The presets ``blocks``, ``all`` and ``term_project`` of ``model``.

    vvm's own networks define ``layer_presets()``; anything else (timm, torchvision, your own module) gets the
    structural rules of :func:`generic_presets`.
    """
    own = getattr(model, "layer_presets", None)
    if callable(own):
        return own()
    return generic_presets(model)


def _is_pattern(item: str) -> bool:
    return any(ch in item for ch in "*?[")


def resolve_layers(model: nn.Module, spec: LayerSpec) -> list[str]:
    """Expand a layer spec into module names of ``model``, in order, without duplicates.

    ``spec`` is one item or a list of items; an item is a preset name (``blocks``, ``all``, ``term_project``), a glob
    pattern over module names (``layer1.*``), or an exact module name. A preset name wins over a module of the
    same name. Anything that matches nothing is an error that lists the closest real names.
    """
    listed = isinstance(spec, Iterable) and not isinstance(spec, Mapping | bytes)
    items = [spec] if isinstance(spec, str) else list(spec) if listed else None
    if items is None or not all(isinstance(i, str) for i in items):
        raise TypeError(
            f"layers must be a preset ({', '.join(PRESETS)}), a module name or glob, or a list of them (say "
            f"['layer1', 'layer2.*']), not {spec!r}"
        )
    if not items:
        raise ValueError(
            "no layers given: name modules, glob patterns or a preset (blocks, all, term_project)"
        )
    names = [name for name, _ in model.named_modules() if name]
    known = set(names)
    out: list[str] = []
    for item in items:
        if item in RENAMED_PRESETS and item not in known:
            raise ValueError(f"the layer preset {item!r} is now called {RENAMED_PRESETS[item]!r}")
        if item in PRESETS:
            found = layer_presets(model)[item]
            missing = [n for n in found if n not in known]
            if missing:
                raise ValueError(f"preset {item!r} names modules that the model lacks: {missing[:5]}")
        elif _is_pattern(item):
            found = fnmatch.filter(names, item)
        else:
            found = [item] if item in known else []
        if not found:
            close = difflib.get_close_matches(item, names, n=6, cutoff=0.5) or names[:6]
            raise ValueError(
                f"layer {item!r} matches no module of {type(model).__name__}; closest names: "
                f"{', '.join(close)} (or use a preset: {', '.join(PRESETS)})"
            )
        out.extend(found)
    return list(dict.fromkeys(out))
