"""Issue 22: what would break vvm's first GPU run, reproduced and checked on the CPU (mocking the CUDA queries
where a CPU cannot answer them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from compose import compose_settings
from helpers import Replay, make_layer_batches
from torch.utils.data import DataLoader, TensorDataset

import vvm.cka.joint as joint
from vvm.cka import JointCKA, StreamingCKA
from vvm.models import create
from vvm.train.module import VisionModule, set_memory_format


# ------------------------------------------------------------------------------------ 1. channels_last, every family
def _tiny_vit():
    return create(
        "timm",
        arch="vit_tiny_patch16_224",
        num_classes=10,
        timm_kwargs={"img_size": 32, "patch_size": 8, "depth": 1},
    )


FAMILIES = {
    "resnet": lambda: create("r18", num_classes=10),
    "lambda_resnet": lambda: create("lambda_r26", num_classes=10),
    "vit/timm": _tiny_vit,
}


class _Layouts(pl.Callback):
    """The memory format of every parameter during the fit's first step."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int, bool]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for name, p in pl_module.model.named_parameters():
            self.seen[name] = (p.dim(), p.is_contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_channels_last_setup_converts_what_can_take_it(family):
    """The fit's setup with channels_last (the default on CUDA) converted the whole model, 5-D tensors too: timm's
    LambdaLayer (a Conv3d) died at fit start with "required rank 4 tensor to use channels_last format"."""
    model = FAMILIES[family]()
    module = VisionModule(model, epochs=1, channels_last=True)
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module.setup("fit")
    dims = {p.dim() for p in model.parameters()}
    for p in model.parameters():
        assert p.is_contiguous(memory_format=torch.channels_last if p.dim() == 4 else torch.contiguous_format)
    assert 4 in dims and (family != "lambda_resnet" or 5 in dims)
    module.on_fit_end()
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_channels_last_fit_runs_for_every_family(family):
    """A Lightning fit with train.speed.channels_last=true trains every family in channels_last."""
    model = FAMILIES[family]()
    module = VisionModule(model, epochs=1, channels_last=True)
    layouts = _Layouts()
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g))
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[layouts],
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=4))
    four_d = {n: cl for n, (d, cl) in layouts.seen.items() if d == 4}
    assert four_d and all(four_d.values()), "every 4-D weight trains in channels_last"
    assert all(p.is_contiguous() for p in model.parameters()), "and is back in the default format after"
    if family == "lambda_resnet":
        assert any(d == 5 for d, _ in layouts.seen.values())  # the Conv3d that broke the fit


def test_set_memory_format_on_vit_l32_meta():
    """vit_l32 itself (too big to train here): its only 4-D weight, the patch embedding, is converted."""
    with torch.device("meta"):
        model = create("vit_l32", num_classes=10)
    set_memory_format(model, torch.channels_last)
    w = model.net.patch_embed.proj.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


# ------------------------------------------------------------------------------- 2. the joint pass's OOM fallback
def test_joint_out_of_memory_retries_in_blocks_after_the_handler(monkeypatch):
    """The one-product path running out of memory falls back to blocks; the retry waits until the failed
    attempt's frames (and their temporaries) are gone and the allocator's cache was emptied."""

    batches = make_layer_batches([16, 16], [5, 6, 4], seed=0)
    models = {"a": Replay(3), "b": Replay(3)}

    def run(**kw):
        m = JointCKA(models, "blocks", block_layers="auto", **kw)
        with m.track():
            for feats in batches:
                for net in models.values():
                    net(feats)
        return m

    want = run().compute()
    failed: list[weakref.ref] = []
    events: list[str] = []
    real_batch_hsic = JointCKA._batch_hsic

    def one_product_oom(self, kx, ky, n):
        temporaries = torch.empty(1 << 16)  # what the failed attempt holds when it runs out of memory
        failed.append(weakref.ref(temporaries))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB (mocked)")

    def empty_cache(device):
        events.append("emptied with the failed attempt " + ("alive" if failed[-1]() is not None else "gone"))

    def blocked(self, *args):
        events.append("retry with the failed attempt " + ("alive" if failed[-1]() is not None else "gone"))
        return real_blocked(self, *args)

    real_blocked = JointCKA._blocked_hsic
    monkeypatch.setattr(JointCKA, "_batch_hsic", one_product_oom)
    monkeypatch.setattr(JointCKA, "_blocked_hsic", blocked)
    monkeypatch.setattr(joint, "empty_cache", empty_cache)
    m = run()
    assert events[:2] == ["emptied with the failed attempt gone", "retry with the failed attempt gone"]
    assert m.block_layers == 1  # 6 layers // 8, at least 1: in blocks from then on
    monkeypatch.setattr(JointCKA, "_batch_hsic", real_batch_hsic)
    torch.testing.assert_close(m.compute().matrix, want.matrix, atol=1e-12, rtol=0)


