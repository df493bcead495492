"""The arithmetic of the CKA hooks, sealed off from the caller's precision settings.

- :func:`sealed` turns autocast off for the block, so kernels and HSIC products run in the dtypes the mode
  promises even when the forward pass runs under ``torch.autocast`` (a bf16-mixed Lightning fit, an AMX CPU).
- :func:`matmul_precision` forces TF32 on (``fast``) or off (``exact``) for float32 CUDA products, keeps float32
  CPU products in float32 (oneDNN's ``torch.backends.mkldnn.matmul.fp32_precision``, which
  ``torch.set_float32_matmul_precision("medium")`` sets to ``bf16`` and ``"high"`` to ``tf32``), and leaves the
  flags exactly as it found them.
- :func:`pass_float32` does the same for the forward passes of a CKA pass (``similarity.tf32``): ``allow`` leaves
  PyTorch's settings (cuDNN convolutions in TF32 by default), ``off`` runs float32 convolutions and matrix
  products in IEEE float32; :func:`float32_precision` says what they run in, for the result files. PyTorch ≥ 2.9
  keeps them in ``torch.backends.cuda.matmul.fp32_precision``; the
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


# the CKA arithmetic's modes: exact (float32 Grams of centred features without TF32, float64 from there on) or
# fast (TF32 Grams on CUDA, float32 centring and products; sums still float64)
PRECISIONS = ("exact", "fast")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported: use one of {', '.join(PRECISIONS)}")


TF32_MODES = ("allow", "off")


def check_tf32(mode: str) -> None:
    if mode not in TF32_MODES:
        raise ValueError(
            f"tf32={mode!r} is not supported: use allow (PyTorch's settings: on a GPU cuDNN convolutions run in "
            "TF32) or off (IEEE float32 convolutions and matrix products for the CKA pass)"
        )


def _new_api() -> bool:
    return hasattr(torch.backends.cudnn, "conv")  # torch >= 2.9: fp32_precision per backend and operation


def float32_precision(device_type: str = "cuda") -> dict[str, str]:
    """What float32 convolutions and matrix products run in now on ``device_type``: ``ieee``, ``tf32`` (CUDA:
    cuDNN and cuBLAS) or ``bf16`` (CPU: oneDNN). An operation's own setting, else its backend's, else the
    global one; unset everywhere is IEEE."""
    b = torch.backends
    if device_type not in ("cuda", "cpu"):
        return {"conv": "unknown", "matmul": "unknown"}
    if not _new_api():
        if device_type == "cpu":
            return {"conv": "ieee", "matmul": "ieee"}
        return {
            k: "tf32" if flag else "ieee"
            for k, flag in (("conv", b.cudnn.allow_tf32), ("matmul", b.cuda.matmul.allow_tf32))
        }
    if device_type == "cuda":
        chains = {"conv": (b.cudnn.conv, b.cudnn, b), "matmul": (b.cuda.matmul, b.cudnn, b)}
    else:
        chains = {"conv": (b.mkldnn.conv, b.mkldnn, b), "matmul": (b.mkldnn.matmul, b.mkldnn, b)}
    out = {}
    for op, chain in chains.items():
        values = [v for v in (level.fp32_precision for level in chain) if v != "none"]
        out[op] = values[0] if values else "ieee"
    return out


@contextlib.contextmanager
def pass_float32(mode: str) -> Iterator[None]:
    """The float32 convolutions and matrix products inside the block: ``allow`` changes nothing; ``off`` runs
    them in IEEE float32 (cuDNN, cuBLAS and oneDNN), restoring every setting exactly as found afterwards."""
    check_tf32(mode)
    if mode == "allow":
        yield
        return
    b = torch.backends
    if not _new_api():  # torch < 2.9: the legacy flags are the state
        prev_flags = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
        b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = prev_flags
        return
    ops = (b.cudnn.conv, b.cuda.matmul, b.mkldnn.conv, b.mkldnn.matmul)
    prev = [op.fp32_precision for op in ops]
    try:
        for op in ops:
            op.fp32_precision = "ieee"
        yield
    finally:
        for op, value in zip(ops, prev):
            op.fp32_precision = value
