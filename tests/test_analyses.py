"""The per-layer analyses against independent computations: receptive-field supports of linear conv stacks and
per-image gradients, mean attention distance against closed forms and a recomputation from q and k, linear
probes against scikit-learn."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from vvm.analyses import (
    distance_from_weights,
    effective_receptive_fields,
    first_images,
    mass_radius,
    mean_attention_distance,
    pooled,
    spatial_map,
    token_grid,
)
from vvm.analyses.attention import AttentionResult, patch_distances, prefix_mass_from_weights
from vvm.analyses.common import TokenGrid
from vvm.models import create


def tiny_vit(**kw) -> nn.Module:
    """A 2-block timm ViT on 32x32 inputs with 8x8 patches (a 4x4 grid and a class token)."""
    return create(
        "timm",
        arch="vit_tiny_patch16_224",
        num_classes=10,
        seed=0,
        timm_kwargs={"img_size": 32, "patch_size": 8, "depth": 2, **kw},
    ).eval()


# ------------------------------------------------------------------------------------------ receptive fields
def conv_stack(k: int) -> nn.Sequential:
    torch.manual_seed(k)
    convs = [nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1, bias=False) for i in range(k)]
    for c in convs:
        c.weight.data = torch.rand_like(c.weight) + 0.05  # positive weights
    return nn.Sequential(*convs)


@pytest.mark.parametrize("size", [11, 12, 16])
def test_erf_support_of_a_linear_conv_stack_is_2k_plus_1_squared(size):
    net = conv_stack(4)
    res = effective_receptive_fields(
        net, [str(i) for i in range(4)], torch.randn(3, 3, size, size), batch_size=2
    )
    assert res.layers == ["0", "1", "2", "3"] and res.maps.shape == (4, size, size)
    c = size // 2
    for k, m in enumerate(res.maps, start=1):
        support = m > 0
        assert support.sum() == (2 * k + 1) ** 2
        window = np.zeros_like(support)
        window[c - k : c + k + 1, c - k : c + k + 1] = True
        assert (support == window).all()
    # radii grow with depth; the map's centre of mass lies inside the window
    assert (np.diff(res.radius90) > 0).all() and (np.abs(res.centre - c) < 1).all()
    assert res.n_images == 3 and np.allclose(res.depth, [0.25, 0.5, 0.75, 1.0])


def test_erf_batched_gradient_equals_per_image_gradients():
    """One backward of the batch's sum = each image's own gradient (eval mode: examples do not interact)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3, 2, 1))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    x = torch.randn(5, 3, 10, 10)
    res = effective_receptive_fields(net.train(), ["2", "3"], x, batch_size=3, mode="channel_sum")
    assert res.mode == "channel_sum" and res.arrays()["units"].tolist() == [6, 5]
    assert net.training and all(p.requires_grad for p in net.parameters())  # modes and flags restored
    net.eval()
    for name, m in zip(res.layers, res.maps):
        ref = np.zeros((10, 10))
        for i in range(5):
            xi = x[i : i + 1].clone().requires_grad_(True)
            out = net[: int(name) + 1](xi)
            h, w = out.shape[-2:]
            out[0, :, h // 2, w // 2].sum().backward()
            ref += xi.grad.abs().sum(1)[0].double().numpy()
        np.testing.assert_allclose(m, ref / 5, rtol=1e-5, atol=1e-9)


def erf_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3, 2, 1))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    return net.eval()


