"""The analyses' registry: a class registered with ``register_analysis`` is run, written, logged and drawn in a
sweep by the shared code alone; the parameters are checked from the Python API as the config checks them; the
settings are generated from each analysis's ``Params`` (one default, one place)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import pytest
from matplotlib.figure import Figure

from vvm.analyses import (
    ANALYSES,
    ANALYSIS_SETTINGS,
    Analysis,
    AnalysisName,
    AnalysisSettings,
    SweepPanels,
    register_analysis,
    run_analyses,
    settings_problems,
)
from vvm.cka.params import option
from vvm.io import load_npz
from vvm.loggers.logger import analysis_scalars
from vvm.plots.analyses_sweep import sweep_figure
from vvm.settings import plain


@dataclass(frozen=True)
class LayersParams:
    n: int = option(3, minimum=1, why="layers")


@dataclass
class LayersResult:
    n: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {"layers": np.array([f"l{i}" for i in range(self.n)]), "value": np.arange(self.n) / self.n}

    def summary(self) -> dict:
        return {"layers": self.n, "last": float((self.n - 1) / self.n)}


class Layers(Analysis):
    """A stand-in: ``n`` layers whose value is ``i / n``, whatever the model."""

    name = "layers_test"
    title = "layer values"
    Params = LayersParams
    sweep = SweepPanels(panels=(("value", "i / n"),))

    def run(self, model, layers, dm, params, seed):
        return LayersResult(params.n)

    def figure(self, arrays, title=None):
        fig = Figure()
        fig.subplots().plot(arrays["value"])
        return fig

    def scalars(self, entry):
        return {"last": entry["last"]}

    def reference(self, record):
        return 0.5, "half"


@pytest.fixture
def registered():
    register_analysis(Layers)
    yield Layers
    ANALYSES.pop(Layers.name)


def test_a_registered_analysis_is_run_written_logged_and_drawn(tmp_path, registered):
    out = run_analyses([Layers.name], None, "blocks", None, tmp_path, {Layers.name: {"n": 4}}, title="t")
    entry = out[Layers.name]
    assert entry["layers"] == 4 and entry["last"] == 0.75 and entry["seconds"] >= 0
    assert set(entry["files"]) == {"npz", "png", "pdf"}
    np.testing.assert_array_equal(load_npz(tmp_path / "layers_test.npz")["value"], [0, 0.25, 0.5, 0.75])
    assert (tmp_path / "layers_test.png").stat().st_size > 0
    assert analysis_scalars(out) == {
        "analyses/layers_test/seconds": entry["seconds"],
        "analyses/layers_test/last": 0.75,
    }
    records = [
        {"model": "r18", "family": "resnet", "init": init, "value": np.arange(3) / 3}
        for init in ("random", "x")
    ]
    fig = sweep_figure(Layers.name, [*records, {"model": "vit", "family": "vit", "init": "random"}])
    assert fig.get_suptitle() == "layer values"
    assert "not applicable: vit · random" in fig.axes[0].get_title(loc="left")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["r18 · random", "r18 · x", "half"]


def test_parameters_are_checked_from_python_before_anything_runs(tmp_path):
    cases = {
        "probe": ({"ridges": []}, "analysis.probe.ridges=[]: a non-empty list of positive"),
        "erf": ({"mode": "sum"}, "analysis.erf.mode='sum' is not supported: use one of unit, channel_sum"),
        "attention": ({"n_image": 3}, "analysis attention has no parameter n_image"),
    }
    for name, (values, message) in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            run_analyses([name], None, "blocks", None, tmp_path, {name: values})
    with pytest.raises(ValueError, match="choosing a ridge needs held-out examples"):
        run_analyses(["probe"], None, "blocks", None, tmp_path, {"probe": {"holdout": 0.0}})
    assert list(tmp_path.iterdir()) == []


def test_settings_are_generated_from_each_analysis_params():
    assert [str(n) for n in AnalysisName] == list(ANALYSES)
    defaults = plain(AnalysisSettings())
    for name, cls in ANALYSES.items():
        assert defaults[name] == asdict(cls.Params()), name
        assert ANALYSIS_SETTINGS[name].__name__ == f"Analysis{name.title()}Settings"
    assert settings_problems(AnalysisSettings()) == []
    bad = AnalysisSettings()
    bad.probe.ridges = [1.0, -1.0]
    assert settings_problems(bad) == [
        "analysis.probe.ridges=[1.0, -1.0]: a non-empty list of positive ridge strengths (relative)"
    ]