# ------------------------------------------------------------------- 9. the block decision counts cached blocks
def test_free_memory_counts_the_allocators_cached_free_blocks(monkeypatch):
    from vvm.cka.joint import free_memory

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 * gib)
    # the driver sees 2 GiB free; PyTorch also holds 20 GiB of cached blocks that it can reuse
    assert free_memory(torch.device("cuda")) == 22 * gib
    assert free_memory(torch.device("cpu")) > 0


# ---------------------------------------------------------------------- 7. bf16 only where the GPU has it natively
@pytest.mark.parametrize(
    "capability,want", [((7, 5), "32-true"), ((8, 0), "bf16-mixed"), ((9, 0), "bf16-mixed")]
)
def test_precision_auto_picks_bf16_only_on_native_support(monkeypatch, capability, want):
    """``torch.cuda.is_bf16_supported()`` says yes on a T4 (7.5), which only emulates bf16: auto must not."""
    from vvm.train.fit import fit_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert fit_precision("auto", "32-true", torch.device("cuda")) == want
    assert fit_precision("32-true", "32-true", torch.device("cuda")) == "32-true"  # an explicit choice stays


# ------------------------------------------------------------- 5. no host synchronisation per batch, checks kept
class HostReads:
    """Counts the tensor reads that make the host wait for a CUDA device (``bool()``, ``item()``, ``tolist()``,
    ``int()``, ``float()``, ``torch.equal``), on any device: on the CPU they cost nothing but are counted alike."""

    NAMES = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__")

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        self.where: list[str] = []
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name), name))
        monkeypatch.setattr(torch, "equal", self._counted(torch.equal, "torch.equal"))
        self.on = False

    def _counted(self, fn, name):
        def wrapper(*args, **kwargs):
            if self.on:
                self.count += 1
                self.where.append(name)
            return fn(*args, **kwargs)

        return wrapper


def test_a_cka_batch_reads_nothing_back_from_the_device(monkeypatch):
    """StreamingCKA and JointCKA over VisionModels that re-normalise their inputs: after the first batch (which
    learns the layers), a batch's hooks, checks and update read no tensor value on the host."""
    model = _tiny_vit()
    model.set_data_normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))  # not the ViT's own: renormalises
    assert model._renorm
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(3)]
    reads = HostReads(monkeypatch)
    for metric in (
        StreamingCKA(model.net, ["patch_embed", "blocks.0", "head"], max_batches=3),
        JointCKA(
            {"a": model, "b": create("r18", num_classes=10)}, {"a": ["head"], "b": ["fc"]}, max_batches=3
        ),
    ):
        with torch.no_grad(), metric.track():
            for i, x in enumerate(xs):
                reads.on = i > 0
                if isinstance(metric, JointCKA):
                    metric.feed(x)
                else:
                    model(x)
                reads.on = False
        assert reads.count == 0, reads.where
        assert metric.compute().n_batches == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_named_once_with_their_first_batch(bad):
    """The finiteness check is deferred to the end of the pass (one read); it names each bad layer with its first
    bad batch, once, and ``compute()`` gives NaN for those rows and columns (issue 30: never a failed pass)."""
    batches = make_layer_batches([16] * 4, [5, 6, 4], seed=0)
    batches[2][2][3, 1] = bad  # l2 in batch 2
    batches[3][1][0, 0] = bad  # l1 in batch 3
    model = Replay(3)
    m = StreamingCKA(model, "blocks", max_batches=4)
    with pytest.warns(UserWarning, match=r"non-finite") as w, m.track():
        for feats in batches:
            model(feats)
    said = [str(x.message) for x in w if "non-finite" in str(x.message)]
    assert len(said) == 2
    assert any("layer 'l2' (batch 2)" in t for t in said) and any("layer 'l1' (batch 3)" in t for t in said)
    res = m.compute()
    assert np.isnan(res.matrix.numpy()[1:, :]).all() and np.isfinite(res.matrix.numpy()[0, 0])
    joint = JointCKA({"a": Replay(3), "b": Replay(3)}, "blocks")
    with pytest.warns(UserWarning, match=r"layer 'l2' \(model 'a', batch 2\)"), joint.track():
        for feats in batches:
            joint.feed(feats)


