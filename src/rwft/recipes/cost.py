"""The cost of a block of work: its wall time and the peak memory it reached (CPU resident set or CUDA)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def measure():
    """Yield a dict that gets ``train_time_s`` and ``peak_memory_mb`` of the block."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) on Linux
        except OSError:
            pass
    box: dict[str, float] = {}
    t0 = time.perf_counter()
    yield box
    box["train_time_s"] = time.perf_counter() - t0
    box["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