def unit_maps(net: nn.Module, x: torch.Tensor, name: str) -> np.ndarray:
    """``[images, channels, H, W]``: |d y_c,centre / d x_i| summed over colour channels, by a loop over every
    image and every channel of layer ``name``."""
    out = []
    for i in range(x.shape[0]):
        per_c = []
        y = None
        xi = x[i : i + 1].clone().requires_grad_(True)
        y = net[: int(name) + 1](xi)
        h, w = y.shape[-2:]
        for c in range(y.shape[1]):
            (g,) = torch.autograd.grad(y[0, c, h // 2, w // 2], xi, retain_graph=True)
            per_c.append(g.abs().sum(1)[0].double().numpy())
        out.append(per_c)
    return np.array(out)


def test_erf_per_unit_equals_a_loop_over_every_channel():
    """Luo et al.'s ERF: with every channel sampled and taken by every image, the map is the mean over images
    and channels of |d y_c,centre / d x|, computed here by a loop; the channel sum's is narrower."""
    net, x = erf_net(), torch.randn(4, 3, 10, 10)
    res = effective_receptive_fields(net, ["2", "3"], x, batch_size=3, units=6, units_per_image=6)
    assert res.mode == "unit" and res.units.tolist() == [6, 5] and res.channels.tolist() == [6, 5]
    for name, m in zip(res.layers, res.maps):
        np.testing.assert_allclose(m, unit_maps(net, x, name).mean(axis=(0, 1)), rtol=1e-5, atol=1e-9)
    summed = effective_receptive_fields(net, ["2", "3"], x, mode="channel_sum")
    assert (summed.maps.sum(axis=(1, 2)) <= res.maps.sum(axis=(1, 2)) * res.channels + 1e-9).all()
    a = res.arrays()
    assert str(a["mode"]) == "unit" and "per unit" in str(a["definition"]) and int(a["units_per_image"]) == 6
    assert res.summary()["units"] == [6, 5]


def test_erf_sampled_units_follow_the_recorded_sample():
    """3 of 5 channels sampled (seeded by the seed and the layer's name), one per image in turn: image i takes
    sample[i mod 3]; the map is the mean of those (image, unit) gradients."""
    net, x = erf_net(), torch.randn(7, 3, 10, 10)
    res = effective_receptive_fields(net, ["3"], x, batch_size=4, units=3, seed=5)
    sample = res.sampled[0]
    assert res.units.tolist() == [3] and len(set(sample.tolist())) == 3 and (sample >= 0).all()
    ref = unit_maps(net, x, "3")
    expected = np.mean([ref[i, sample[i % 3]] for i in range(7)], axis=0)
    np.testing.assert_allclose(res.maps[0], expected, rtol=1e-5, atol=1e-9)
    # the same seed draws the same sample whatever else is tracked; another seed (in general) another one
    again = effective_receptive_fields(net, ["0", "3"], x, units=3, seed=5)
    assert again.sampled[1].tolist() == sample.tolist()
    others = {tuple(effective_receptive_fields(net, ["3"], x, units=3, seed=s).sampled[0]) for s in range(6)}
    assert len(others) > 1
    with pytest.raises(ValueError, match="mode='sum'"):
        effective_receptive_fields(net, ["3"], x, mode="sum")


def test_erf_restores_modes_and_skips_flat_layers():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 36, 3)).train()
    net[2].weight.requires_grad_(False)
    res = effective_receptive_fields(net, ["0", "1", "2"], torch.randn(2, 3, 6, 6))
    assert res.layers == ["0"] and set(res.skipped) == {"1", "2"}
    assert net.training and not net[2].weight.requires_grad and net[0].weight.requires_grad
    with pytest.raises(ValueError, match="no tracked layer has a spatial layout"):
        effective_receptive_fields(net, ["2"], torch.randn(2, 3, 6, 6))


def test_erf_vit_tokens_lie_on_their_patch_grid():
    """The patch embedding's centre token sees exactly its own 8x8 patch: the class token is not on the grid."""
    model = tiny_vit()
    res = effective_receptive_fields(
        model, ["patch_embed", "blocks.0", "blocks.1", "head"], torch.randn(2, 3, 32, 32)
    )
    assert res.layers == ["patch_embed", "blocks.0", "blocks.1"] and "head" in res.skipped
    window = np.zeros((32, 32), dtype=bool)
    window[16:24, 16:24] = True  # patch (2, 2) of the 4x4 grid
    assert ((res.maps[0] > 0) == window).all()
    assert (res.maps[1] > 0).sum() == 32 * 32  # attention reaches every patch at once
    assert (res.grid == 4).all()
    # with identity attention (its patch embedding restored) each token sees its own patch, block after block
    model = identity_attention_vit()
    model.net.patch_embed.proj.weight.data.normal_()
    res = effective_receptive_fields(
        model, ["patch_embed", "blocks.0", "blocks.1"], torch.randn(2, 3, 32, 32)
    )
    assert all(((m > 0) == window).all() for m in res.maps)


def brute_radius(m: np.ndarray, q: float, c: np.ndarray) -> float:
    d = np.hypot(*(np.indices(m.shape) - c[:, None, None]))
    for r in np.unique(d):
        if m[d <= r].sum() >= q * m.sum() * (1 - 1e-12):
            return float(r)
    raise AssertionError


def test_mass_radius_against_brute_force():
    rng = np.random.default_rng(0)
    delta = np.zeros((9, 9))
    delta[4, 4] = 2.0
    assert mass_radius(delta, 0.5) == 0.0 and mass_radius(delta, 0.9) == 0.0
    assert math.isnan(mass_radius(np.zeros((4, 4)), 0.5))
    for _ in range(5):
        m = rng.random((13, 11)) ** 4
        c = np.array([(np.indices(m.shape)[0] * m).sum(), (np.indices(m.shape)[1] * m).sum()]) / m.sum()
        for q in (0.5, 0.9):
            assert mass_radius(m, q) == pytest.approx(brute_radius(m, q, c))