def test_a_batch_added_twice_is_still_refused():
    m = StreamingCKA(Replay(2), "blocks", max_batches=3)
    feats = make_layer_batches([8], [3, 4], seed=0)[0]
    m.recorder.set_next_batch_id(1)
    with m.track():
        m.recorder.models["x"](feats)
        m.recorder.set_next_batch_id(1)
        with pytest.raises(ValueError, match="batch 1 was added twice"):
            m.recorder.models["x"](feats)


def _eval_module(monkeypatch):
    model = create("r18", num_classes=10)
    module = VisionModule(model).eval()
    logged: dict[str, tuple] = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, (value, kw)))
    return module, logged


def test_evaluation_step_weighs_padding_on_the_device(monkeypatch):
    """A masked padding batch (every label IGNORE_LABEL) weighs 0 and a real one its size, decided without a
    host read; the values are the plain cross-entropy and accuracy."""
    from vvm.data.batches import IGNORE_LABEL

    module, logged = _eval_module(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g)
    reads = HostReads(monkeypatch)
    with torch.no_grad():
        reads.on = True
        module._step((x, y), "test")
        reads.on = False
        logits = module(x)
    assert reads.count == 0, reads.where
    loss, kw = logged["test/loss"]
    assert int(kw["batch_size"]) == 6
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, y))
    torch.testing.assert_close(logged["test/acc"][0], (logits.argmax(-1) == y).float().mean())
    with torch.no_grad():
        module._step((x, torch.full_like(y, IGNORE_LABEL)), "test")
    assert int(logged["test/loss"][1]["batch_size"]) == 0 and float(logged["test/acc"][0]) == 0.0


@pytest.mark.parametrize("label", [-1, 10])
def test_evaluation_step_still_refuses_bad_labels(monkeypatch, label):
    module, _ = _eval_module(monkeypatch)
    y = torch.tensor([0, 1, label, 3])
    with torch.no_grad(), pytest.raises((IndexError, RuntimeError), match="out of bounds"):
        module._step((torch.randn(4, 3, 16, 16), y), "val")


def test_renormalisation_is_decided_once_and_still_right():
    """The preprocessing's "does the data's normalisation differ from the model's" is a host decision made when
    the data's normalisation is set (it compared device tensors in every forward pass); its result is unchanged."""
    model = _tiny_vit()  # input 32x32, mean = std = 0.5
    x = torch.randn(2, 3, 32, 32)
    model.set_data_normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    dm, ds = (
        torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1),
        torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1),
    )
    torch.testing.assert_close(model.preprocess(x), (x * ds + dm - 0.5) / 0.5)
    model.set_data_normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the model's own: left as it is
    assert not model._renorm and model.preprocess(x) is x
    with pytest.raises(ValueError, match="both mean and std"):
        model.set_data_normalization((0.5, 0.5, 0.5), None)


