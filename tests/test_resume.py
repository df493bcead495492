"""Resume skips only what is complete (issue 19.11): what the sweep summary and the joint pass need, readable
result files and, for weights vvm trained, the checkpoint; anything less is computed again."""

from __future__ import annotations

import numpy as np

from vvm.io import save_result, write_json
from vvm.job.task import completed_result, missing_pieces


def finished_job(tmp_path, **result):
    """A job directory as a finished job leaves it: a readable cka.npz and an ok result.json listing it."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    npz = tmp_path / "cka.npz"
    save_result(npz, _result())
    base = {"status": "ok", "files": {"npz": str(npz)}, "config": {"seed": 0}}
    write_json(tmp_path / "result.json", {**base, **result})
    return tmp_path


def _result():
    from helpers import Replay, make_layer_batches

    from vvm.cka import StreamingCKA

    net = Replay(2)
    m = StreamingCKA(net, "blocks")
    with m.track():
        for feats in make_layer_batches([8, 8], [3, 4]):
            net(feats)
    return m.compute()


def test_a_complete_job_is_skipped(tmp_path):
    job = finished_job(tmp_path)
    assert missing_pieces(job, completed_result(job)) == []
    assert completed_result(job, {"seed": 0})["status"] == "ok"


def test_an_unreadable_cka_npz_is_computed_again(tmp_path, caplog):
    job = finished_job(tmp_path)
    (job / "cka.npz").write_bytes(b"PK\x03\x04 not a whole file")
    assert completed_result(job) is None
    assert "cka.npz is unreadable" in caplog.text


def test_a_missing_result_file_is_computed_again(tmp_path):
    job = finished_job(tmp_path)
    (job / "cka.npz").unlink()
    assert missing_pieces(job, {"files": {}}) == ["cka.npz is missing"]
    assert completed_result(job) is None


def test_a_deleted_checkpoint_of_trained_weights_is_computed_again(tmp_path, caplog):
    ckpt = tmp_path / "ckpt" / "r18-digits-e4-s0-abcd1234.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    for weights in (f"trained 4 epochs, saved to {ckpt}", f"cached checkpoint {ckpt}"):
        job = finished_job(tmp_path / weights.split()[0], weights=weights, checkpoint=str(ckpt))
        assert completed_result(job) is not None
    ckpt.unlink()
    for weights in (f"trained 4 epochs, saved to {ckpt}", f"cached checkpoint {ckpt}"):
        assert completed_result(tmp_path / weights.split()[0]) is None
    assert "the checkpoint its weights were trained into" in caplog.text
    # random weights (and a user's own checkpoint, which resume would not re-create) need no cache file
    job = finished_job(tmp_path / "random", weights="random (seed 0)")
    assert completed_result(job) is not None
    assert np.load(job / "cka.npz")["cka"].shape == (2, 2)
