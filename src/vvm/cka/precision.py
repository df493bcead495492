"""The arithmetic of the CKA hooks, sealed off from the caller's precision settings.

- :func:`sealed` turns autocast off for the block, so kernels and HSIC products run in the dtypes the mode
  promises even when the forward pass runs under ``torch.autocast`` (a bf16-mixed Lightning fit, an AMX CPU).
- :func:`matmul_precision` forces TF32 on (``fast``) or off (``exact``) for float32 CUDA products, keeps float32
  CPU products in float32 (oneDNN's ``torch.backends.mkldnn.matmul.fp32_precision``, which
  ``torch.set_float32_matmul_precision("medium")`` sets to ``bf16`` and ``"high"`` to ``tf32``), and leaves the
  flags exactly as it found them. PyTorch ≥ 2.9 keeps them in ``torch.backends.cuda.matmul.fp32_precision``; the
  legacy ``allow_tf32`` and ``get_float32_matmul_precision`` raise when read in some states the new API allows
  (e.g. after ``fp32_precision = "tf32"``), so the new attributes are the only ones read and written when they
  exist.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def sealed(device_type: str) -> Iterator[None]:
    """Autocast disabled for ``device_type`` (and for the CPU) inside the block."""
    with contextlib.ExitStack() as stack:
        for dev in dict.fromkeys((device_type, "cpu")):
            if dev in ("cuda", "cpu", "xpu", "mps"):
                stack.enter_context(torch.autocast(device_type=dev, enabled=False))
        yield


@contextlib.contextmanager
def matmul_precision(tf32: bool) -> Iterator[None]:
    """float32 CUDA matmuls with TF32 (``tf32=True``) or in full float32, float32 CPU (oneDNN) matmuls in full
    float32 in both modes (bf16 would break even the fast mode's 1e-4), restoring the caller's flags."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        cpu = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
        cpu = cpu if hasattr(cpu, "fp32_precision") else None
        prev, prev_cpu = matmul.fp32_precision, None if cpu is None else cpu.fp32_precision
        matmul.fp32_precision = "tf32" if tf32 else "ieee"
        if cpu is not None:
            cpu.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = prev
            if cpu is not None:
                cpu.fp32_precision = prev_cpu
        return
    # torch < 2.9: one global setting is the state (allow_tf32 reads it; "medium" also means bf16 on the CPU)
    prev_setting = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev_setting)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """``n`` intra-op threads for the block (``None``: leave torch's setting), restored after.

    A hook's Gram on a CPU is a few dozen small operations per layer; each forks and joins the OpenMP workers,
    and on a busy machine every join waits for a worker that other processes pushed off its core.
    """
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