# ------------------------------------------------------------------------- 6. peak memory of the CKA arithmetic
PEAK_SCRIPT = """
import json, torch
from helpers import Replay
from vvm.cka import StreamingCKA
from vvm.cka.functional import centre_columns, u_centre

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

def peak_growth(fn):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set
    base = status("VmRSS")
    fn()
    return status("VmHWM") - base

out = {}
x = torch.randn(64, 1 << 18)
out["centre_columns"] = peak_growth(lambda: centre_columns(x)) / (x.numel() * 4)
k = torch.randn(32, 512, 512, dtype=torch.float64)
out["u_centre"] = peak_growth(lambda: u_centre(k)) / (k.numel() * 8)
del k
L, n = 32, 512
feats = [torch.randn(n, 4, generator=torch.Generator().manual_seed(i)) for i in range(L)]
model = Replay(L)
m = StreamingCKA(model, "blocks")
with m.track():
    model(feats)
    out["streaming_batch"] = peak_growth(lambda: model(feats)) / (L * n * n * 8)
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_peak_memory_of_centring_and_a_batch():
    """Peak memory growth in units of what is being centred, measured as the peak resident set of a fresh
    process in which every allocation of 64 KiB or more is its own mapping (MALLOC_MMAP_THRESHOLD_), so that
    memory freed is memory returned. Before issue 22: 2.07 activations, 3.02 stacks, 5.0 stacks."""
    tests = Path(__file__).parent
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": os.pathsep.join(
        [str(tests.parent / "src"), str(tests), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])
    assert peak["centre_columns"] <= 1.2, peak  # the centred copy only
    assert peak["u_centre"] <= 1.2, peak  # the U-centred copy only
    # the stack and, while stacking, the Grams it is made of; during update() the stack and its centred copy
    assert peak["streaming_batch"] <= 2.2, peak


# ------------------------------------------------------------- 8. pinned evaluation batches, the joint's workers
def _digits(**kw):
    from vvm.data import DigitsDataModule

    return DigitsDataModule(root="data", num_workers=kw.pop("num_workers", 0), **kw)


@pytest.mark.parametrize(
    "pin,device,cuda_available,want",
    [("auto", "cuda", False, True), ("auto", "cpu", True, False), ("auto", None, True, True),
     ("auto", None, False, False), (False, "cuda", True, False), (True, "cpu", False, True)],
)  # fmt: skip
def test_evaluation_batches_are_pinned_for_cuda(monkeypatch, pin, device, cuda_available, want):
    """``pin_memory="auto"`` (the default): the loaders pin their batches when they feed a CUDA device, the
    attached Trainer's (the CKA pass, the probe, training) or the one ``eval_loader`` is given (``vvm.joint``)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    dm = _digits(pin_memory=pin)
    if device is not None:
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
    assert dm.test_dataloader().pin_memory is want
    assert dm.val_dataloader().pin_memory is want
    assert dm.train_dataloader().pin_memory is want
    dm.trainer = None
    assert dm.eval_loader(dm.cka_batches(), device=device or "cpu").pin_memory is (
        pin is True or (pin == "auto" and device == "cuda")
    )


def test_pin_memory_takes_only_true_false_auto():
    with pytest.raises(ValueError, match="pin_memory='yes'"):
        _digits(pin_memory="yes")


def test_the_joint_pass_loads_with_the_datamodules_workers_and_pins_for_cuda(monkeypatch, tmp_path):
    from vvm.data.base import VisionDataModule
    from vvm.joint.joint_pass import run_pass
    from vvm.joint.settings import JointSettings

    seen = {}
    real = VisionDataModule.eval_loader

    def recording(self, batches, *, device=None):
        loader = real(self, batches, device=device)
        seen.update(workers=loader.num_workers, device=device, plan=len(batches.plan))
        return loader

    monkeypatch.setattr(VisionDataModule, "eval_loader", recording)
    job = compose_settings(["dataset=digits", "dataset.num_workers=2", "similarity.max_samples=16", "similarity.batch_size=8",
                            "similarity.layers=[stem,fc]"], tmp_path)  # fmt: skip
    settings = JointSettings(
        job.dataset, job.train.batch_size, job.similarity, job.cka, job.kernel, job.measure, job.seed
    )
    res, _ = run_pass({"a": create("r18", num_classes=10)}, settings, "cpu", progress=False)
    assert seen == {"workers": 2, "device": "cpu", "plan": 2} and res.n_samples == 16


# ----------------------------------------------------- 10. what the pass's convolutions and matmuls ran in, a switch


def _fp32_state() -> tuple:
    b = torch.backends
    levels = (b, b.cudnn, b.cudnn.conv, b.cudnn.rnn, b.cuda.matmul, b.mkldnn, b.mkldnn.conv, b.mkldnn.matmul)
    return tuple(level.fp32_precision for level in levels)


