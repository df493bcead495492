"""Published weights looked for before the model is built (issue 19.8): check_published_weights decides from
timm's pretrained config, the local caches and a few seconds of network, and never builds the network."""

from __future__ import annotations

import time

import pytest

from vvm.models.published import check_published_weights

VIT = "vit_large_patch32_224.orig_in21k"


@pytest.fixture
def offline(monkeypatch):
    """No network, empty caches, and a timm that must not build anything."""
    import huggingface_hub
    import timm

    import vvm.io

    def no_build(*a, **kw):
        raise AssertionError("check_published_weights built a model")

    monkeypatch.setattr(timm, "create_model", no_build)
    monkeypatch.setattr(vvm.io, "host_reachable", lambda url, timeout=5.0: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **kw: None)
    return monkeypatch


def test_offline_without_the_weights_fails_at_once(offline):
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError) as e:
        check_published_weights(VIT)
    assert time.perf_counter() - t0 < 10
    text = str(e.value)
    assert text.startswith(f"could not fetch the published weights of {VIT}")  # as load_timm_pretrained's
    assert "huggingface.co/timm/vit_large_patch32_224.orig_in21k" in text and "init.weights_file=" in text


def test_a_cached_download_or_a_reachable_hub_is_enough(offline, tmp_path):
    import huggingface_hub

    import vvm.io

    cached = tmp_path / "model.safetensors"
    cached.write_bytes(b"x")
    asked = []

    def cache(repo, name, revision=None, **kw):
        asked.append((repo, name))
        return str(cached) if name == "model.safetensors" else None

    offline.setattr(huggingface_hub, "try_to_load_from_cache", cache)
    assert check_published_weights(VIT) == "timm/vit_large_patch32_224.orig_in21k"
    assert asked[0] == ("timm/vit_large_patch32_224.orig_in21k", "model.safetensors")
    offline.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **kw: None)
    offline.setattr(vvm.io, "host_reachable", lambda url, timeout=5.0: url == "https://huggingface.co")
    assert (
        check_published_weights("convnext_tiny") == "timm/convnext_tiny.in12k_ft_in1k"
    )  # timm's default tag


def test_a_weights_file_must_exist(offline, tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"init.weights_file='.*nope.safetensors' does not exist.*hf download"
    ):
        check_published_weights(VIT, tmp_path / "nope.safetensors")
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    assert check_published_weights(VIT, f) == str(f)  # read later, by load_timm_pretrained


def test_unknown_architectures_and_tags(offline):
    with pytest.raises(ValueError, match="timm has no model 'vit_nosuch'"):
        check_published_weights("vit_nosuch")
    with pytest.raises(ValueError, match=r"Invalid pretrained tag \(nosuch\)"):
        check_published_weights("vit_large_patch32_224.nosuch")


def test_the_job_looks_before_it_builds(offline, tmp_path):
    """``python -m vvm model=vit_l32 init=pretrained`` offline: the job fails with the loader's error before the
    ViT-L/32 is built (``create_model`` raises if called), in seconds; result.json records the error."""
    import json
    import time

    from compose import compose_settings

    from vvm.pipeline.steps import run

    job = compose_settings(["model=vit_l32", "init=pretrained", "dataset=digits", "logger=none"], tmp_path)
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match="init.weights_file=/path/to/it"):
        run(job)
    assert time.perf_counter() - t < 10
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["status"] == "failed" and "cannot be reached" in res["error"] and "build" not in res["seconds"]
