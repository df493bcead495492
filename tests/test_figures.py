"""Every figure type vvm draws, rendered from small synthetic results: each colour bar names its quantity, no
text lies outside the canvas, a figure-level line (title, caption) overlaps no other text, and the facts a
reader needs are in the figure (estimator, n, seed, chance and uniform-attention references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from vvm.callbacks.cka import epoch_number, measure_figure
from vvm.cka import CKAResult
from vvm.cka.measures.mean import MeasureResult
from vvm.diff import cka_difference, difference_figure
from vvm.io import save_result, write_json
from vvm.plots.analyses import attention_figure, erf_figure, probe_figure, uniform_distance
from vvm.plots.analyses_sweep import sweep_figure
from vvm.plots.heatmap import measures_figure
from vvm.plots.joint import CorrespondencePanel, Curve, correspondence_figure, joint_figure
from vvm.plots.style import colour_limits, job_title, quantity, result_quantity, stages
from vvm.sweep.figures import grid_figure
from vvm.sweep.records import JobRecord

STAGED = [f"layer{s}.{b}" for s in (1, 2, 3) for b in (0, 1)]  # 6 layers in 3 stages


def figure_problems(fig: Figure) -> list[str]:
    """What keeps ``fig`` from a paper: an unlabelled colour bar, text outside the canvas, a figure-level text
    (suptitle, supxlabel, fig.text) overlapping another text."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    out = []
    for ax in fig.axes:
        cb = getattr(ax, "_colorbar", None)
        if cb is not None and not (ax.get_ylabel().strip() or ax.get_xlabel().strip()):
            out.append("a colour bar without a label")
    box = fig.bbox
    texts = [t for t in drawn_texts(fig) if t.get_visible() and t.get_text().strip()]
    extents = {id(t): t.get_window_extent(renderer) for t in texts}
    for t in texts:
        e = extents[id(t)]
        if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            out.append(f"text outside the canvas: {t.get_text()!r}")
    top = [t for t in texts if t.axes is None and t.figure is fig and t.get_text() in _figure_texts(fig)]
    for t in top:
        for u in texts:
            if u is not t and u not in top and extents[id(t)].overlaps(extents[id(u)]):
                out.append(f"{t.get_text()!r} overlaps {u.get_text()!r}")
    return out


def drawn_texts(fig: Figure) -> list[Text]:
    """Every text artist the last draw drew: tick labels only of the ticks inside the view (matplotlib keeps
    labels of ticks beyond the limits, which it does not draw)."""
    ticks = []
    for ax in (a for a in fig.axes if a.get_visible()):
        for axis in (ax.xaxis, ax.yaxis):
            ticks += [
                t for tick in axis._update_ticks() for t in (tick.label1, tick.label2) if t.get_visible()
            ]
    every_tick = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                  for tick in axis.get_major_ticks() + axis.get_minor_ticks() for t in (tick.label1, tick.label2)}  # fmt: skip
    hidden = {id(a) for a in fig.axes if not a.get_visible()}
    return [t for t in fig.findobj(Text) if id(t) not in every_tick and id(t.axes) not in hidden] + ticks


def _figure_texts(fig: Figure) -> set[str]:
    own = [fig._suptitle, fig._supxlabel, fig._supylabel, *fig.texts]
    return {t.get_text() for t in own if t is not None}


