"""Issue 22: what would break vvm's first GPU run, reproduced and checked on the CPU (mocking the CUDA queries
where a CPU cannot answer them)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

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
    import weakref

    from helpers import Replay, make_layer_batches

    import vvm.cka.joint as joint
    from vvm.cka import JointCKA

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
