"""What every bench script shares: the name of the device it ran on (benchmarks name the card or the CPU), a
device synchronisation around timed code, and how a list of timings is printed."""

from __future__ import annotations

import os
import platform
import statistics

import torch


def cpu_name() -> str:
    """The CPU's model (from /proc/cpuinfo where there is one) and the number of cores."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings of CUDA code end here)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(values: list[float]) -> str:
    """``median (min-max)``."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