def colour_bar_labels(fig: Figure) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def all_text(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def cka_result(names=STAGED, n_batches: int = 3, seed: int = 0) -> CKAResult:
    rng = np.random.default_rng(seed)
    L = len(names)
    m = rng.uniform(0.6, 1.0, (L, L))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    t = torch.as_tensor
    se = rng.uniform(0, 0.02, (L, L)) if n_batches > 1 else np.full((L, L), np.nan)  # as the metric gives
    return CKAResult(t(m), t(se), list(names), list(names), 360, n_batches,
                     t(np.ones(L)), t(np.ones(L)), "linear", "unbiased")  # fmt: skip


def knn_result(names=STAGED) -> MeasureResult:
    rng = np.random.default_rng(1)
    L = len(names)
    t = torch.as_tensor
    return MeasureResult(t(rng.uniform(0.05, 0.4, (L, L))), t(rng.uniform(0, 0.01, (L, L))), list(names),
                         list(names), 360, 3, measure="knn", params={"k": 10})  # fmt: skip


# ---------------------------------------------------------------------------------------------- the checker
def test_the_checker_catches_clipped_text_and_an_unlabelled_colour_bar():
    """What the figures of an earlier vvm did (a heatmap without a colour bar label, measures.png cut at the
    bottom): the checker names both."""
    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    fig.colorbar(ax.imshow(np.eye(3)), ax=ax)
    ax.set_xlabel("a label below the canvas", labelpad=200)
    problems = figure_problems(fig)
    assert "a colour bar without a label" in problems
    assert any("outside the canvas" in p for p in problems)


# ---------------------------------------------------------------------------------------------- one job
def test_heatmap_names_its_quantity_sample_and_uncertainty():
    fig = measure_figure(cka_result(), title=f"{job_title({'model': 'r18', 'init': 'random', 'dataset': 'digits', 'seed': 3})} - linear CKA")  # fmt: skip
    assert figure_problems(fig) == []
    labels = colour_bar_labels(fig)
    assert labels[0] == "linear CKA (unbiased HSIC₁)" and "95% interval half-width" in labels[1]
    text = all_text(fig)
    assert "n = 360 examples in 3 batches" in text and "seed 3" in text
    # stage boundaries: a white line at each stage's first layer, on both axes
    starts = [float(line.get_ydata()[0]) for line in fig.axes[0].get_lines() if line.get_ydata()[0] == line.get_ydata()[1]]  # fmt: skip
    assert sorted(set(starts)) == [2.0, 4.0]


def test_heatmap_with_one_batch_says_it_has_no_standard_error():
    fig = measure_figure(cka_result(n_batches=1), title="r18")
    assert figure_problems(fig) == [] and "one batch: no standard error" in all_text(fig)


def test_measures_side_by_side_fit_and_mark_knn_chance():
    results = [cka_result(), knn_result()]
    fig = measures_figure(
        [(result_quantity(r), r.matrix.numpy(), r.layers_x, r.layers_y) for r in results],
        title="r18 (random, digits, seed 0)", caption="n = 360 examples in 3 batches",
        references=[(None, ""), (10 / 119, "chance k/(n−1)")],
    )  # fmt: skip
    assert figure_problems(fig) == []
    labels = colour_bar_labels(fig)
    assert labels[0] == "linear CKA (unbiased HSIC₁)" and labels[1].startswith("mutual 10-NN\ndotted: chance")


def test_colour_range_auto_and_quantities():
    m = np.full((3, 3), 0.93)
    np.fill_diagonal(m, 1.0)
    assert colour_limits(m, "fixed") == (0.0, 1.0) and colour_limits(m, "auto") == (0.9, 1.0)
    with pytest.raises(ValueError, match="colour_range"):
        colour_limits(m, "tight")
    assert (
        quantity("cka", {"kernel": np.array("rbf"), "estimator": np.array("biased")})
        == "rbf CKA (biased HSIC₀)"
    )
    assert quantity("knn", {"k": np.array(5), "measure": "knn"}) == "mutual 5-NN"
    assert stages(["blocks.0", "blocks.1", "blocks.2"]) == []  # one layer per stage: no boundaries


def test_epoch_numbering_is_the_folders():
    class T:
        current_epoch = 0  # Lightning's 0-based index during the first training epoch

    assert epoch_number(T()) == 1


def test_diff_figure_titles_runs_by_their_facts(tmp_path):
    for side, init in (("a", "pretrained"), ("b", "random")):
        save_result(tmp_path / side / "cka.npz", cka_result(seed=1 if side == "a" else 2), model_x="r18")
        write_json(
            tmp_path / side / "result.json", {"model": "r18", "init": init, "dataset": "digits", "seed": 0}
        )
    d = cka_difference(tmp_path / "a", tmp_path / "b")
    fig = difference_figure(d, tmp_path / "a", tmp_path / "b")
    assert figure_problems(fig) == []
    text = all_text(fig)
    assert "A = r18 (pretrained, digits, seed 0)" in text and "B = r18 (random, digits, seed 0)" in text
    assert (
        str(tmp_path.name) not in text and colour_bar_labels(fig)[0] == "Δ linear CKA (unbiased HSIC₁), A − B"
    )


# ---------------------------------------------------------------------------------------------- analyses
def test_erf_attention_probe_figures():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    maps = np.stack([np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / (2 * s**2)) for s in (1.0, 2.0, 4.0)])
    erf = {"layers": np.array(["layer1", "layer2", "layer3"]), "maps": maps, "radius50": np.array([1.2, 2.4, 4.7]),
           "radius90": np.array([2.1, 4.3, 8.6]), "centre": np.full((3, 2), 8.0), "n_images": np.array(4)}  # fmt: skip
    att = {"blocks": np.array(["blocks.0", "blocks.1"]), "distance": rng.uniform(20, 100, (2, 3)),
           "image_size": np.array([224, 224]), "grid": np.array([7, 7]), "patch": np.array([32, 32]),
           "n_images": np.array(2)}  # fmt: skip
    probe = {"layers": np.array(["a", "b", "c"]), "accuracy": np.array([0.3, 0.6, 0.9]),
             "accuracy_se": np.array([0.02, 0.02, 0.01]), "holdout_accuracy": np.array([0.3, 0.5, 0.8]),
             "num_classes": np.array(10), "n_train": np.array(64), "n_eval": np.array(32)}  # fmt: skip
    figs = {"erf": erf_figure(erf, title="r18"), "attention": attention_figure(att, title="vit"),
            "probe": probe_figure(probe, title="r18")}  # fmt: skip
    for fig in figs.values():
        assert figure_problems(fig) == []
    assert "power scale" in colour_bar_labels(figs["erf"])[0]
    assert "uniform attention" in [t.get_text() for t in figs["attention"].axes[0].get_legend().get_texts()]
    assert "chance (1/10)" in [t.get_text() for t in figs["probe"].axes[0].get_legend().get_texts()]