@pytest.fixture
def fp32_flags():
    """PyTorch's float32 precision settings as found, restored after the test (new API, torch >= 2.9)."""
    if not hasattr(torch.backends.cudnn, "conv"):
        pytest.skip("needs torch >= 2.9 (fp32_precision per backend)")
    b = torch.backends
    levels = (b, b.cudnn, b.cudnn.conv, b.cudnn.rnn, b.cuda.matmul, b.mkldnn, b.mkldnn.conv, b.mkldnn.matmul)
    saved = [level.fp32_precision for level in levels]
    yield
    for level, value in zip(levels, saved):
        level.fp32_precision = value


STATES = {
    "default": lambda: None,
    "matmul high": lambda: torch.set_float32_matmul_precision("high"),
    "cudnn off (legacy flag)": lambda: setattr(torch.backends.cudnn, "allow_tf32", False),
    "everything tf32": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
}


@pytest.mark.parametrize("state", list(STATES))
def test_float32_precision_agrees_with_pytorchs_own_flags(fp32_flags, state):
    """float32_precision against PyTorch's legacy getters (cuDNN's allow_tf32, cuBLAS's allow_tf32), an
    independent reading of the same state, wherever they answer."""
    from vvm.cka.precision import float32_precision

    STATES[state]()
    got = float32_precision("cuda")
    for op, legacy in (("conv", torch._C._get_cudnn_allow_tf32), ("matmul", torch._C._get_cublas_allow_tf32)):
        try:
            want = "tf32" if legacy() else "ieee"
        except RuntimeError:  # mixed new/legacy settings: the legacy getter refuses to say
            continue
        assert got[op] == want, (state, op)
    if state == "default":  # PyTorch's defaults: cuDNN convolutions in TF32, cuBLAS products in IEEE
        assert got == {"conv": "tf32", "matmul": "ieee"}


@pytest.mark.parametrize("state", list(STATES))
def test_tf32_off_makes_the_pass_ieee_and_restores_every_flag(fp32_flags, state):
    from vvm.cka.precision import float32_precision, pass_float32

    STATES[state]()
    before = (_fp32_state(), float32_precision("cuda"), float32_precision("cpu"))
    with pass_float32("off"):
        assert float32_precision("cuda") == float32_precision("cpu") == {"conv": "ieee", "matmul": "ieee"}
    assert (_fp32_state(), float32_precision("cuda"), float32_precision("cpu")) == before
    with pass_float32("allow"):
        assert _fp32_state() == before[0]
    with pytest.raises(ValueError, match="tf32='on' is not supported: use allow"):
        with pass_float32("on"):
            pass


def test_result_files_record_what_the_pass_ran_in(tmp_path, fp32_flags):
    from vvm.io import load_npz
    from vvm.pipeline.steps import run

    fast = ["dataset=digits", "dataset.limit=48", "similarity.batch_size=24", "logger=none", "trainer=cpu"]
    torch.set_float32_matmul_precision("high")  # a user's global setting: off overrides it for the pass only
    before = _fp32_state()
    run(compose_settings([*fast, "similarity.tf32=off"], tmp_path / "off"))
    assert _fp32_state() == before
    res = json.loads((tmp_path / "off" / "result.json").read_text())
    assert res["cka_float32"] == {"tf32": "off", "device": "cpu", "conv": "ieee", "matmul": "ieee"}
    z = load_npz(tmp_path / "off" / "cka.npz")
    assert (z["tf32"], z["float32_conv"], z["float32_matmul"]) == ("off", "ieee", "ieee")
    run(compose_settings(fast, tmp_path / "allow"))  # the default: PyTorch's settings, recorded as they were
    res = json.loads((tmp_path / "allow" / "result.json").read_text())
    assert res["cka_float32"] == {"tf32": "allow", "device": "cpu", "conv": "ieee", "matmul": "tf32"}


def test_a_bad_tf32_setting_is_refused_before_any_work(tmp_path):
    """A closed choice of the schema: refused when the config is composed, naming the key and the choices."""
    from helpers import compose_error

    message = compose_error(
        ["dataset=digits", "logger=none", "trainer=cpu", "similarity.tf32=maybe"], tmp_path
    )
    assert (
        "Invalid value 'maybe', expected one of [allow, off]" in message
        and "full_key: similarity.tf32" in message
    )