# ------------------------------------------------------------------------------------------ attention distance
def closed_form_mean_distance(g: int, s: float) -> float:
    """Mean distance between the centres of two patches of a g x g grid (pitch s), over all ordered pairs
    (a patch with itself included): each offset (dx, dy) occurs (g - |dx|)(g - |dy|) times."""
    total = sum(
        (g - abs(dx)) * (g - abs(dy)) * s * math.hypot(dx, dy)
        for dx in range(-g + 1, g)
        for dy in range(-g + 1, g)
    )
    return total / g**4


def _zero_qk(model: nn.Module) -> None:
    for blk in model.net.blocks:
        d = blk.attn.qkv.in_features
        blk.attn.qkv.weight.data[: 2 * d] = 0
        blk.attn.qkv.bias.data[: 2 * d] = 0


def test_uniform_attention_gives_the_mean_distance_between_patch_centres():
    model = tiny_vit()
    _zero_qk(model)
    fused = [b.attn.fused_attn for b in model.net.blocks]
    res = mean_attention_distance(model, torch.randn(3, 3, 32, 32))
    assert res.blocks == ["blocks.0.attn", "blocks.1.attn"] and res.distance.shape == (2, 3)
    np.testing.assert_allclose(res.distance, closed_form_mean_distance(4, 8.0), rtol=1e-6)
    assert [b.attn.fused_attn for b in model.net.blocks] == fused  # switched back
    # without renormalisation the class token's share (1/17 of every row) counts as distance 0
    raw = mean_attention_distance(model, torch.randn(3, 3, 32, 32), renormalise=False)
    np.testing.assert_allclose(raw.distance, closed_form_mean_distance(4, 8.0) * 16 / 17, rtol=1e-6)
    assert res.arrays()["renormalised"] and not raw.arrays()["renormalised"]


def identity_attention_vit() -> nn.Module:
    """One head, q = k = 10·LN(x) on distinct tokens (patch embedding zero, random position embeddings): every
    token attends to itself only."""
    model = tiny_vit(num_heads=1)
    net = model.net
    net.patch_embed.proj.weight.data.zero_()
    net.patch_embed.proj.bias.data.zero_()
    torch.manual_seed(1)
    net.pos_embed.data = torch.randn_like(net.pos_embed)
    for blk in net.blocks:
        d = blk.attn.qkv.in_features
        blk.attn.qkv.weight.data[: 2 * d] = 10 * torch.eye(d).repeat(2, 1)
        blk.attn.qkv.bias.data[: 2 * d] = 0
    return model


def test_identity_attention_gives_zero():
    res = mean_attention_distance(identity_attention_vit(), torch.randn(2, 3, 32, 32))
    assert res.distance.shape == (2, 1)
    assert np.abs(res.distance).max() < 1e-9


def test_attention_distance_against_a_recomputation_from_q_and_k():
    model = tiny_vit()
    for blk in model.net.blocks:
        blk.attn.qkv.weight.data *= 6  # peaked, position-dependent attention
    x = torch.randn(4, 3, 32, 32)
    qkv_out = {}
    hooks = [
        blk.attn.qkv.register_forward_hook(lambda m, a, o, i=i: qkv_out.__setitem__(i, o.detach().double()))
        for i, blk in enumerate(model.net.blocks)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    res = mean_attention_distance(model, x, batch_size=3)
    centres = [((r + 0.5) * 8, (c + 0.5) * 8) for r in range(4) for c in range(4)]
    for b, qkv in qkv_out.items():
        heads = model.net.blocks[b].attn.num_heads
        q, k, _ = qkv.reshape(4, 17, 3, heads, -1).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)[:, :, 1:, 1:]
        a = a / a.sum(-1, keepdim=True)
        for h in range(heads):
            per_image = [
                np.mean(
                    [
                        sum(float(a[n, h, i, j]) * math.dist(centres[i], centres[j]) for j in range(16))
                        for i in range(16)
                    ]
                )
                for n in range(4)
            ]
            assert res.distance[b, h] == pytest.approx(np.mean(per_image), rel=1e-5)
    assert res.distance.std() > 0.5  # not uniform


def test_distance_from_weights_leaves_prefix_tokens_out():
    tg = TokenGrid(prefix=2, grid=(2, 3), patch=(4, 4))
    c = tg.centres()
    dist = torch.as_tensor(np.hypot(*(c[:, None] - c[None, :]).transpose(2, 0, 1)))
    a = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    a[..., :2] *= 50  # most of each row's mass on the prefix tokens
    a = a / a.sum(-1, keepdim=True)
    out = distance_from_weights(a, dist, 2, renormalise=True)
    for n, h in itertools.product(range(2), range(3)):
        w = a[n, h, 2:, 2:]
        ref = np.mean(
            [sum(float(w[i, j] / w[i].sum()) * float(dist[i, j]) for j in range(6)) for i in range(6)]
        )
        assert float(out[n, h]) == pytest.approx(ref)


