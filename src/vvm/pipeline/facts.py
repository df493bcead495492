"""What result.json records that a step computes: the similarity pass's facts (:func:`result_facts`: its layers,
counts, mean values and files) and a failure's (:func:`failure_facts`). :func:`vvm.pipeline.steps.run` merges the
steps' facts into result.json's dict, once."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from vvm.cka.result import mean_offdiagonal

log = logging.getLogger(__name__)


def is_interrupt(e: BaseException) -> bool:
    """Ctrl-C (KeyboardInterrupt; Lightning turns one during a fit into SystemExit(1)) or SIGTERM."""
    return isinstance(e, (KeyboardInterrupt, SystemExit)) or type(e).__name__ == "SIGTERMException"


def failure_facts(e: BaseException, resume_command: str) -> dict[str, Any]:
    """What result.json says about a job that failed or was interrupted (and how to resume it)."""
    if is_interrupt(e):
        log.error("interrupted: resume with `%s`", resume_command)
        return {"status": "interrupted", "error": "interrupted (Ctrl-C or SIGTERM)", "resume": resume_command}
    return {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def measure_facts(final: dict[str, Any]) -> dict[str, Any]:
    """result.json's ``measures`` (each measure's mean off-diagonal value) and the files of those besides CKA."""
    results = final.get("results") or {}
    paths = final.get("measure_paths") or {}
    return {
        "measures": {name: mean_offdiagonal(res.matrix.numpy()) for name, res in results.items()},
        "measure_files": {n: {k: str(v) for k, v in p.items()} for n, p in paths.items() if n != "cka"},
    }


def result_facts(final: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """What result.json records about the final CKA pass."""
    res = final["result"]
    if res is None:  # measures without cka: the layers and counts of the first measure
        res = next(iter(final["results"].values()))
        facts = result_facts({**final, "result": res}, metrics)
        return {**facts, "mean_cka": None, **measure_facts(final)}
    return {
        "n_samples": res.n_samples,
        "n_batches": res.n_batches,
        "n_layers": [len(res.layers_x), len(res.layers_y)],
        "layers_x": res.layers_x,
        "layers_y": res.layers_y,
        "undefined_layers": sorted(set(res.undefined_x + res.undefined_y)),
        "activation_dtype": res.activation_dtype,
        # similarity.tf32 and what the pass's float32 convolutions and matmuls ran in (ieee | tf32)
        "cka_float32": final.get("float32"),
        "mean_cka": mean_offdiagonal(res.matrix.numpy()),
        "test_accuracy": float(metrics[0]["test/acc"]) if metrics and "test/acc" in metrics[0] else None,
        "files": {k: str(v) for k, v in final.get("paths", {}).items()},
        **measure_facts(final),
    }


__all__ = ["failure_facts", "is_interrupt", "measure_facts", "result_facts"]
