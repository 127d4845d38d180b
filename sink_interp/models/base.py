"""What every model loader shares: device and dtype resolution, the cache directory, the name a
model was loaded under, and quiet TransformerLens booting."""

from __future__ import annotations

import contextlib
import io
import os
import weakref
from pathlib import Path
from typing import Any, Iterator

import torch

# name a model was loaded under (the bridge's cfg.model_name is a path for cached models), and why a model has no tokenizer
LOADED_AS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def cache_dir() -> Path:
    """The directory where dense checkpoints and corpora are cached."""
    env = os.environ.get("SINK_INTERP_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sink_interp"


_DEVICE_EXAMPLES = "'cpu', 'cuda', 'cuda:1' or 'mps'"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The ``torch.device`` for ``device`` (None: CUDA when available, else CPU).

    Raises a one-line ``ValueError`` naming ``device`` when the string is not a
    device torch knows (``"tpu9"``) or the device is not available here.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device={device!r} is not a device torch knows; use e.g. {_DEVICE_EXAMPLES}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but CUDA is not available; fix: device='cpu'")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"device={str(device)!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}; fix: device='cuda'"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device={str(device)!r} was asked for but MPS is not available; fix: device='cpu'")
    elif dev.type not in ("cpu", "meta"):
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ValueError(f"device={str(device)!r}: no {dev.type} device is available here; use e.g. {_DEVICE_EXAMPLES}")
    return dev


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not understood; use one of {sorted(set(_DTYPES))}")
    return _DTYPES[key]


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence TransformerLens' prints and transformers' progress bars while loading."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def bridge_class() -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), else its type name."""
    lines = str(e).strip().splitlines()
    return (lines[0][:200] if lines else "") or type(e).__name__
