import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


# VVM_TEST_TIMES=times.jsonl: wall and CPU seconds per test (self + children)
if os.environ.get("VVM_TEST_TIMES"):
    import json
    import resource
    import time

    def _cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        wall, cpu = time.perf_counter(), _cpu()
        yield
        with open(os.environ["VVM_TEST_TIMES"], "a") as f:
            row = {"test": item.nodeid, "wall": time.perf_counter() - wall, "cpu": _cpu() - cpu}
            f.write(json.dumps(row) + "\n")