def test_uniform_attention_distance_matches_the_analysis_grid():
    from vvm.analyses.attention import patch_distances
    from vvm.analyses.common import TokenGrid

    expected = patch_distances(TokenGrid(1, (7, 7), (32, 32))).mean()
    assert uniform_distance([7, 7], [32, 32]) == pytest.approx(expected, rel=1e-12)
    assert 110 < expected < 120  # the "about 115 px for a 7x7 grid of 32 px"


@pytest.mark.parametrize("kind", ["erf", "attention", "probe"])
def test_sweep_analysis_figures(kind):
    rng = np.random.default_rng(0)
    recs = []
    for model, family in (("r18", "resnet"), ("vit_b16", "vit")):
        for init in ("random", "pretrained"):
            rec = {"model": model, "family": family, "init": init, "depth": np.linspace(0.25, 1, 4),
                   "radius50": rng.uniform(1, 8, 4), "radius90": rng.uniform(8, 16, 4), "image_size": np.array([32, 32]),
                   "accuracy": rng.uniform(0.2, 1, 4), "num_classes": np.array(10)}  # fmt: skip
            if family == "vit":
                rec |= {
                    "distance": rng.uniform(5, 20, (4, 3)),
                    "grid": np.array([4, 4]),
                    "patch": np.array([8, 8]),
                }
            recs.append(rec)
    fig = sweep_figure(kind, recs, title=f"{kind} on digits")
    assert figure_problems(fig) == []
    if kind != "erf":
        assert ("chance (1/10)" if kind == "probe" else "uniform attention") in all_text(fig)


# ---------------------------------------------------------------------------------------------- sweep, joint
def test_sweep_summary_grid(tmp_path):
    jobs = []
    for i, (model, init) in enumerate([("r18", "pretrained"), ("r18", "random"), ("vit_b16", "random")]):
        ok = model == "r18"
        if ok:
            save_result(tmp_path / str(i) / "cka.npz", cka_result(seed=i))
        jobs.append(JobRecord(job=str(i), output_dir=tmp_path / str(i), model=model, family="resnet" if ok else "vit",
                              init=init, dataset="digits", status="ok" if ok else "failed", error=None if ok else "ValueError: boom",
                              samples=360, n_batches=3, seed=0, kernel="linear", matrix=cka_result().matrix.numpy() if ok else None,
                              layers_x=STAGED, layers_y=STAGED))  # fmt: skip
    fig = grid_figure(jobs)
    assert figure_problems(fig) == []
    assert colour_bar_labels(fig) == ["linear CKA (unbiased HSIC₁)"]
    text = all_text(fig)
    assert "linear CKA on digits · 2/3 jobs ok" in text and "n = 360 examples in 3 batches · seed 0" in text


def test_joint_and_correspondence_figures():
    m = cka_result(names=[f"l{i}" for i in range(9)]).matrix.numpy()
    fig = joint_figure(m, ["r18-pretrained", "r18-random", "vit-random"], [0, 0, 0, 1, 1, 1, 2, 2, 2],
                       title="linear CKA, 3 models, digits", cbar_label="linear CKA (unbiased HSIC₁)",
                       caption="n = 360 examples in 3 batches · seed 0")  # fmt: skip
    assert figure_problems(fig) == []
    x = np.linspace(0, 1, 5)
    panels = [CorrespondencePanel("resnet vs vit", "A depth", "B depth",
                                  [Curve("r18-pretrained vs vit-random", x, x**2, "mixed"),
                                   Curve("r18-random vs vit-random", x, x, "random")])]  # fmt: skip
    fig = correspondence_figure(panels, title="best-matching layers", caption="n = 360 examples in 3 batches")
    assert figure_problems(fig) == []
    styles = [line.get_linestyle() for line in fig.axes[0].get_lines()]
    assert styles == [":", "-.", "--"]  # reference dotted, one of each dash-dot, random dashed


def test_colour_range_is_a_typed_setting_that_reaches_the_callback(tmp_path):
    from compose import compose_settings
    from hydra.errors import ConfigCompositionException

    from vvm.callbacks.cka import SimilarityCallback

    job = compose_settings(["similarity.colour_range=auto"], tmp_path)
    callback = SimilarityCallback.from_settings(job.similarity, tmp_path, engine=job.engine_options())
    assert callback.colour_range == "auto"
    with pytest.raises(ConfigCompositionException, match="colour_range"):  # an enum: checked as Hydra merges
        compose_settings(["similarity.colour_range=tight"], tmp_path)
