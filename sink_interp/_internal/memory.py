"""Memory facts used to pick a method: how much memory is free on a device."""

from __future__ import annotations

import torch


def available_bytes(device: torch.device | str | None = None) -> int:
    """Free memory on ``device`` in bytes: ``MemAvailable`` for the CPU, ``mem_get_info`` for CUDA.

    Returns a large number when it cannot be told (the caller then decides by length alone).
    """
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return 1 << 62