def test_prefix_mass_of_a_constructed_attention_map():
    """A head with 0.999 of every patch query's attention on the class token: its mass is recorded (and the head
    listed), though its renormalised distance is the near-uniform one of the 0.001 left for the patches."""
    tg = TokenGrid(prefix=1, grid=(3, 3), patch=(8, 8))
    dist = torch.as_tensor(patch_distances(tg))
    t = 1 + tg.n_patches
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, t, t, dtype=torch.float64, generator=g)
    a = a / a.sum(-1, keepdim=True)
    a[:, 0, :, 0] = 0.999  # head 0: on the class token
    a[:, 0, :, 1:] = 0.001 / tg.n_patches
    a[:, 2] = 1.0 / t  # head 2: uniform over all tokens
    mass = prefix_mass_from_weights(a, 1)
    for n, h in itertools.product(range(2), range(3)):  # a loop of the test's own over the patch queries
        ref = np.mean([float(a[n, h, i, 0]) for i in range(1, t)])
        assert float(mass[n, h]) == pytest.approx(ref, abs=1e-12)
    assert torch.allclose(mass[:, 0], torch.full((2,), 0.999, dtype=torch.float64))
    assert torch.allclose(mass[:, 2], torch.full((2,), 1 / t, dtype=torch.float64))
    dist_h0 = distance_from_weights(a, dist, 1)[:, 0]  # uniform over patches once renormalised
    assert torch.allclose(dist_h0, dist.mean().expand(2))
    res = AttentionResult(
        blocks=["blocks.0.attn"],
        distance=distance_from_weights(a, dist, 1).mean(0, keepdim=True).numpy(),
        prefix_mass=mass.mean(0, keepdim=True).numpy(),
        n_images=2,
        image_size=(24, 24),
        grid=(3, 3),
        patch=(8, 8),
        prefix_tokens=1,
        renormalised=True,
    )
    assert res.summary()["heads_mostly_on_prefix"] == ["blocks.0.attn/0"]
    assert res.summary()["prefix_mass_max_head"] == [0.999]
    np.testing.assert_allclose(res.arrays()["prefix_mass"], mass.mean(0, keepdim=True).numpy())


def test_uniform_attention_puts_one_token_in_t_on_the_class_token():
    model = tiny_vit()
    _zero_qk(model)
    res = mean_attention_distance(model, torch.randn(3, 3, 32, 32))
    np.testing.assert_allclose(res.prefix_mass, 1 / 17, rtol=1e-6)  # 16 patches + the class token
    assert res.summary()["heads_mostly_on_prefix"] == []


def test_attention_does_not_apply_to_cnns_and_lambda_networks():
    from vvm.analyses.attention import not_applicable
    from vvm.models import create

    for name, word in (("r18", "CNN"), ("lambda_r26", "lambda layers")):
        note = mean_attention_distance(create(name, num_classes=10), torch.randn(1, 3, 32, 32))
        assert note.summary()["applies"] is False and word in note.note and name in note.note
        assert "\n" not in note.note
    assert not_applicable(tiny_vit()) is None


# ------------------------------------------------------------------------------------------ layouts
def test_token_layout_and_pooling_leave_the_class_token_out():
    model = tiny_vit()
    tg = token_grid(model.net)
    assert tg == TokenGrid(prefix=1, grid=(4, 4), patch=(8, 8))
    t = torch.randn(2, 17, 5)
    t[:, 0] = 1e6
    sp = spatial_map(t, tg)
    assert sp.shape == (2, 5, 4, 4) and torch.equal(sp[:, :, 1, 2], t[:, 1 + 4 + 2])
    assert torch.allclose(pooled(t, tg), t[:, 1:].mean(1))
    assert spatial_map(torch.randn(2, 9, 5), tg) is None  # not on this grid
    assert pooled(torch.randn(3, 7), tg).shape == (3, 7)
    assert token_grid(nn.Linear(2, 2)) is None


def test_first_images_follow_the_cka_plan():
    from vvm.data import DigitsDataModule

    dm = DigitsDataModule(limit=40, eval_batch_size=16)
    got = first_images(dm.cka_batches(), 20)
    ref = torch.cat([x for x, _ in dm.test_dataloader()])[:20]
    assert torch.equal(got, ref)
    assert torch.equal(first_images([(ref[:7], None), (ref[7:], None)], 10), ref[:10])
