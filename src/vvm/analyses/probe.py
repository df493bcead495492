"""Linear probes (Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes"):
how much class information a linear read-out finds in each tracked layer.

Features: a layer's output averaged over space (feature maps) or over the patch tokens (ViT; class and
register tokens left out); a flat output as it is. Classifier: ridge regression of one-vs-rest ±1 targets with
an unpenalised intercept (scikit-learn's ``RidgeClassifier``), predicting the class of the largest output,
fitted in closed form from float64 sufficient statistics streamed over the training split (:class:`RidgeStats`:
``XᵀX``, ``XᵀY`` and the sums that centre them, of features shifted by their first batch's mean, so that a
large offset cannot cancel catastrophically).

The pass (every tracked layer at once, one forward per image):
1. the fit part of the training split (a seeded random part; ``holdout`` of it is set aside): statistics;
   solve for every ridge strength of the grid at once (one eigendecomposition of the centred ``XᵀX``);
2. the held-out part: each strength's accuracy there, and the statistics grow to the whole training split;
   the strength with the best held-out accuracy (the strongest among ties) is refitted on all of it;
3. the evaluation split: accuracy, and which evaluation examples each layer gets right.

Uncertainty: each layer's accuracy on ``n`` evaluation examples has the binomial standard error
``sqrt(a (1 − a) / n)`` (the evaluation examples an i.i.d. sample; the fitted probe held fixed, so the variation
of the fit with the training sample is not in it). Two layers are compared on the *same* examples: with ``b``
the examples only the best layer gets right and ``c`` those only the other one does, the difference is
``(b − c) / n`` with the paired standard error ``sqrt(b + c − (b − c)² / n) / n`` and McNemar's exact two-sided
p-value ``min(1, 2 P(X ≤ min(b, c)))``, ``X ~ Binomial(b + c, 1/2)``. The summary says whether the best layer
is separable from the runner-up (the next most accurate layer) at p < 0.05, and lists every layer that is not.

Memory: ``XᵀX`` is ``d × d`` float64 per layer (8 d² bytes; d = 2048 -> 32 MiB), and solving needs as much again
for the eigenvectors. A layer above ``max_gram_mib`` is refused before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vvm.analyses.common import (
    Capture,
    analysis_mode,
    device_of,
    plan_loader,
    pooled,
    progress,
    relative_depth,
    split_model,
    token_grid,
)
from vvm.analyses.paired import SEPARABLE_P, binomial_se, paired_comparison
from vvm.analyses.registry import Analysis, SweepPanels, register_analysis
from vvm.analyses.ridge import RidgeStats, one_vs_rest
from vvm.cka.params import option
from vvm.cka.presets import LayerSpec, resolve_layers

# the ridge strengths, relative to the mean eigenvalue of the centred XᵀX (trace / d): 1e-8 ... 1e2
RELATIVE_RIDGES = tuple(10.0**k for k in range(-8, 3))


@dataclass(frozen=True)
class ProbeParams:
    """``analysis.probe.*``: ``max_train``: a seeded random subset of the training split (None: all of it; the
    seed is the job's); ``holdout``: the fraction of it that chooses the ridge strength; ``ridges``: the grid,
    relative to ``trace(XᵀX_c) / d``; ``max_eval``: a cap on evaluation examples; ``max_gram_mib``: the largest
    ``XᵀX`` allowed per layer."""

    max_train: int | None = option(None, minimum=2, why="training examples (null: the whole split)")
    holdout: float = option(0.2, minimum=0.0, below=1.0, why="a fraction of the training examples")
    ridges: list[float] = option(list(RELATIVE_RIDGES), why="ridge strengths, relative to trace(XᵀX_c) / d")
    max_eval: int | None = option(None, minimum=1, why="evaluation examples (null: the whole split)")
    batch_size: int = option(256, minimum=1, why="examples per forward pass")
    max_gram_mib: float = option(1024.0, above=0.0, why="MiB of XᵀX per layer (8·d² bytes)")

    def problems(self, owner: str = "analysis.probe") -> list[str]:
        """The ridge grid: positive strengths, and held-out examples to choose among several."""
        ridges = list(self.ridges)
        if not ridges or not all(math.isfinite(r) and r > 0 for r in ridges):
            return [f"{owner}.ridges={ridges}: a non-empty list of positive ridge strengths (relative)"]
        if self.holdout == 0 and len(ridges) > 1:
            return [
                f"{owner}.holdout=0 with {len(ridges)} ridges: choosing a ridge needs held-out examples; "
                f"use holdout > 0 (0.2) or a single ridge ({owner}.ridges=[1.0e-3])"
            ]
        return []


@dataclass
class ProbeResult:
    """Per tracked layer: evaluation ``accuracy`` and its binomial standard error, the chosen absolute ``ridge``
    (scikit-learn's ``alpha``) and its value relative to ``trace / d``, held-out accuracy, feature dimension
    ``dims``, ``depth``; ``correct`` ``[layers, n_eval]``: which evaluation examples each layer gets right (the
    paired comparisons are computed from it)."""

    layers: list[str]
    accuracy: np.ndarray
    ridge: np.ndarray
    ridge_relative: np.ndarray
    holdout_accuracy: np.ndarray
    dims: np.ndarray
    depth: np.ndarray
    n_train: int
    n_holdout: int
    n_eval: int
    num_classes: int
    correct: np.ndarray

    @property
    def accuracy_se(self) -> np.ndarray:
        return binomial_se(self.accuracy, self.n_eval)

    def against_best(self) -> tuple[int, list[dict[str, float]]]:
        """The best layer (the first of the most accurate) and every layer's paired comparison with it."""
        best = int(np.argmax(self.accuracy))
        return best, [paired_comparison(self.correct[best], row) for row in self.correct]

    def arrays(self) -> dict[str, np.ndarray]:
        """What probe.npz holds."""
        return {
            "layers": np.array(self.layers, dtype=str),
            "accuracy": self.accuracy,
            "accuracy_se": self.accuracy_se,
            "mcnemar_p_vs_best": np.array([c["mcnemar_p"] for c in self.against_best()[1]]),
            "correct": self.correct,
            "ridge": self.ridge,
            "ridge_relative": self.ridge_relative,
            "holdout_accuracy": self.holdout_accuracy,
            "dims": self.dims,
            "depth": self.depth,
            "n_train": np.array(self.n_train),
            "n_holdout": np.array(self.n_holdout),
            "n_eval": np.array(self.n_eval),
            "num_classes": np.array(self.num_classes),
        }

    def summary(self) -> dict[str, Any]:
        best, comps = self.against_best()
        out = {
            "layers": self.layers,
            "accuracy": [round(float(a), 5) for a in self.accuracy],
            "accuracy_se": [round(float(v), 5) for v in self.accuracy_se],
            "ridge": [float(f"{r:.4g}") for r in self.ridge],
            "best_layer": self.layers[best],
            "best_accuracy": float(self.accuracy[best]),
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "n_eval": self.n_eval,
        }
        return {**out, **self._separability(best, comps)}

    def _separability(self, best: int, comps: list[dict[str, float]]) -> dict[str, Any]:
        """Whether the best layer is separable from the runner-up, and the layers that are not."""
        if len(self.layers) < 2:
            return {"best_separable": None, "best_note": "one layer: nothing to compare"}
        order = np.argsort(-self.accuracy, kind="stable")
        second = int(next(i for i in order if i != best))
        c = comps[second]
        tied = [n for i, n in enumerate(self.layers) if i != best and comps[i]["mcnemar_p"] >= SEPARABLE_P]
        separable = c["mcnemar_p"] < SEPARABLE_P
        note = (
            f"{self.layers[best]} {self.accuracy[best]:.4f} vs runner-up {self.layers[second]} "
            f"{self.accuracy[second]:.4f}: difference {c['difference']:.4f} ± {c['difference_se']:.4f} (paired "
            f"SE on the same {self.n_eval} examples), McNemar p = {c['mcnemar_p']:.3g}: "
            + ("separable" if separable else f"NOT separable at p < {SEPARABLE_P}")
        )
        return {
            "runner_up": self.layers[second],
            "best_vs_runner_up": {k: round(float(v), 6) for k, v in c.items()},
            "best_separable": bool(separable),
            "not_separable_from_best": tied,
            "best_note": note,
        }


def probe_plans(
    n_train_split: int, n_eval_split: int, settings: ProbeParams, seed: int = 0
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Batch plans ``(fit, holdout, eval)``: a permutation of the training split seeded by ``seed`` (its first
    ``max_train``), the first ``holdout`` fraction of it held out; the evaluation split's first ``max_eval`` (of
    a permutation seeded by ``seed + 1``)."""
    from vvm.data.batches import balanced_batches, permutation  # vvm.data imports Lightning: not at import

    if not 0 <= settings.holdout < 1:
        raise ValueError(f"probe holdout={settings.holdout}: use a fraction in [0, 1)")
    order = permutation(n_train_split, seed)[: settings.max_train]
    n_hold = int(round(settings.holdout * len(order)))
    if (settings.holdout > 0 and n_hold == 0) or len(order) - n_hold < 2:
        raise ValueError(
            f"probe: {len(order)} training examples leave too few to fit and hold out {settings.holdout}"
        )
    evals = permutation(n_eval_split, seed + 1)[: settings.max_eval]
    size = settings.batch_size
    return (
        balanced_batches(order[n_hold:], size),
        balanced_batches(order[:n_hold], size),
        balanced_batches(evals, size),
    )


def _allocate(
    feats: dict[str, Tensor], k: int, max_mib: float, device: torch.device
) -> dict[str, RidgeStats]:
    """One :class:`RidgeStats` per layer, after checking that every layer's ``XᵀX`` fits the limit."""
    dims = {name: int(f.shape[1]) for name, f in feats.items()}
    mib = {name: 8 * d * d / 2**20 for name, d in dims.items()}
    for name, m in mib.items():
        if m > max_mib:
            raise ValueError(
                f"linear probe: layer {name!r} has {dims[name]} pooled features, so its XᵀX needs {m:,.0f} MiB "
                f"(8·d² bytes, float64; twice that while solving), above max_gram_mib={max_mib:,.0f} (the "
                f"{len(mib)} layers would hold {sum(mib.values()):,.0f} MiB in all): drop the layer from the "
                "probe's layers or raise max_gram_mib"
            )
    return {name: RidgeStats(d, k, device) for name, d in dims.items()}


class _Features:
    """Pooled float64 features of every tracked layer, batch by batch: ``(features by layer, labels)``."""

    def __init__(self, preprocess: Any, net: nn.Module, cap: Capture, device: torch.device) -> None:
        self.preprocess, self.net, self.cap, self.device = preprocess, net, cap, device

    def __call__(self, batches: Iterable[Any], desc: str = "linear probes"):
        for images, labels in progress(batches, desc):
            self.net(self.preprocess(images.to(self.device, torch.float32)))
            yield {n: f.double() for n, f in self.cap.take().items()}, labels.to(self.device).long()


def _correct(f: Tensor, y: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Correct predictions per ridge strength: ``argmax_k (f W_g + b_g)`` against ``y``; ``[g]``."""
    pred = (torch.matmul(f, w) + b[:, None, :]).argmax(dim=-1)  # [g, n]
    return (pred == y[None, :]).sum(dim=1).double()


def _fit(features: _Features, batches: Iterable[Any], k: int, max_mib: float) -> dict[str, RidgeStats]:
    stats: dict[str, RidgeStats] = {}
    for feats, y in features(batches, "linear probes: fit"):
        stats = stats or _allocate(feats, k, max_mib, features.device)
        for name, f in feats.items():
            stats[name].update(f, one_vs_rest(y, k))
    if not stats:
        raise ValueError("linear probe: the fit part of the training split holds no examples")
    return stats


def _evaluate(features: _Features, batches: Iterable[Any], final: dict) -> dict[str, np.ndarray]:
    """Per layer, which examples of ``batches`` the probe ``final`` (one ridge strength) gets right: bool ``[n]``."""
    hits: dict[str, list[Tensor]] = {name: [] for name in final}
    for feats, y in features(batches):
        for name, f in feats.items():
            w, b = final[name]
            hits[name].append(((f @ w[0] + b[0]).argmax(dim=-1) == y).cpu())
    return {name: torch.cat(h).numpy() if h else np.zeros(0, dtype=bool) for name, h in hits.items()}


def _score(features: _Features, batches: Iterable[Any], solved: dict, stats: dict | None, k: int):
    """Correct predictions per layer and ridge strength over ``batches`` (their statistics added to
    ``stats`` when given), and the number of examples."""
    right = {
        name: torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) for name, (w, _) in solved.items()
    }
    n = 0
    for feats, y in features(batches, "linear probes: score"):
        n += y.numel()
        for name, f in feats.items():
            right[name] += _correct(f, y, *solved[name])
            if stats is not None:
                stats[name].update(f, one_vs_rest(y, k))
    return right, n


def linear_probe(
    model: nn.Module,
    layers: LayerSpec,
    fit: Iterable[Any],
    holdout: Iterable[Any],
    evaluation: Iterable[Any],
    *,
    num_classes: int,
    ridges: Sequence[float] = RELATIVE_RIDGES,
    max_gram_mib: float = 1024.0,
) -> ProbeResult:
    """Linear probe accuracy of every tracked layer of ``model``: fitted on the ``fit`` batches, ridge strength
    (``ridges``, relative to each layer's ``trace(XᵀX_c) / d``) chosen on the ``holdout`` batches and refitted
    on both, accuracy on the ``evaluation`` batches; each an iterable of ``(images, labels)``,
    dataset-normalised (see :func:`probe_datamodule` for a datamodule's splits)."""
    preprocess, net = split_model(model)
    names = resolve_layers(net, layers)
    tokens, device, k = token_grid(net), device_of(net), int(num_classes)
    rel = [float(r) for r in ridges]
    with torch.no_grad(), analysis_mode(model), Capture(net, names, lambda _, t: pooled(t, tokens)) as cap:
        features = _Features(preprocess, net, cap, device)
        stats = _fit(features, fit, k, max_gram_mib)
        lams = {name: [r * s.scale() for r in rel] for name, s in stats.items()}
        solved = {name: s.solve(lams[name]) for name, s in stats.items()}
        held, n_hold = _score(features, holdout, solved, stats, k)
        if n_hold == 0 and len(rel) > 1:
            raise ValueError(
                "linear probe: choosing among several ridges needs held-out examples (holdout > 0)"
            )
        # the strongest ridge among the best held-out accuracies (the grid ascends)
        pick = {name: len(rel) - 1 - int(torch.argmax(held[name].flip(0))) for name in stats}
        final = {name: s.solve([lams[name][pick[name]]]) for name, s in stats.items()}
        hits = _evaluate(features, evaluation, final)
    out = list(stats)
    n_eval = int(hits[out[0]].size)
    if n_eval == 0:
        raise ValueError("linear probe: the evaluation split holds no examples")
    return ProbeResult(
        layers=out,
        accuracy=np.array([float(hits[n].mean()) for n in out]),
        ridge=np.array([lams[n][pick[n]] for n in out]),
        ridge_relative=np.array([rel[pick[n]] for n in out]),
        holdout_accuracy=np.array([float(held[n][pick[n]]) / max(n_hold, 1) for n in out]),
        dims=np.array([stats[n].sx.numel() for n in out]),
        depth=relative_depth(out, out),
        n_train=stats[out[0]].n,
        n_holdout=n_hold,
        n_eval=n_eval,
        num_classes=k,
        correct=np.stack([hits[n] for n in out]),
    )


def probe_datamodule(
    model: nn.Module, layers: LayerSpec, dm: Any, settings: ProbeParams, *, seed: int = 0
) -> ProbeResult:
    """:func:`linear_probe` on a vvm datamodule: the training split without augmentation
    (``dm.dataset("train")``) for fitting and choosing the ridge, the test split for accuracy (the plans of
    :func:`probe_plans`, seeded by ``seed``: the job's)."""
    train, test = dm.dataset("train"), dm.dataset("test")
    fit, hold, ev = probe_plans(len(train), len(test), settings, seed)
    workers = int(getattr(dm, "num_workers", 0) or 0)
    return linear_probe(
        model,
        layers,
        plan_loader(train, fit, workers),
        plan_loader(train, hold, workers),
        plan_loader(test, ev, workers),
        num_classes=int(dm.num_classes),
        ridges=settings.ridges,
        max_gram_mib=settings.max_gram_mib,
    )


@register_analysis
class Probe(Analysis):
    """Ridge linear probes on every tracked layer's pooled features."""

    name = "probe"
    title = "linear probes"
    Params = ProbeParams
    sweep = SweepPanels(panels=(("accuracy", "linear probe accuracy"),))

    def run(
        self, model: nn.Module, layers: LayerSpec, dm: Any, params: ProbeParams, seed: int
    ) -> ProbeResult:
        return probe_datamodule(model, layers, dm, params, seed=seed)

    def figure(self, arrays: Any, title: str | None = None) -> Any:
        from vvm.plots.analyses import probe_figure

        return probe_figure(arrays, title=title)

    def scalars(self, entry: Any) -> dict[str, float]:
        best = entry.get("best_accuracy")
        return {"best_accuracy": float(best)} if best is not None else {}

    def reference(self, record: Any) -> tuple[float, str] | None:
        """Chance: 1 / classes."""
        k = int(np.asarray(record.get("num_classes", 0)))
        return (1.0 / k, f"chance (1/{k})") if k else None
